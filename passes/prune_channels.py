"""``prune-channels``: remove the channels of zero channel groups (ZIG sub-network construction)."""

from __future__ import annotations

from dataclasses import dataclass

from otoir.analyses.groups import zero_mask
from otoir.analyses.latency import misaligned_depthwise
from otoir.analyses.zig import ChannelGroups
from otoir.infra.passes import Pass, option
from otoir.infra.registry import register_pass
from otoir.surgery.channels import PruneError, fold_weight_transforms, prune_channel_groups

__all__ = ["PruneChannels"]


@register_pass
@dataclass(frozen=True)
class PruneChannels(Pass):
    """Removes every prunable channel group whose trainable entries are all zero.

    Slices producer rows, biases, normalisation entries, consumer columns and running
    statistics, and rewrites Conv ``group``, Reshape targets (attention head counts), Slice
    bounds and Split sizes. Groups that are not exactly zero-invariant (LayerNorm over the
    pruned axis) are kept unless ``allow-inexact`` is set. A mean over a pruned axis (RMSNorm's
    statistics) is compensated exactly: r = n/(n-k) goes into its epsilon and √r into its gain
    (:func:`~otoir.surgery.channels.compensate_reductions`). A tensor never loses every channel:
    one group of such a tensor is kept, with a warning naming it (``num-last-kept``).
    ``ctx.results["prune-channels"]`` is the :class:`~otoir.surgery.channels.PruneResult`;
    ``ctx.results["prune-channels-ids"]`` names the groups: ``removed`` (ids) and ``kept``
    (id -> reason), and gives ``channels``: ``{tensor: [(axis, before, after), ...]}`` for every
    initializer axis that lost entries (the kept counts, e.g. to check round-to multiples). A
    depthwise convolution whose channel count leaves the multiples of 8 is warned about (it
    leaves ONNX Runtime's blocked kernels: :func:`~otoir.analyses.latency.misaligned_depthwise`).
    """

    name = "prune-channels"
    summary = "Remove the channels of all-zero ZIGs (slice weights, rewrite group/reshape/slice/split)"
    statistics = {
        "num-groups-removed": "channel groups removed",
        "num-params-removed": "initializer entries removed",
        "num-tensors-sliced": "initializers sliced",
        "num-nodes-rewritten": "nodes whose attributes or shape inputs changed",
        "num-inexact-kept": "zero groups kept because removing them is not exact",
        "num-last-kept": "zero groups kept so that no tensor loses every channel",
    }

    allow_inexact: bool = option(False, "also remove zero groups that are not exactly zero-invariant")
    ids: tuple[str, ...] = option((), "remove exactly these groups (zero or not); default: all zero groups")

    def run(self, model, ctx) -> bool:
        folded = fold_weight_transforms(model)  # standardized weights: columns go from the transformed values
        if folded:
            ctx.analyses.invalidate()
            ctx.remark(f"folded {folded} transformed convolution weight(s) (weight standardization) into constants")
        cg = ctx.analyses.get(ChannelGroups)
        chosen = []
        kept_inexact = 0
        wanted = set(self.ids)
        zero = None if self.ids else zero_mask(model, cg.groups)
        for i, g in enumerate(cg.groups):
            if self.ids:
                if g.id not in wanted:
                    continue
                wanted.discard(g.id)
                if not g.prunable:
                    ctx.error(f"group {g.id} is not prunable: {g.reason}")
                    continue
            elif not g.prunable or not zero[i]:
                continue
            if not g.meta.get("exact", True) and not self.allow_inexact:
                kept_inexact += 1
                continue
            chosen.append(g)
        for gid in sorted(wanted):
            ctx.error(f"unknown group id {gid}")
        ctx.stat("num-inexact-kept", kept_inexact)
        if kept_inexact:
            ctx.remark(f"kept {kept_inexact} zero group(s) that are not exactly zero-invariant (allow-inexact=true removes them)")
        if not chosen:
            return bool(folded)
        before = {n: tuple(v.shape.dims) for n, v in model.graph.initializers.items() if v.shape is not None}
        try:
            res = prune_channel_groups(model, cg, [g.meta["label"] for g in chosen])
        except PruneError as e:
            ctx.error(f"prune-channels: {e}")
            return False
        by_label = {g.meta["label"]: g for g in chosen}
        kept = {by_label[lab].id: f"kept so that '{t}' keeps one channel" for lab, t in res.kept_last.items()
                if lab in by_label}
        ctx.stat("num-last-kept", len(kept))
        if kept:
            ids = sorted(kept)
            ctx.warning(f"kept {len(ids)} of the {len(chosen)} zero groups asked, so that no tensor loses every "
                        f"channel: " + "; ".join(f"{i} ({kept[i]})" for i in ids[:8])
                        + (f"; and {len(ids) - 8} more" if len(ids) > 8 else ""))
        ctx.stat("num-groups-removed", res.groups_removed)
        ctx.stat("num-params-removed", res.params_removed)
        ctx.stat("num-tensors-sliced", res.tensors_sliced)
        ctx.stat("num-nodes-rewritten", res.nodes_rewritten)
        ctx.results[self.name] = res
        channels = {}
        for n, v in model.graph.initializers.items():
            old = before.get(n)
            if v.shape is not None and old is not None and len(old) == len(v.shape.dims):
                lost = [(a, int(b), int(c)) for a, (b, c) in enumerate(zip(old, v.shape.dims, strict=True)) if b != c]
                if lost:
                    channels[n] = lost
        ctx.results["prune-channels-ids"] = {
            "removed": [by_label[lab].id for lab in res.removed if lab in by_label], "kept": kept,
            "channels": channels}
        off = misaligned_depthwise(model, channels)
        if off:
            ctx.warning(f"{len(off)} depthwise convolution(s) keep a channel count that is no longer a multiple of 8: "
                        + ", ".join(f"{n} {b}->{a}" for n, b, a in off[:4]) + (f" and {len(off) - 4} more" if len(off) > 4 else "")
                        + "; ONNX Runtime's CPU depthwise kernels work in 8- or 16-channel blocks, so this network "
                          "may run slower than the full one (round-to=auto, the default, or round-to=runtime keeps "
                          "the counts aligned)")
        return True
