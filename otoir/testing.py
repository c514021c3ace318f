"""Test oracles shared by the test suites: a thin test-only layer over :mod:`otoir.runtime`.

Production code never imports this module (use :mod:`otoir.runtime`). Models are evaluated
with onnxruntime (CPU). Only the graph outputs are compared: the extra
outputs of TRAINING-mode ``BatchNormalization`` (running statistics) are node outputs, not graph
outputs, and are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from otoir import runtime
from otoir.runtime import max_rel_diff, output_scale, random_feeds

__all__ = ["cli", "one_line", "session", "run_ort", "assert_same_outputs", "random_feeds", "max_rel_diff", "output_names"]


def output_names(model: ir.Model) -> list[str]:
    """Names of the model's graph outputs, in order."""
    return [v.name for v in model.graph.outputs]


def session(model: ir.Model | Any) -> Any:
    """An ONNX Runtime session for oracles: one thread, no graph optimisation.

    ORT 1.19's graph optimisations mis-run training-mode BatchNormalization after a Conv (the
    output then depends on the running statistics), so oracle sessions run the graph as it is.
    """
    return runtime.session(model, threads=1, inter_threads=1, optimization="disable")


def run_ort(model: ir.Model, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Runs ``model`` with onnxruntime on ``feeds`` and returns its graph outputs in order.

    One thread, no graph optimisation (exact, reproducible numbers for oracles).

    Args:
        model: The model (not modified).
        feeds: Graph input name -> array. Feeds for inputs the model no longer has are ignored.

    Returns:
        One array per graph output.
    """
    return runtime.run(session(model), feeds)


def assert_same_outputs(a: ir.Model, b: ir.Model, feeds: Mapping[str, np.ndarray] | None = None, *,
                        rtol_scale: float = 1e-5, seed: int = 0) -> None:
    """Asserts that two models compute the same graph outputs on ``feeds``.

    Outputs are matched by position; their shapes must be equal and
    ``max|a-b| <= rtol_scale * max|a|`` for each (:func:`otoir.runtime.output_scale`).

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
        scale = output_scale(x)
        diff = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64))))
        if diff > rtol_scale * scale:
            raise AssertionError(f"output {i}: max abs diff {diff:.3e} > {rtol_scale:.1e} x scale {scale:.3e}")


def cli(*argv: Any, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Runs ``otoir-opt`` in-process: ``(exit status, stdout, stderr)``.

    Args:
        *argv: Command-line arguments (paths may be ``pathlib.Path``).
        stdin: Bytes to read as standard input (for ``-``), or None.
    """
    import io
    import sys

    from otoir.tools.otoir_opt import main

    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        code = main([str(a) for a in argv], stdout=out, stderr=err)
    finally:
        sys.stdin = saved
    return code, out.getvalue(), err.getvalue()


def one_line(err: str) -> str:
    """The single ``otoir-opt: error: ...`` line of ``err`` (asserts there is exactly one, no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("otoir-opt: error: ") and "Traceback" not in err, err
    return lines[0]
