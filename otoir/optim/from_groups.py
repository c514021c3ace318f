"""Bridge from the analyses' :class:`~otoir.analyses.groups.Group` objects to a :class:`GroupLayout`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from otoir.optim.layout import GroupLayout

if TYPE_CHECKING:
    from otoir.analyses.groups import Group
    from otoir.analyses.validity import GroupSet

__all__ = ["check_valid_target", "groups_for", "layout_from_groups", "make_numpy_stepper", "target_note",
           "trainable_shapes"]


def check_valid_target(groups: Sequence[Group], target: float | int) -> int:
    """Checks that the selection can reach ``target``: that many groups can be zero together validly
    (and within the per-tensor caps of ``max-layer-ratio`` and the counts ``round-to`` allows).

    GeZIGs must come as a :class:`~otoir.analyses.validity.GroupSet` (their partition's
    ``groups``, or :func:`groups_for`), whose ``checker`` judges validity.

    Returns K, the number of groups the optimizer zeroes: ``⌊target·G⌋``, or under ``round-to``
    when that exact count is not reachable, the nearest reachable count
    (:func:`~otoir.analyses.validity.reachable_count`; :func:`target_note` says so). Raises
    ValueError naming the largest reachable target when K is beyond the most that can be zero
    together (the hierarchy forbids erasing a segment together with all of its alternatives).
    """
    from otoir.analyses.validity import reachable_count, reachable_counts, round_label
    from otoir.optim.core import target_count

    k = target_count(target, len(groups))
    reach = reachable_counts(groups)
    most = int(reach.nonzero()[0].max())
    if k > most:
        capped = " and within max-layer-ratio" if getattr(groups, "layer_caps", None) else ""
        if getattr(groups, "round_to", 1) > 1 and getattr(groups, "checker", None) is None:
            capped += f" with round-to={round_label(groups)}"
        raise ValueError(f"target {target} asks for {k} of {len(groups)} groups, but at most {most} can be erased "
                         f"together while the network stays valid{capped} (target <= {most / len(groups):.3f})")
    return k if reach[k] else reachable_count(groups, k)


def target_note(groups: Sequence[Group], target: float | int) -> str:
    """Why the optimizers zero another count than ``⌊target·G⌋`` (empty when they do not).

    Raises:
        ValueError: An unreachable target (:func:`check_valid_target`).
    """
    from otoir.analyses.validity import round_label, round_multiple
    from otoir.optim.core import target_count

    k, got = target_count(target, len(groups)), check_valid_target(groups, target)
    if got == k:
        return ""
    return (f"round-to={round_label(groups)}: {got} of {len(groups)} groups are zeroed instead of the {k} asked "
            f"(target {target}): no valid set of exactly {k} keeps every pruned tensor's channel count "
            f"{round_multiple(groups)}; {got} is the nearest count that does")


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


def groups_for(model, kind: str, analyses=None, *, ignore: Sequence[str] = (),
               max_layer_ratio: float = 1.0, round_to: int | str = 1) -> GroupSet:
    """The prunable groups of ``model``: ``gezig`` (erasing) or ``zig`` (pruning).

    The user's controls are applied here (:func:`~otoir.analyses.validity.controlled_groups`):
    groups matching ``ignore`` are left out (kept), and the result's ``layer_caps`` and
    ``round_to`` carry ``max_layer_ratio`` and ``round_to`` to the selection.

    Returns a :class:`~otoir.analyses.validity.GroupSet` carrying the partition's validity
    checker (GeZIGs; None for channel groups): :func:`~otoir.optim.build_optimizer` and
    :func:`~otoir.analyses.validity.select_redundant` take the checker from it.

    Args:
        model: The model.
        kind: ``gezig`` or ``zig``.
        analyses: An :class:`~otoir.infra.analysis.AnalysisManager` to reuse (optional).
        ignore: Node or parameter name globs whose groups are kept.
        max_layer_ratio: Most fraction of one tensor's channel groups that may be zeroed.
        round_to: Kept channel count of every pruned tensor a multiple of this (or all).
    """
    from otoir.analyses.validity import GroupSet, controlled_groups
    from otoir.infra.analysis import AnalysisManager

    am = analyses or AnalysisManager(model)
    if kind == "gezig":
        from otoir.analyses.gezig import GeZIGPartition

        groups = am.get(GeZIGPartition).groups
    elif kind == "zig":
        from otoir.analyses.zig import ChannelGroups

        groups = GroupSet(am.get(ChannelGroups).groups)
    else:
        raise ValueError(f"group kind must be gezig or zig, not '{kind}'")
    groups = controlled_groups(groups, model, ignore=ignore, max_layer_ratio=max_layer_ratio, round_to=round_to)
    return groups.subset(g for g in groups if g.prunable)


def trainable_shapes(model, analyses=None) -> dict[str, tuple[int, ...]]:
    """Shapes of the trainable parameters of ``model`` (:attr:`VertexClasses.trainable`), by name.

    Args:
        model: The model.
        analyses: An :class:`~otoir.infra.analysis.AnalysisManager` to reuse (optional).
    """
    from otoir.analyses.vertices import VertexClasses
    from otoir.infra.analysis import AnalysisManager

    vc = (analyses or AnalysisManager(model)).get(VertexClasses)
    return {n: tuple(v.const_value.shape) for n, v in vc.trainable.items()}


def make_numpy_stepper(name: str, model, groups: Sequence[Group] | None, *, target_sparsity: float | int = 0.5,
                       shapes: Mapping[str, Sequence[int]] | None = None, **kwargs):
    """Deprecated spelling of :func:`otoir.optim.build_optimizer` on the numpy front end.

    Kept until ``otoir/api.py`` calls ``build_optimizer`` itself;
    ``make_numpy_stepper(name, model, groups, target_sparsity=t, **kw)`` is
    ``build_optimizer(name, trainable_shapes(model), groups=groups, target=t, **kw)``.
    """
    from otoir.optim.factory import build_optimizer

    return build_optimizer(name, shapes if shapes is not None else trainable_shapes(model), groups=groups or [],
                           target=target_sparsity, front="numpy", **kwargs)
