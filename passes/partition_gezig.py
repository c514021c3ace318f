"""``partition-gezig``: OTOv3 Algorithm 2 lines 11-15, the GeZIG partition."""

from __future__ import annotations

from dataclasses import dataclass

from otoir.analyses.gezig import GeZIGPartition
from otoir.infra.analysis import PRESERVE_ALL
from otoir.infra.passes import Pass, option
from otoir.infra.registry import register_pass

__all__ = ["PartitionGeZIG"]


@register_pass
@dataclass(frozen=True)
class PartitionGeZIG(Pass):
    """Partitions trainable variables into GeZIGs and their complement (annotates ``otoir.gezig``)."""

    name = "partition-gezig"
    summary = "Form GeZIGs: trainable variables of segments whose consumers are all joints (--annotate shows them)"
    statistics = {
        "num-gezig": "GeZIGs",
        "num-rejected": "segments with trainable variables that are not GeZIGs",
        "gezig-params": "parameters in GeZIGs (with dependent entries)",
        "complement-tensors": "trainable tensors outside every GeZIG",
    }
    preserves = PRESERVE_ALL

    explain: bool = option(False, "emit a remark for every segment that is not a GeZIG, with the reason")

    def run(self, model, ctx) -> bool:
        p = ctx.analyses.get(GeZIGPartition)
        ctx.stat("num-gezig", len(p.groups))
        ctx.stat("num-rejected", sum(1 for v in p.verdicts.values() if not v.gezig))
        ctx.stat("gezig-params", sum(g.num_params for g in p.groups))
        ctx.stat("complement-tensors", len(p.complement))
        if self.explain:
            for sid, v in p.verdicts.items():
                if not v.gezig:
                    ctx.remark(f"segment {sid} is not a GeZIG: {v.reason}", p.segments.segments[sid].last)
        ctx.results["gezig"] = p.groups  # a GroupSet: carries the validity checker
        return False
