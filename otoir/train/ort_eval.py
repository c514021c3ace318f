"""Evaluation and BatchNorm recalibration of a model trained with ONNX Runtime.

Both run the model in an ONNX Runtime ``InferenceSession`` through :mod:`otoir.runtime`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from otoir import runtime
from otoir.runtime import EvalResult
from otoir.train.inference import to_inference
from otoir.train.ort_common import _as_list, _prep, _require_ort, batchnorm_stats

__all__ = ["evaluate", "recalibrate_bn"]



def evaluate(
    model: ir.Model,
    inputs: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray,
    batch: int = 256,
    *,
    loss: str = "cross-entropy",
    output: str | None = None,
    threads: int | None = None,
) -> EvalResult:
    """Evaluates the inference form of ``model`` with :func:`otoir.runtime.evaluate`.

    Args:
        model: The model (training-mode BatchNorm / Dropout are converted by
            :func:`~otoir.train.inference.to_inference`; the model itself is not modified).
        inputs: Input array (or one array per graph input), batch first.
        labels: int class labels (accuracy and cross-entropy) or float targets (MSE).
        batch: Evaluation batch size.
        loss: ``cross-entropy`` or ``mse`` (``output``: the mean of the chosen output).
        output: Graph output to evaluate (default: the first).
        threads: Intra-op threads.

    Returns:
        Mean loss, accuracy (class labels only) and sample count.
    """
    _require_ort()
    return runtime.evaluate(to_inference(model), inputs, labels, batch, loss=loss, output=output, threads=threads)


def recalibrate_bn(
    model: ir.Model,
    inputs: np.ndarray | Sequence[np.ndarray],
    batch: int = 256,
    *,
    threads: int | None = None,
) -> int:
    """Recomputes every training-mode BatchNorm's running statistics from data, in place.

    Equivalent to torch's recalibration with ``momentum=None``: the model runs in training
    mode (each BatchNorm normalises with its batch statistics) over ``inputs`` in order, and
    each running mean / var becomes the average over batches of the batch mean / unbiased batch
    variance of its input. Useful after surgery or when the statistics were never tracked.

    Args:
        model: Training-mode model; its running-statistics initializers are overwritten.
        inputs: Input array (or one array per graph input), batch first.
        batch: Batch size.
        threads: Intra-op threads.

    Returns:
        Number of BatchNorm nodes recalibrated.
    """
    _require_ort()
    bns = batchnorm_stats(model)
    if not bns:
        return 0
    m = model.clone()
    by_name = {v.name: v for n in m.graph for v in n.outputs}
    by_name.update({v.name: v for v in m.graph.inputs})
    wanted = [node.inputs[0].name for node, _, _ in bns]
    extra = []
    for name in dict.fromkeys(wanted):
        v = by_name[name]
        if v not in list(m.graph.outputs):
            m.graph.outputs.append(v)
        extra.append(name)
    # ORT's Conv+BatchNormalization fusion ignores training_mode and would normalise with the
    # running statistics: keep the graph as it is.
    sess = runtime.session(m, threads=threads, optimization="disable")
    in_names = [i.name for i in sess.get_inputs()]
    xs = [_prep(x) for x in _as_list(inputs)]
    n = xs[0].shape[0]
    sums: dict[str, list[np.ndarray]] = {k: [np.zeros(0), np.zeros(0)] for k in extra}
    count = 0
    for s in range(0, n, max(1, int(batch))):
        res = runtime.run(sess, {k: x[s : s + batch] for k, x in zip(in_names, xs, strict=False)}, extra)
        for name, h in zip(extra, res, strict=False):
            h64 = h.astype(np.float64)
            axes = (0, *range(2, h.ndim))
            mean = h64.mean(axis=axes)
            cnt = h64.size // h64.shape[1]
            var = h64.var(axis=axes) * (cnt / (cnt - 1) if cnt > 1 else 1.0)
            acc = sums[name]
            acc[0] = mean if acc[0].size == 0 else acc[0] + mean
            acc[1] = var if acc[1].size == 0 else acc[1] + var
        count += 1
    inits = model.graph.initializers
    for (_node, mean_name, var_name), x_name in zip(bns, wanted, strict=False):
        mean, var = sums[x_name]
        for name, val in ((mean_name, mean / count), (var_name, var / count)):
            old = inits[name].const_value
            inits[name].const_value = ir.tensor(val.astype(old.numpy().dtype).reshape(old.shape), name=name)
    return len(bns)
