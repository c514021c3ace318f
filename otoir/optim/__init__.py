"""Structured-sparsity optimizers of otoir: H2SPG, DHSPG and HSPG.

Array code on numpy and torch: :class:`GroupLayout` describes groups over named tensors,
:class:`HybridCore` holds the schedule and group state, the numpy steppers serve the ONNX Runtime
training backend, and :class:`DHSPG` / :class:`H2SPG` are ``torch.optim.Optimizer`` subclasses
(torch is imported only when they are accessed).
"""

from __future__ import annotations

from typing import Any

from otoir.optim.core import Backend, BaseRule, HybridCore, Selector, SparsitySchedule
from otoir.optim.halfspace import group_stats, halfspace_project
from otoir.optim.layout import GroupLayout, SliceSpec, TensorRows
from otoir.optim.numpy_stepper import DHSPGStepper, H2SPGStepper, HSPGStepper, NumpyStepper
from otoir.optim.rules import LambdaRule, halfspace_decision, redundancy_score, select_top_k

__all__ = [
    "Backend",
    "BaseRule",
    "DHSPG",
    "DHSPGStepper",
    "GroupLayout",
    "H2SPG",
    "H2SPGStepper",
    "HSPGStepper",
    "HybridCore",
    "HybridSparseOptimizer",
    "LambdaRule",
    "NumpyStepper",
    "Selector",
    "SliceSpec",
    "SparsitySchedule",
    "TensorRows",
    "group_stats",
    "halfspace_decision",
    "halfspace_project",
    "redundancy_score",
    "select_top_k",
]

_TORCH_NAMES = ("DHSPG", "H2SPG", "HybridSparseOptimizer")


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from otoir.optim import torch_optim

        return getattr(torch_optim, name)
    raise AttributeError(f"module 'otoir.optim' has no attribute {name!r}")
