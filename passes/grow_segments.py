"""``grow-segments``: OTOv3 Algorithm 2 lines 2-10, the segment dependency graph."""

from __future__ import annotations

from dataclasses import dataclass

from otoir.analyses.segments import SegmentGraph
from otoir.infra.analysis import PRESERVE_ALL
from otoir.infra.passes import Pass
from otoir.infra.registry import register_pass

__all__ = ["GrowSegments"]


@register_pass
@dataclass(frozen=True)
class GrowSegments(Pass):
    """Computes the segments and their dependency graph (annotates ``otoir.segment=ID``)."""

    name = "grow-segments"
    summary = "Grow segments (OTOv3 Alg. 2) and build the segment dependency graph (annotates with --annotate)"
    statistics = {
        "num-segments": "segments (|V_d|)",
        "num-edges": "edges between segments (|E_d|)",
        "num-joints": "joint segments",
    }
    preserves = PRESERVE_ALL

    def run(self, model, ctx) -> bool:
        sg = ctx.analyses.get(SegmentGraph)
        ctx.stat("num-segments", len(sg))
        ctx.stat("num-edges", sg.num_edges())
        ctx.stat("num-joints", sum(1 for s in sg.segments if s.is_joint))
        ctx.results["segments"] = sg.to_text()
        return False
