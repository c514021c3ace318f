"""``zero-groups``: zero chosen groups (tests and experiments), always through ``select_redundant``."""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, replace

import numpy as np

from otoir.analyses.gezig import GeZIGPartition
from otoir.analyses.groups import zero_groups, zero_mask
from otoir.analyses.segments import SegmentGraph
from otoir.analyses.validity import (
    LATENCY_BATCH_HELP,
    LATENCY_THREADS_HELP,
    ROUND_TO_DEFAULT,
    ROUND_TO_HELP,
    check_cost_target,
    check_latency_point,
    check_round_to,
    controlled_groups,
    reachable_count,
    reachable_counts,
    round_multiple,
    round_to_kept,
    select_redundant,
)
from otoir.analyses.vertices import VertexClasses
from otoir.infra.passes import Pass, option
from otoir.infra.registry import register_pass

__all__ = ["ZeroGroups"]


@register_pass
@dataclass(frozen=True)
class ZeroGroups(Pass):
    """Sets the trainable entries of chosen groups to zero.

    ``ids`` lists groups to zero: every one must be accepted by ``select_redundant`` (an error
    names the refused ones). ``random=F`` zeroes ``round(F * #prunable groups)`` groups chosen by
    ``select_redundant`` with random scores (``seed``), so the set is always valid. ``random``
    must be a number in [0, 1] and ``seed`` non-negative. With ``round-to=N`` (channel groups)
    the kept channel count of every tensor that loses channels is a multiple of N: ``random=F``
    then zeroes the nearest count that allows (a warning says so when it differs), and ``ids``
    that break it are refused. The default, ``round-to=auto`` (as ``train``'s: multiples of 16 for
    tensors of at least 32 channels, of 8 for 16 to 31), applies to ``random=`` and the targets, not to ``ids``,
    which name exactly what to zero. ``target-latency=F`` zeroes groups ranked by importance (random
    scores, ``seed``) per unit of measured ONNX Runtime latency saved until the measured latency
    of the constructed deployment-form network, timed interleaved with the full model, is at
    most ``F`` of the full model's (:func:`~otoir.analyses.latency.measured_cost_model`;
    ``results["predicted-latency"]`` is that measured ratio; FLOPs without ONNX Runtime, with
    a remark). ``target-flops=F`` zeroes groups ranked the same way per FLOP saved (an erased
    segment's collateral included) until the sub-network constructed from them has at most ``F``
    of the full model's FLOPs, counted exactly on the constructed network
    (:func:`~otoir.analyses.latency.flops_select`; ``results["predicted-flops"]``). The pass reports a change only when
    some entry was non-zero before (zeroing zeros again changes nothing, so ``repeat`` ends).
    """

    name = "zero-groups"
    values_only = True
    summary = "Zero chosen GeZIG/ZIG groups (ids=... or random=F seed=S), validity-checked"
    statistics = {"num-zeroed": "groups zeroed", "params-zeroed": "entries set to zero"}
    # Only initializer values change: the structural analyses stay valid, so a following
    # eliminate-dead-branches does not recompute shapes, segments and GeZIGs.
    preserves = (VertexClasses, SegmentGraph, GeZIGPartition)

    ids: tuple[str, ...] = option((), "group ids to zero")
    random: float = option(0.0, "fraction of the prunable groups to zero (random scores)")
    seed: int = option(0, "seed for random=")
    kind: str = option("gezig", "group kind: gezig (erasing) or zig (channel pruning)")
    dependent: bool = option(False, "also zero the groups' dependent entries")
    ignore: tuple[str, ...] = option((), "node or parameter name globs whose groups are kept (comma-separated)")
    max_layer_ratio: float = option(1.0, "most fraction of one tensor's channel groups zeroed, in (0, 1]")
    round_to: int | str = option(ROUND_TO_DEFAULT, ROUND_TO_HELP)
    target_latency: float = option(0.0, "with random scores, zero groups ranked by importance per latency saved until "
                                        "the constructed network's measured ONNX Runtime latency is this fraction of the full "
                                        "model's")
    target_flops: float = option(0.0, "with random scores, zero the fewest groups ranked by importance per FLOP saved "
                                      "that leave the constructed network at most this fraction of the full model's "
                                      "FLOPs")
    latency_threads: int = option(1, LATENCY_THREADS_HELP)
    latency_batch: int = option(1, LATENCY_BATCH_HELP)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.random) and 0.0 <= self.random <= 1.0):
            raise ValueError(f"option 'random' must be a number in [0, 1], got {self.random!r}")
        if self.seed < 0:
            raise ValueError(f"option 'seed' must not be negative, got {self.seed}")
        if not (math.isfinite(self.max_layer_ratio) and 0.0 < self.max_layer_ratio <= 1.0):
            raise ValueError(f"option 'max-layer-ratio' must be in (0, 1], got {self.max_layer_ratio!r}")
        object.__setattr__(self, "round_to", check_round_to(self.round_to, "option 'round-to'", runtime=True))
        check_cost_target(self.target_latency, self.target_flops, lambda o: f"option '{o}'")
        check_latency_point(self.latency_threads, self.latency_batch, lambda o: f"option '{o}'")

    def run(self, model, ctx) -> bool:
        groups = self._groups(ctx)
        if groups is None:
            return False
        # ids= names exactly the groups to zero: the default round-to (auto) does not second-guess
        # them; an explicit round-to=N refuses those that break it
        round_to = 1 if self.ids and self.round_to == ROUND_TO_DEFAULT else self.round_to
        groups = controlled_groups(groups, model, ignore=self.ignore, max_layer_ratio=self.max_layer_ratio,
                                   round_to=round_to)
        rounding = f"round-to={round_to}" if groups.round_to > 1 and self.kind == "zig" else ""
        by_id = {g.id: i for i, g in enumerate(groups)}
        if self.ids and self.random:
            ctx.error("give either ids= or random=, not both")
            return False
        target = check_cost_target(self.target_latency, self.target_flops)
        if target and (self.ids or self.random):
            ctx.error(f"{target[0]}= chooses the groups itself: give neither ids= nor random= with it")
            return False
        if target:
            chosen = self._cost_chosen(model, groups, ctx, *target)
            if chosen is None:
                return False
        elif self.ids:
            unknown = [i for i in self.ids if i not in by_id]
            if unknown:
                ctx.error(f"unknown {self.kind} group ids: {', '.join(unknown)}")
                return False
            # Select among all groups (the validity rules count against the whole set, e.g. "not
            # every channel group of a tensor"), with the requested ones first in the given order.
            wanted = {gid: len(self.ids) - k for k, gid in enumerate(self.ids)}
            scores = [float(wanted.get(g.id, float("-inf"))) for g in groups]
            picked = select_redundant(groups, scores, len(self.ids))
            chosen = [groups[i] for i in picked if groups[i].id in wanted]
            refused = [gid for gid in self.ids if gid not in {g.id for g in chosen}]
            ignored = [f"{gid} ({groups[by_id[gid]].reason})" for gid in refused 
                       if groups[by_id[gid]].reason.startswith("ignored by ignore=")]
            if ignored:
                ctx.error(f"kept: {', '.join(ignored)}")
                return False
            if refused:
                ctx.error(f"refused by the validity check{' or ' + rounding if rounding else ''}: {', '.join(refused)}")
                return False
        else:
            prunable = [g for g in groups if g.prunable]
            k = int(round(self.random * len(prunable)))
            rng = np.random.default_rng(self.seed)
            scores = rng.random(len(groups))
            if rounding:
                reach = reachable_counts(groups)
                if k < reach.size and not reach[k] and k <= int(reach.nonzero()[0].max()):
                    near = reachable_count(groups, k)
                    ctx.warning(f"zeroed {near} of the {k} groups asked: no valid set of exactly {k} keeps every "
                                f"pruned tensor's channel count {round_multiple(groups)} ({rounding})")
                    k = near
                for t, why in round_to_kept(groups).items():
                    ctx.remark(f"kept every group of '{t}': {why}")
            chosen = [groups[i] for i in select_redundant(groups, scores, k)]
            if len(chosen) < k:
                ctx.warning(f"zeroed {len(chosen)} of the {k} groups asked: no more can be zero together validly"
                            + (" within max-layer-ratio" if groups.layer_caps else "")
                            + (f" with {rounding}" if rounding else ""))
        kept = [g for g in groups if g.reason.startswith("ignored by ignore=")]
        if kept:
            ctx.remark(f"kept {len(kept)} group(s) ignored by ignore={','.join(self.ignore)}")
        # each tensor read once: whether anything changes (a chosen entry was nonzero), how many entries
        with_dependent = [replace(g, slices=(*g.slices, *g.dependent)) for g in chosen] if self.dependent else chosen
        changed = not bool(zero_mask(model, with_dependent).all())
        shapes = {v.name: tuple(v.const_value.shape) for v in model.graph.initializers.values()
                  if v.const_value is not None}
        entries = sum(s.numel(shapes[s.tensor]) for g in with_dependent for s in g.slices)
        zero_groups(model, chosen, include_dependent=self.dependent)
        ctx.stat("num-zeroed", len(chosen))
        ctx.stat("params-zeroed", entries)  # entries set to zero (slices, and dependent ones when asked)
        ctx.results["zeroed"] = [g.id for g in chosen]
        return changed

    def _cost_chosen(self, model, groups, ctx, option: str, target: float):
        """Groups chosen for ``target-latency`` or ``target-flops`` with random scores, by the
        selector the ``train`` pass uses (:func:`~otoir.analyses.latency.cost_selector`)."""
        from otoir.analyses.latency import cost_selector
        from otoir.errors import OtoirError

        try:
            sel = cost_selector(option, model, groups, target, analyses=ctx.analyses,
                                threads=self.latency_threads, batch=self.latency_batch)
        except (OtoirError, ValueError) as exc:
            ctx.error(f"{option}: {exc}")
            return None
        if sel.remark:
            ctx.remark(f"{option}: {sel.remark}")
        scores = np.random.default_rng(self.seed).random(len(sel.groups))
        scores[[not g.prunable for g in sel.groups]] = -np.inf
        picked = sel(scores, 0)
        ctx.results["predicted-" + option.split("-")[1]] = sel.predicted
        if sel.predicted > target:
            costs = sel.costs
            ctx.warning(f"{option}={target:g}: the {len(picked)} groups that can be zero together "
                        f"leave {sel.predicted:.3f} of the full model's "
                        f"{'measured latency' if costs.counter is not None and option == 'target-latency' else costs.source + ' cost'}")
        return [sel.groups[i] for i in picked]

    def _groups(self, ctx):
        if self.kind == "gezig":
            return ctx.analyses.get(GeZIGPartition).groups
        if self.kind == "zig":
            try:
                mod = importlib.import_module("otoir.analyses.zig")
                cls = mod.ChannelGroups
            except (ImportError, AttributeError) as exc:
                ctx.error(f"kind=zig needs otoir.analyses.zig.ChannelGroups, which is not available ({exc})")
                return None
            return list(ctx.analyses.get(cls).groups)
        ctx.error(f"unknown kind '{self.kind}' (expected gezig or zig)")
        return None
