"""Test oracles shared by the erasing and pruning test suites.

Models are evaluated with onnxruntime (CPU). Only the graph outputs are compared: the extra
outputs of TRAINING-mode ``BatchNormalization`` (running statistics) are node outputs, not graph
outputs, and are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

__all__ = ["run_ort", "assert_same_outputs", "random_feeds", "max_rel_diff", "output_names"]

_NP_OF_IR = {
    ir.DataType.FLOAT: np.float32,
    ir.DataType.DOUBLE: np.float64,
    ir.DataType.FLOAT16: np.float16,
    ir.DataType.INT64: np.int64,
    ir.DataType.INT32: np.int32,
    ir.DataType.BOOL: np.bool_,
}


def _session(model: ir.Model) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    data = ir.to_proto(model).SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def output_names(model: ir.Model) -> list[str]:
    """Names of the model's graph outputs, in order."""
    return [v.name for v in model.graph.outputs]


def run_ort(model: ir.Model, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Runs ``model`` with onnxruntime on ``feeds`` and returns its graph outputs in order.

    Args:
        model: The model (not modified).
        feeds: Graph input name -> array. Feeds for inputs the model no longer has are ignored.

    Returns:
        One array per graph output.
    """
    sess = _session(model)
    wanted = {i.name for i in sess.get_inputs()}
    return list(sess.run(None, {k: v for k, v in feeds.items() if k in wanted}))


def random_feeds(model: ir.Model, seed: int = 0, *, batch: int = 2) -> dict[str, np.ndarray]:
    """Random standard-normal feeds for the non-initializer graph inputs of ``model``.

    Symbolic or unknown dimensions are set to ``batch``.

    Args:
        model: The model.
        seed: RNG seed.
        batch: Size used for symbolic dimensions.
    """
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    inits = set(model.graph.initializers)
    for v in model.graph.inputs:
        if v.name in inits:
            continue
        dims = [d if isinstance(d, int) else batch for d in (v.shape.dims if v.shape is not None else ())]
        dtype = _NP_OF_IR.get(v.dtype, np.float32) if v.dtype is not None else np.float32
        if np.issubdtype(dtype, np.floating):
            feeds[v.name] = rng.standard_normal(dims).astype(dtype)
        elif dtype is np.bool_:
            feeds[v.name] = rng.integers(0, 2, dims).astype(np.bool_)
        else:
            feeds[v.name] = rng.integers(0, 4, dims).astype(dtype)
    return feeds


def max_rel_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Largest ``max|a-b| / max(1, max|a|)`` over pairs of outputs."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.shape != y.shape:
            return float("inf")
        if x.size == 0:
            continue
        scale = max(1.0, float(np.max(np.abs(x))))
        worst = max(worst, float(np.max(np.abs(x - y))) / scale)
    return worst


def assert_same_outputs(a: ir.Model, b: ir.Model, feeds: Mapping[str, np.ndarray] | None = None, *,
                        rtol_scale: float = 1e-5, seed: int = 0) -> None:
    """Asserts that two models compute the same graph outputs on ``feeds``.

    Outputs are matched by position; their shapes must be equal and
    ``max|a-b| <= rtol_scale * max(1, max|a|)`` for each.

    Args:
        a: Reference model.
        b: Model under test.
        feeds: Inputs; random ones from :func:`random_feeds` (of ``a``) when None.
        rtol_scale: Tolerance relative to the output scale.
        seed: Seed for random feeds.

    Raises:
        AssertionError: The numbers, shapes or values of the outputs differ.
    """
    if feeds is None:
        feeds = random_feeds(a, seed)
    ra = run_ort(a, feeds)
    rb = run_ort(b, feeds)
    if len(ra) != len(rb):
        raise AssertionError(f"output count differs: {len(ra)} vs {len(rb)}")
    for i, (x, y) in enumerate(zip(ra, rb)):
        if x.shape != y.shape:
            raise AssertionError(f"output {i}: shape {x.shape} vs {y.shape}")
        if x.size == 0:
            continue
        scale = max(1.0, float(np.max(np.abs(x.astype(np.float64)))))
        diff = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
        if diff > rtol_scale * scale:
            raise AssertionError(f"output {i}: max abs diff {diff:.3e} > {rtol_scale:.1e} x scale {scale:.3e}")
