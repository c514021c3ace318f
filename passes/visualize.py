"""``visualize``: write Graphviz DOT (and SVG when ``dot`` exists) of the trace graph, the segment
graph (GeZIGs) or the channel groups (ZIGs)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from otoir.analyses.gezig import GeZIGPartition
from otoir.analyses.groups import zero_subset
from otoir.analyses.zig import ChannelGroups
from otoir.infra.analysis import PRESERVE_ALL
from otoir.infra.passes import Pass, option
from otoir.infra.registry import register_pass

__all__ = ["Visualize"]


@register_pass
@dataclass(frozen=True)
class Visualize(Pass):
    """Writes ``DIR/<what>.dot`` (and ``.svg``): the trace graph, the segment graph with GeZIGs
    coloured and all-zero groups marked, the node graph with the channel groups (ZIGs) coloured
    (``what=zig``), or the current (sub-)network.

    Without Graphviz's ``dot`` on ``PATH`` only the ``.dot`` file is written, and a warning names it.
    """

    name = "visualize"
    summary = "Write Graphviz DOT/SVG of the trace graph, the segments (GeZIGs), the channel groups (ZIGs) or the sub-network"
    statistics = {"files": "files written"}
    preserves = PRESERVE_ALL

    what: str = option("segments", "trace | segments (GeZIGs) | zig (channel groups) | subnet")
    out: str = option(".", "output directory")

    def run(self, model, ctx) -> bool:
        from otoir import viz

        if self.what in ("trace", "subnet"):
            text = viz.trace_dot(model, self.what)
        elif self.what == "segments":
            p = ctx.analyses.get(GeZIGPartition)
            zero = [g.id for g in zero_subset(model, p.groups)]
            text = viz.segments_dot(model, zero, partition=p)
        elif self.what == "zig":
            text = viz.zig_dot(model, ctx.analyses.get(ChannelGroups).groups)
        else:
            ctx.error(f"unknown what='{self.what}' (trace, segments, zig or subnet)")
            return False
        # Start from the files of the earlier visualize passes of this pipeline run, and never
        # overwrite one of them (segments.1.dot, ...).
        earlier = list((ctx.earlier_results("visualize") or [[]])[-1])
        path = os.path.join(self.out, f"{self.what}.dot")
        k = 0
        while path in earlier:
            k += 1
            path = os.path.join(self.out, f"{self.what}.{k}.dot")
        files = viz.write_dot(text, path, warn=ctx.warning)
        ctx.stat("files", len(files))
        ctx.results["visualize"] = earlier + files
        return False
