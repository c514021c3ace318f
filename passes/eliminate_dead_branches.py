"""``eliminate-dead-branches``: construct the sub-network (OTOv3 section 3.3)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from otoir.analyses.gezig import GeZIGPartition
from otoir.analyses.groups import zero_subset
from otoir.analyses.vertices import VertexClasses
from otoir.infra.passes import Pass, option
from otoir.infra.registry import register_pass
from otoir.surgery.common import remove_dead_nodes
from otoir.surgery.erase import erase_segment_outputs, remove_unused_initializers

__all__ = ["EliminateDeadBranches"]


@register_pass
@dataclass(frozen=True)
class EliminateDeadBranches(Pass):
    """Removes the GeZIGs whose parameters are all zero, fixes the joints they fed (Add/Sum
    drop the input, a Concat along the channel axis also drops the matching downstream
    channels; what each joint allows is its rule's ``drop_input``; a residual ``x + 0`` becomes
    ``x``), removes whatever no longer reaches an output (a GeZIG's whole region: an attention or
    MLP sub-layer, nested GeZIGs with it) and drops unused initializers. Every joint is planned before the model
    changes, so a refusal (error) leaves it untouched. Refuses (error) an invalid set.
    """

    name = "eliminate-dead-branches"
    summary = "Erase all-zero GeZIG segments, fix joints and channel-Concat consumers, remove dead vertices"
    statistics = {
        "segments-erased": "zero GeZIG segments erased",
        "joints-removed": "joints left with one input and replaced by it",
        "nodes-removed": "nodes removed",
        "params-removed": "parameters removed",
        "initializers-removed": "initializers dropped",
    }

    skip_invalid: bool = option(False, "erase only a valid subset (score order = group order) instead of failing")

    def run(self, model, ctx) -> bool:
        p = ctx.analyses.get(GeZIGPartition)
        vc = ctx.analyses.get(VertexClasses)
        zero = zero_subset(model, p.groups)
        if not zero:
            ctx.stat("segments-erased", 0)
            return False
        report = p.checker.check(zero)
        if not report.valid:
            if not self.skip_invalid:
                ctx.error("refusing to erase an invalid set of zero groups "
                          f"({', '.join(g.id for g in zero)}): " + "; ".join(report.reasons))
                return False
            from otoir.analyses.validity import select_redundant

            keep = select_redundant(zero, [float(len(zero) - i) for i in range(len(zero))], len(zero), p.checker)
            zero = [zero[i] for i in keep]
        nodes_before = len(model.graph)
        segs = p.segments.segments
        # Cut where a zero segment meets a live one: a zero GeZIG nested in the region of another
        # goes with it; a sum left without inputs is zero and dropped by its own consumers.
        cut, gone = p.checker.erased(zero)
        dead = {n for i in gone for n in segs[i].nodes}
        values = [o for e in cut for o in segs[e].last.outputs if o.uses()]
        res = erase_segment_outputs(model, values, vc, p.shapes.value_dims, dead_nodes=dead)
        for msg, node in res.errors:
            ctx.error(msg, node)
        if res.errors:
            return True
        remove_dead_nodes(model)
        inits = dict(model.graph.initializers)
        gone = remove_unused_initializers(model)
        # Removed = sliced out of kept tensors + dropped tensors (no walk over every initializer).
        params_removed = res.params_sliced + sum(_numel(inits[name]) for name in gone)
        ctx.stat("segments-erased", len(zero))
        ctx.stat("joints-removed", res.joints_removed)
        ctx.stat("nodes-removed", nodes_before - len(model.graph))
        ctx.stat("params-removed", params_removed)
        ctx.stat("initializers-removed", len(gone))
        ctx.results["erased"] = [g.id for g in zero]
        return True


def _numel(v) -> int:
    cv = v.const_value
    if cv is None:
        return 0
    return math.prod(cv.shape.dims)
