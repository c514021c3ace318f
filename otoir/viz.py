"""Graphviz rendering of the trace graph, the segment graph and the sub-network (OTOv3 App. E)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable

import onnx_ir as ir

from otoir.analyses.gezig import GeZIGPartition
from otoir.analyses.segments import INPUT, OUTPUT, SegmentGraph

__all__ = ["trace_dot", "segments_dot", "write_dot"]

_PALETTE = ("#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5", "#bc80bd")


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def trace_dot(model: ir.Model, title: str = "trace") -> str:
    """DOT of the node graph (data and constant edges)."""
    lines = [f"digraph {_q(title)} {{", "  rankdir=TB; node [shape=box, fontsize=10];"]
    ids = {n: f"n{i}" for i, n in enumerate(model.graph)}
    for n, i in ids.items():
        lines.append(f"  {i} [label={_q((n.name or '') + chr(10) + n.op_type)}];")
    for v in model.graph.inputs:
        lines.append(f"  {_q('in:' + v.name)} [shape=ellipse];")
    for n, i in ids.items():
        for v in n.inputs:
            if v is None or v.is_initializer():
                continue
            p = v.producer()
            src = ids.get(p) if p is not None else _q("in:" + (v.name or ""))
            if src is not None:
                lines.append(f"  {src} -> {i};")
    for v in model.graph.outputs:
        lines.append(f"  {_q('out:' + v.name)} [shape=ellipse];")
        p = v.producer()
        if p is not None:
            lines.append(f"  {ids[p]} -> {_q('out:' + v.name)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def segments_dot(model: ir.Model, zero: Iterable[str] = (), title: str = "segments",
                 partition: GeZIGPartition | None = None) -> str:
    """DOT of the segment dependency graph: GeZIGs coloured, zero groups dashed and marked.

    ``partition``: the model's GeZIG partition when already computed (else it is computed).
    """
    p = partition if partition is not None else GeZIGPartition(model, None)
    sg: SegmentGraph = p.segments
    zero = set(zero)
    lines = [f"digraph {_q(title)} {{", "  rankdir=TB; node [shape=box, style=filled, fontsize=10];",
             '  input [shape=ellipse, fillcolor=white]; output [shape=ellipse, fillcolor=white];']
    for s in sg.segments:
        g = p.group_of_segment(s.id)
        label = f"{s.id}: " + "-".join(n.op_type for n in s.nodes)
        attrs = ["fillcolor=lightgrey"]
        if g is not None:
            attrs = [f"fillcolor={_q(_PALETTE[s.id % len(_PALETTE)])}"]
            label += f"\\n{g.id}"
            if g.id in zero:
                attrs.append('style="filled,dashed"')
                label += " (zero)"
        if s.is_joint:
            attrs.append("shape=ellipse")
        lines.append(f"  s{s.id} [label={_q(label)}, {', '.join(attrs)}];")
    for s in sg.segments:
        for t in s.preds:
            if t == INPUT:
                lines.append(f"  input -> s{s.id};")
        for t in s.succs:
            lines.append(f"  s{s.id} -> {'output' if t == OUTPUT else f's{t}'};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_dot(text: str, path: str) -> list[str]:
    """Writes ``path`` (``.dot``) and, when the ``dot`` binary exists, the SVG next to it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    written = [path]
    dot = shutil.which("dot")
    if dot is not None:
        svg = os.path.splitext(path)[0] + ".svg"
        res = subprocess.run([dot, "-Tsvg", path, "-o", svg], capture_output=True, check=False)
        if res.returncode == 0:
            written.append(svg)
    return written
