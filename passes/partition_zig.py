"""``partition-zig``: compute the zero-invariant channel groups (OTOv2 ZIGs)."""

from __future__ import annotations

from dataclasses import dataclass

from otoir.analyses.zig import ChannelGroups
from otoir.infra.analysis import PRESERVE_ALL
from otoir.infra.passes import Pass, option
from otoir.infra.registry import register_pass

__all__ = ["PartitionZig"]


@register_pass
@dataclass(frozen=True)
class PartitionZig(Pass):
    """Computes :class:`~otoir.analyses.zig.ChannelGroups` and reports it.

    Groups are exact channel-dependency classes; with ``--annotate`` every node shows the
    channel axes of its output and how many (prunable) groups they hold. Groups that are
    prunable but not exactly zero-invariant (LayerNorm over the pruned axis) get a remark.
    The groups are left in ``ctx.results["partition-zig"]``.
    """

    name = "partition-zig"
    summary = "Partition channels into zero-invariant groups (exact channel tracking; annotates with --annotate)"
    statistics = {
        "num-groups": "channel groups with parameters",
        "num-prunable": "prunable groups",
        "num-inexact": "prunable groups that are not exactly zero-invariant",
        "num-params-prunable": "parameters in prunable groups",
    }
    preserves = PRESERVE_ALL

    explain: bool = option(False, "emit a remark for each distinct reason a group is not prunable")

    def run(self, model, ctx) -> bool:
        cg = ctx.analyses.get(ChannelGroups)
        groups = cg.groups
        prunable = [g for g in groups if g.prunable]
        inexact = [g for g in prunable if not g.meta.get("exact", True)]
        ctx.stat("num-groups", len(groups))
        ctx.stat("num-prunable", len(prunable))
        ctx.stat("num-inexact", len(inexact))
        ctx.stat("num-params-prunable", sum(g.num_params for g in prunable))
        if inexact:
            ctx.remark(f"{len(inexact)} prunable groups are not exactly zero-invariant: {inexact[0].reason}")
        if self.explain:
            reasons: dict[str, int] = {}
            for g in groups:
                if not g.prunable:
                    reasons[g.reason] = reasons.get(g.reason, 0) + 1
            for r, n in reasons.items():
                ctx.remark(f"{n} group(s) not prunable: {r}")
        ctx.results[self.name] = groups
        return False
