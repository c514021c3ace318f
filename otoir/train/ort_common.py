"""Shared pieces of the ONNX Runtime training backend: availability, errors, model facts.

Used by :mod:`otoir.train.ort_backend` (the trainer) and :mod:`otoir.train.ort_eval`
(evaluation, BatchNorm recalibration).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from otoir import runtime
from otoir.errors import RuntimeUnavailableError

__all__ = [
    "LOSSES",
    "BackendUnavailable",
    "TrainingError",
    "require_ort_training",
    "batchnorm_stats",
    "trainable_names",
]

#: Loss names: cross-entropy over class indices, MSE against float targets (int labels are
#: one-hot encoded), or ``output``: the model's (first / chosen) output already is the loss.
LOSSES = ("cross-entropy", "mse", "output")

_INSTALL_HINT = (
    "the ONNX Runtime training backend needs onnxruntime-training: pip install 'otoir[train]' "
    "(and uninstall plain onnxruntime first)"
)


class BackendUnavailable(ImportError):
    """onnxruntime (with its training package) is not installed."""


class TrainingError(RuntimeError):
    """The model cannot be trained as asked (bad loss, shapes, artifacts generation failure...)."""


def require_ort_training() -> Any:
    """Imports and returns ``onnxruntime.training`` (with ``artifacts`` and ``api`` loaded).

    Raises:
        BackendUnavailable: onnxruntime or its training package is missing (message says how
            to install it).
    """
    try:
        import onnxruntime  # noqa: F401
        from onnxruntime import training  # noqa: F401
        from onnxruntime.training import api, artifacts  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(f"{_INSTALL_HINT} ({exc})") from None
    return training


def _require_ort() -> Any:
    try:
        return runtime.onnxruntime()
    except RuntimeUnavailableError as exc:
        raise BackendUnavailable(f"evaluation needs onnxruntime: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Model facts


def batchnorm_stats(model: ir.Model) -> list[tuple[ir.Node, str, str]]:
    """(node, running-mean initializer, running-var initializer) of every training-mode BatchNorm."""
    out = []
    inits = model.graph.initializers
    for node in model.graph:
        if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx"):
            continue
        attr = node.attributes.get("training_mode")
        if attr is None or attr.as_int() == 0 or len(node.inputs) < 5:
            continue
        mean, var = node.inputs[3], node.inputs[4]
        if mean is not None and var is not None and mean.name in inits and var.name in inits:
            out.append((node, mean.name, var.name))
    return out


def trainable_names(model: ir.Model) -> list[str]:
    """Names of the trainable initializers of ``model``, in initializer order.

    The one definition of "trainable" is :attr:`otoir.analyses.vertices.VertexClasses.trainable`
    (``model.metadata_props["otoir.parameters"]`` when present, else every floating-point
    initializer that reaches the data flow other than as a buffer such as BatchNorm running
    statistics).
    """
    from otoir.analyses.vertices import VertexClasses
    from otoir.infra.analysis import AnalysisManager

    trainable = AnalysisManager(model).get(VertexClasses).trainable
    return [n for n in model.graph.initializers if n in trainable]


@contextlib.contextmanager
def _captured_stderr() -> Iterator[Callable[[], str]]:
    """Redirects file descriptor 2 (C++ logging) into a temp file; yields a reader."""
    import sys

    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no real fd 2 (e.g. captured)
            yield lambda: ""
            return
        os.dup2(tmp.fileno(), 2)
        try:
            yield lambda: (tmp.seek(0), tmp.read().decode("utf-8", "replace"))[1]
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _as_list(inputs: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(inputs, np.ndarray):
        return [inputs]
    return list(inputs)


def _prep(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating) and x.dtype != np.float32:
        x = x.astype(np.float32)
    return np.asarray(x, order="C")  # (ascontiguousarray would make a 0-d input 1-d)
