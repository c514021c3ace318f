"""Evaluation and BatchNorm recalibration of a model trained with ONNX Runtime.

Both run the model in an ONNX Runtime ``InferenceSession`` through :mod:`otoir.runtime`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from otoir import runtime
from otoir.runtime import EvalResult
from otoir.train.inference import to_inference
from otoir.train.ort_common import _as_list, _prep, _require_ort, batchnorm_stats

if TYPE_CHECKING:
    from otoir.data import Binding

__all__ = ["evaluate", "recalibrate_bn"]


def _fit_rows(xs: list[np.ndarray], y: np.ndarray | None, fixed: int) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Inputs (and labels) cut to whole batches of a fixed batch size; fewer rows are cycled to one."""
    n = xs[0].shape[0]
    keep = (n // fixed) * fixed if n >= fixed else fixed
    idx = np.arange(keep) % n
    return [x[idx] for x in xs], None if y is None else np.asarray(y)[idx]


def _input_batches(model: ir.Model, inputs: np.ndarray | Sequence[np.ndarray] | Binding,
                   batch: int) -> Iterator[list[np.ndarray]]:
    """Batches of the model's data inputs: from arrays (whole batches of a fixed batch size) or a binding."""
    from otoir.data import Binding
    from otoir.report import fixed_batch

    if isinstance(inputs, Binding):
        yield from inputs.input_batches(batch)
        return
    xs = [_prep(x) for x in _as_list(inputs)]
    fixed = fixed_batch(model)
    if fixed:
        xs, _ = _fit_rows(xs, None, fixed)
        batch = fixed
    n = xs[0].shape[0]
    for s in range(0, n, max(1, int(batch))):
        yield [x[s : s + batch] for x in xs]



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
        Mean loss, accuracy (class labels only) and sample count. A model whose batch dimension
        is fixed runs in batches of that size over the whole batches of the data (fewer rows
        than one batch are cycled to fill it).
    """
    from otoir.report import fixed_batch

    _require_ort()
    fixed = fixed_batch(model)
    if fixed:
        xs, labels = _fit_rows([_prep(x) for x in _as_list(inputs)], labels, fixed)
        inputs, batch = xs, fixed
    return runtime.evaluate(to_inference(model), inputs, labels, batch, loss=loss, output=output, threads=threads)


def recalibrate_bn(
    model: ir.Model,
    inputs: np.ndarray | Sequence[np.ndarray] | Binding,
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
        inputs: Input array (or one array per graph input), batch first, or a
            :class:`otoir.data.Binding` (one pass over its data, streamed; a stream keeps its
            own batches). A fixed batch dimension is run in whole batches of its size.
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
    sums: dict[str, list[np.ndarray]] = {k: [np.zeros(0), np.zeros(0)] for k in extra}
    count = 0
    for xb in _input_batches(model, inputs, batch):
        res = runtime.run(sess, dict(zip(in_names, xb, strict=False)), extra)
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
    if count == 0:
        return 0
    inits = model.graph.initializers
    for (_node, mean_name, var_name), x_name in zip(bns, wanted, strict=False):
        mean, var = sums[x_name]
        for name, val in ((mean_name, mean / count), (var_name, var / count)):
            old = inits[name].const_value
            inits[name].const_value = ir.tensor(val.astype(old.numpy().dtype).reshape(old.shape), name=name)
    return len(bns)
