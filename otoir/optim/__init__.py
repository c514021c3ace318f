"""Structured-sparsity optimizers of otoir: H2SPG, DHSPG and HSPG.

Array code on numpy and torch: :class:`GroupLayout` describes groups over named tensors,
:class:`HybridCore` holds the schedule and group state, the numpy steppers serve the ONNX Runtime
training backend, and :class:`DHSPG` / :class:`H2SPG` / :class:`HSPG` are
``torch.optim.Optimizer`` subclasses (torch is imported only when they are accessed).
:func:`build_optimizer` builds any of them from (parameters, layout or groups, :class:`BaseRule`,
:class:`SparsitySchedule`, selector); :mod:`otoir.optim.options` maps the flat keywords.
"""

from __future__ import annotations

from typing import Any

from otoir.optim.core import Backend, BaseRule, HybridCore, Selector, SparsitySchedule, target_count
from otoir.optim.factory import build_optimizer
from otoir.optim.halfspace import group_stats, halfspace_project
from otoir.optim.layout import GroupLayout, SliceSpec, TensorRows
from otoir.optim.numpy_stepper import DHSPGStepper, H2SPGStepper, HSPGStepper, NumpyStepper
from otoir.optim.options import ALGORITHMS, OPTION_NAMES, configure
from otoir.optim.rules import LambdaRule, halfspace_decision, redundancy_score, select_top_k

__all__ = [
    "ALGORITHMS",
    "Backend",
    "BaseRule",
    "DHSPG",
    "DHSPGStepper",
    "GroupLayout",
    "H2SPG",
    "H2SPGStepper",
    "HSPG",
    "HSPGStepper",
    "HybridCore",
    "HybridSparseOptimizer",
    "LambdaRule",
    "NumpyStepper",
    "OPTION_NAMES",
    "Selector",
    "SliceSpec",
    "SparsitySchedule",
    "TensorRows",
    "build_optimizer",
    "configure",
    "group_stats",
    "halfspace_decision",
    "halfspace_project",
    "redundancy_score",
    "select_top_k",
    "target_count",
]

_TORCH_NAMES = ("DHSPG", "H2SPG", "HSPG", "HybridSparseOptimizer")


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from otoir.optim import torch_optim

        return getattr(torch_optim, name)
    raise AttributeError(f"module 'otoir.optim' has no attribute {name!r}")
