"""The CPU reference of the fused half-space projection (numpy and torch).

The implementation lives in :mod:`otoir.optim.halfspace` so that the optimizers work from a
source checkout where ``otoir.kernels`` is not mapped yet; this module re-exports it as the
reference that the CUDA kernel is tested against.
"""

from __future__ import annotations

from otoir.optim.halfspace import (
    ZeroRowCache,
    apply_group_scale,
    group_stats,
    halfspace_project,
    zero_rows,
)
from otoir.optim.rules import LambdaRule, halfspace_decision

__all__ = [
    "LambdaRule",
    "ZeroRowCache",
    "apply_group_scale",
    "group_stats",
    "halfspace_decision",
    "halfspace_project",
    "zero_rows",
]
