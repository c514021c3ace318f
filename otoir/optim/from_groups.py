"""Bridge from the analyses' :class:`~otoir.analyses.groups.Group` objects to a :class:`GroupLayout`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from otoir.optim.layout import GroupLayout

if TYPE_CHECKING:
    from otoir.analyses.groups import Group

__all__ = ["layout_from_groups", "groups_for", "make_numpy_stepper", "check_valid_target"]


def check_valid_target(groups: Sequence[Group], target: float | int) -> int:
    """Checks that H2SPG can reach ``target``: that many groups can be zero together validly.

    Returns K. Raises ValueError naming the largest reachable target otherwise (the
    hierarchy forbids erasing a segment together with all of its alternatives).
    """
    import math

    from otoir.analyses.validity import select_redundant

    k = target if isinstance(target, int) else int(math.floor(target * len(groups) + 1e-9))
    most = len(select_redundant(list(groups), [0.0] * len(groups), len(groups)))
    if k > most:
        raise ValueError(f"target {target} asks for {k} of {len(groups)} groups, but at most {most} can be erased "
                         f"together while the network stays valid (target <= {most / len(groups):.3f})")
    return k


def layout_from_groups(groups: Sequence[Group], shapes: Mapping[str, Sequence[int]],
                       rename: Mapping[str, str] | None = None) -> GroupLayout:
    """Builds the optimizer layout of ``groups`` (their trainable ``slices`` only).

    Args:
        groups: Groups from ``partition-gezig`` or ``partition-zig`` (prunable ones only).
        shapes: Shapes of the tensors, by name (after ``rename``).
        rename: Optional map from initializer names to the optimizer's parameter names.

    Raises:
        ValueError: A group names a tensor missing from ``shapes`` or overlaps another group.
    """
    rename = rename or {}
    specs = [[(rename.get(s.tensor, s.tensor), s.axis, s.indices) for s in g.slices] for g in groups]
    return GroupLayout.from_slices(specs, shapes)


def groups_for(model, kind: str, analyses=None) -> list[Group]:
    """The prunable groups of ``model``: ``gezig`` (erasing) or ``zig`` (pruning).

    Args:
        model: The model.
        kind: ``gezig`` or ``zig``.
        analyses: An :class:`~otoir.infra.analysis.AnalysisManager` to reuse (optional).
    """
    from otoir.infra.analysis import AnalysisManager

    am = analyses or AnalysisManager(model)
    if kind == "gezig":
        from otoir.analyses.gezig import GeZIGPartition

        groups = am.get(GeZIGPartition).groups
    elif kind == "zig":
        from otoir.analyses.zig import ChannelGroups

        groups = am.get(ChannelGroups).groups
    else:
        raise ValueError(f"group kind must be gezig or zig, not '{kind}'")
    return [g for g in groups if g.prunable]


def make_numpy_stepper(name: str, model, groups: Sequence[Group] | None, *, lr: float = 0.1, momentum: float = 0.0,
                       weight_decay: float = 0.0, target_sparsity: float | int = 0.5, warmup_steps: int = 0,
                       projection_steps: int = 0, shapes: Mapping[str, Sequence[int]] | None = None, **kwargs):
    """Builds the numpy DHSPG / H2SPG stepper for the ONNX Runtime backend.

    Args:
        name: ``dhspg`` or ``h2spg`` (the latter selects through ``select_redundant``).
        model: The model (its trainable parameters give the shapes when ``shapes`` is None).
        groups: Prunable groups (from :func:`groups_for`).
        lr, momentum, weight_decay: The base SGD rule.
        target_sparsity: Fraction (or, as int, count) of groups to zero.
        warmup_steps, projection_steps: The schedule, in optimizer steps.
        shapes: Shapes of every trainable parameter (default: from the model).
        **kwargs: Further :func:`~otoir.optim.DHSPGStepper` options (epsilon, lam, ...).
    """
    from otoir.optim.numpy_stepper import DHSPGStepper, H2SPGStepper

    if not groups:
        raise ValueError(f"{name}: the model has no prunable groups")
    if shapes is None:
        from otoir.analyses.vertices import VertexClasses
        from otoir.infra.analysis import AnalysisManager

        vc = AnalysisManager(model).get(VertexClasses)
        shapes = {n: tuple(v.const_value.shape) for n, v in vc.trainable.items()}
    layout = layout_from_groups(groups, shapes)
    common = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, target=target_sparsity,
                  warmup_steps=warmup_steps, projection_steps=projection_steps, **kwargs)
    if name == "h2spg":
        from otoir.analyses.validity import select_redundant

        glist = list(groups)
        check_valid_target(glist, target_sparsity)
        stepper = H2SPGStepper(layout, shapes, selector=lambda s, k: select_redundant(glist, s, k), **common)
    elif name == "dhspg":
        stepper = DHSPGStepper(layout, shapes, **common)
    else:
        raise ValueError(f"unknown structured optimizer '{name}'")
    stepper.groups = list(groups)
    return stepper
