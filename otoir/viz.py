"""Graphviz rendering of the trace graph, the segment graph (GeZIGs), the channel groups (ZIGs)
and the sub-network (OTOv3 App. E)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence

import onnx_ir as ir

from otoir.analyses.gezig import GeZIGPartition
from otoir.analyses.groups import Group
from otoir.analyses.segments import INPUT, OUTPUT, SegmentGraph
from otoir.infra.diagnostics import node_label, op_label

__all__ = ["trace_dot", "segments_dot", "zig_dot", "write_dot", "find_dot"]

_PALETTE = ("#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5", "#bc80bd")


def _q(s: str) -> str:
    """``s`` as a DOT quoted string: backslashes and quotes escaped, line breaks as ``\\n``."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def trace_dot(model: ir.Model, title: str = "trace") -> str:
    """DOT of the node graph (data and constant edges)."""
    lines = [f"digraph {_q(title)} {{", "  rankdir=TB; node [shape=box, fontsize=10];"]
    ids = {n: f"n{i}" for i, n in enumerate(model.graph)}
    for n, i in ids.items():
        label = _q(f"{node_label(n)}\n{op_label(n)}")
        lines.append(f"  {i} [label={label}];")
    lines.extend(_edges(model, ids))
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
            label += f"\n{g.id}"
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


def _cluster_of(group_id: str) -> str:
    """``zig:conv1.weight:5`` -> ``zig:conv1.weight`` (the channel groups of one tensor set)."""
    head, _, tail = group_id.rpartition(":")
    return head if tail.isdigit() and head else group_id


def zig_dot(model: ir.Model, groups: Sequence[Group], title: str = "zig") -> str:
    """DOT of the node graph with the channel groups (ZIGs) drawn.

    Groups whose ids differ only in the channel index (``zig:conv1.weight:0``, ``:1``...) form
    one cluster; every node with a trainable input in a cluster is filled with the cluster's
    colour and labelled ``cluster (N ch, P prunable)``, or, when no channel is prunable, drawn
    dashed with the reason.
    """
    clusters: dict[str, list[Group]] = {}
    for g in groups:
        clusters.setdefault(_cluster_of(g.id), []).append(g)
    colour = {c: _PALETTE[k % len(_PALETTE)] for k, c in enumerate(clusters)}
    of_tensor: dict[str, list[str]] = {}
    for c, gs in clusters.items():
        for t in dict.fromkeys(t for g in gs for t in g.tensors):
            of_tensor.setdefault(t, []).append(c)
    lines = [f"digraph {_q(title)} {{", "  rankdir=TB; node [shape=box, style=filled, fillcolor=white, fontsize=10];"]
    ids = {n: f"n{i}" for i, n in enumerate(model.graph)}
    for n, i in ids.items():
        mine = list(dict.fromkeys(c for v in n.inputs if v is not None and v.is_initializer()
                                  for c in of_tensor.get(v.name or "", ())))
        label = f"{node_label(n)}\n{op_label(n)}"
        attrs: list[str] = []
        for c in mine:
            gs = clusters[c]
            ok = sum(1 for g in gs if g.prunable)
            label += f"\n{c} ({len(gs)} ch, {ok} prunable)"
            if not ok:
                label += f": {gs[0].reason}"
        if mine:
            attrs.append(f"fillcolor={_q(colour[mine[0]])}")
            if not any(g.prunable for c in mine for g in clusters[c]):
                attrs.append('style="filled,dashed"')
        lines.append(f"  {i} [label={_q(label)}{''.join(', ' + a for a in attrs)}];")
    lines.extend(_edges(model, ids))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _edges(model: ir.Model, ids: dict) -> list[str]:
    """Data edges between nodes, graph inputs and graph outputs (initializers left out)."""
    lines = [f"  {_q('in:' + (v.name or ''))} [shape=ellipse];" for v in model.graph.inputs]
    for n, i in ids.items():
        for v in n.inputs:
            if v is None or v.is_initializer():
                continue
            p = v.producer()
            src = ids.get(p) if p is not None else _q("in:" + (v.name or ""))
            if src is not None:
                lines.append(f"  {src} -> {i};")
    for v in model.graph.outputs:
        lines.append(f"  {_q('out:' + (v.name or ''))} [shape=ellipse];")
        p = v.producer()
        if p is not None:
            lines.append(f"  {ids[p]} -> {_q('out:' + (v.name or ''))};")
    return lines


def find_dot() -> str | None:
    """The path of Graphviz's ``dot`` binary, or None when it is not installed."""
    return shutil.which("dot")


def write_dot(text: str, path: str, warn: Callable[[str], None] | None = None) -> list[str]:
    """Writes ``path`` (``.dot``) and, when the ``dot`` binary exists, the SVG next to it.

    Args:
        text: The DOT text.
        path: Where to write it; missing directories are created.
        warn: Called with one line when no SVG could be made (``dot`` missing or failing);
            the ``.dot`` file is written all the same.

    Returns:
        The files written: ``[path]`` or ``[path, svg]``.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    written = [path]
    dot = find_dot()
    svg = os.path.splitext(path)[0] + ".svg"
    if dot is None:
        if warn is not None:
            warn(f"Graphviz 'dot' not found on PATH: wrote '{path}' only, no SVG "
                 f"(install graphviz, or render it with: dot -Tsvg '{path}' -o '{svg}')")
        return written
    res = subprocess.run([dot, "-Tsvg", path, "-o", svg], capture_output=True, check=False)
    if res.returncode == 0:
        written.append(svg)
    elif warn is not None:
        why = " ".join(res.stderr.decode(errors="replace").split())[:200] or f"exit status {res.returncode}"
        warn(f"Graphviz 'dot' failed on '{path}' ({why}): wrote '{path}' only, no SVG")
    return written
