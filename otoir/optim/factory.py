"""The one optimizer factory: (parameters, layout or groups, base rule, schedule, selector) → optimizer.

Both front ends (numpy :class:`~otoir.optim.numpy_stepper.NumpyStepper`, torch
:class:`~otoir.optim.torch_optim.HybridSparseOptimizer`) and both training backends (ONNX Runtime
through :func:`otoir.train.optimizers.make_optimizer`, torch through
:func:`otoir.train.torch_backend.make_torch_optimizer`) build their structured-sparsity
optimizers here. The settings are :class:`~otoir.optim.core.BaseRule` and
:class:`~otoir.optim.core.SparsitySchedule` objects, or the flat keywords of
:mod:`otoir.optim.options` (which override the objects' fields).

A training configuration object can feed it directly: build ``base``/``schedule`` from it and
pass them, e.g. ``build_optimizer(cfg.optimizer, shapes, groups=groups, lr=cfg.lr,
base=BaseRule(cfg.variant, cfg.momentum, weight_decay=cfg.weight_decay), schedule=...)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from otoir.optim.core import BaseRule, Selector, SparsitySchedule
from otoir.optim.halfspace import is_torch
from otoir.optim.layout import GroupLayout
from otoir.optim.options import configure

if TYPE_CHECKING:
    from otoir.analyses.groups import Group

__all__ = ["build_optimizer"]


def build_optimizer(
    algorithm: str,
    params: Mapping[str, Any] | Iterable[tuple[str, Any]],
    *,
    layout: GroupLayout | None = None,
    groups: Sequence[Group] | None = None,
    lr: float = 0.1,
    base: BaseRule | None = None,
    schedule: SparsitySchedule | None = None,
    selector: Selector | None = None,
    front: str | None = None,
    cuda_kernel: bool | None = None,
    **options: Any,
) -> Any:
    """Builds a DHSPG / H2SPG / HSPG optimizer on the numpy or the torch front end.

    Args:
        algorithm: ``"dhspg"``, ``"h2spg"`` or ``"hspg"``.
        params: Numpy front end: name → shape (or array) of every trainable parameter. Torch
            front end: ``model.named_parameters()`` or a name → tensor mapping.
        layout: The groups as a :class:`GroupLayout` (give this or ``groups``).
        groups: The analyses' prunable groups; the layout is built from their trainable
            slices, and for ``h2spg`` (and ``dhspg`` over channel groups) the selector defaults
            to the validity-checked :func:`~otoir.analyses.validity.select_redundant` (with the
            groups' ``layer_caps`` and ``round_to``) and the target is checked to be reachable
            (under round-to, K becomes the nearest reachable count when ⌊target·G⌋ is not:
            :func:`~otoir.optim.from_groups.target_note`). GeZIGs come as
            a :class:`~otoir.analyses.validity.GroupSet` (the partition's ``groups``,
            :func:`~otoir.optim.from_groups.groups_for`): its ``checker`` is the validity check.
        lr: Learning rate.
        base: Base rule.
        schedule: Sparsity schedule.
        selector: Redundant-set selector.
        front: ``"numpy"`` or ``"torch"``; default: torch when ``params`` holds torch tensors.
        cuda_kernel: Torch front end: use the CUDA kernel (``None`` auto).
        **options: Flat settings (:data:`otoir.optim.options.OPTION_NAMES`).

    Returns:
        A :class:`~otoir.optim.numpy_stepper.NumpyStepper` or a torch
        :class:`~otoir.optim.torch_optim.DHSPG` / ``H2SPG`` / ``HSPG``. Built from ``groups``,
        it has a ``groups`` attribute (the groups, in layout order).

    Raises:
        ValueError: Unknown algorithm or front end, no or unknown groups, an unreachable
            H2SPG target, settings out of range.
        TypeError: Unknown option, or a missing/unexpected selector.
    """
    if (layout is None) == (groups is None):
        raise TypeError("build_optimizer: give exactly one of layout= and groups=")
    key = str(algorithm).lower()
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    if front is None:
        front = "torch" if any(is_torch(v) for _, v in items) else "numpy"
    if front not in ("numpy", "torch"):
        raise ValueError(f"front end must be numpy or torch, not '{front}'")
    shapes = {n: tuple(int(s) for s in (v.shape if hasattr(v, "shape") else v)) for n, v in items}
    if groups is not None:
        from otoir.analyses.validity import GroupSet

        groups = groups.subset(groups) if isinstance(groups, GroupSet) else GroupSet(groups, getattr(groups, "checker", None))
        if not groups:
            raise ValueError(f"{algorithm}: the model has no prunable groups")
        missing = sorted({s.tensor for g in groups for s in g.slices} - set(shapes))
        if missing:
            raise ValueError(f"groups name tensors that are not trainable parameters: {missing[:5]}")
        from otoir.optim.from_groups import check_valid_target, layout_from_groups

        layout = layout_from_groups(groups, shapes)
        # Channel groups under DHSPG are selected by the same checked walk (never every channel of
        # a tensor, per-tensor caps of max-layer-ratio), so the K zeroed groups are all removable.
        checked = key == "h2spg" or (key == "dhspg" and selector is None
                                     and not any("segment" in g.meta for g in groups))
        if selector is None and checked:
            selector = groups.selector()

    cfg = configure(key, base, schedule, selector, options)
    if groups is not None and checked:
        k = check_valid_target(groups, cfg.schedule.target)
        if k != cfg.schedule.target_count(len(groups)):  # round-to: the nearest reachable count
            cfg = cfg._replace(schedule=dataclasses.replace(cfg.schedule, target=k))
    structured = dict(base=cfg.base, schedule=cfg.schedule, selector=cfg.selector)
    if front == "torch":
        from otoir.optim.torch_optim import OPTIMIZERS

        opt = OPTIMIZERS[key](items, layout, lr, cuda_kernel=cuda_kernel, **structured)
    else:
        from otoir.optim.numpy_stepper import NumpyStepper

        opt = NumpyStepper(layout, shapes, lr=lr, algorithm=key, **structured)
    if groups is not None:
        opt.groups = list(groups)
    return opt
