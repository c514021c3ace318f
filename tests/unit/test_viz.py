"""otoir.viz: DOT of the trace and segment graphs (GeZIGs coloured, zero groups marked), SVG
when Graphviz's ``dot`` is installed, and the visualize pass's results."""

from __future__ import annotations

import os
import re
import shutil

import onnx.parser
import onnx_ir as ir
import pytest

import otoir
from otoir import viz
from otoir.analyses.gezig import GeZIGPartition
from otoir.analyses.groups import zero_group

TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[1,2,4,4] x) => (float[1,2,4,4] y)
<float[2,2,1,1] w1 = {1,0,0,1}, float[2,2,1,1] w2 = {1,0,0,1}, float[2,2,1,1] w3 = {1,0,0,1}>
{
  c1 = Conv (x, w1)
  r1 = Relu (c1)
  c2 = Conv (r1, w2)
  c3 = Conv (r1, w3)
  y = Add (c2, c3)
}
"""


def _model() -> ir.Model:
    return ir.from_proto(onnx.parser.parse_model(TEXT))


def _node_lines(dot: str) -> dict[str, str]:
    """Segment node id (s0, s1...) -> its DOT line."""
    return {m.group(1): line for line in dot.splitlines() if (m := re.match(r"\s*(s\d+) \[", line))}


def test_segments_dot_names_segments_and_colours_gezigs():
    m = _model()
    p = GeZIGPartition(m, None)
    dot = viz.segments_dot(m)
    assert dot.startswith('digraph "segments" {')
    nodes = _node_lines(dot)
    assert set(nodes) == {f"s{s.id}" for s in p.segments.segments}
    for s in p.segments.segments:
        line = nodes[f"s{s.id}"]
        assert "-".join(n.op_type for n in s.nodes) in line  # the segment is named by its ops
        g = p.group_of_segment(s.id)
        if g is None:
            assert "fillcolor=lightgrey" in line
        else:
            assert g.id in line and "fillcolor=\"#" in line  # a GeZIG: palette colour, group id
    assert {g.id for g in p.groups} == {"gezig:1", "gezig:2"}
    # Edges of the dependency graph, graph input and output included.
    assert "input -> s0;" in dot and "s3 -> output;" in dot
    assert "s1 -> s3;" in dot and "s2 -> s3;" in dot
    assert "(zero)" not in dot and "dashed" not in dot


def test_segments_dot_marks_zero_groups():
    m = _model()
    p = GeZIGPartition(m, None)
    zero_group(m, p.groups[1])
    dot = viz.segments_dot(m, ["gezig:2"], partition=p)
    nodes = _node_lines(dot)
    assert "(zero)" in nodes["s2"] and "dashed" in nodes["s2"]
    assert "(zero)" not in nodes["s1"]
    # Same text whether the partition is given or recomputed.
    assert dot == viz.segments_dot(m, ["gezig:2"])


def test_trace_dot_has_every_node_and_data_edge():
    m = _model()
    dot = viz.trace_dot(m)
    assert dot.count("[label=") == len(m.graph)
    for n in m.graph:
        assert n.op_type in dot
    assert dot.count(" -> ") == 1 + 1 + 2 + 2 + 1  # x->c1, c1->r1, r1->c2/c3, c2/c3->y, y->out
    assert "w1" not in dot  # initializers are not drawn


def test_write_dot(tmp_path, monkeypatch):
    path = str(tmp_path / "sub" / "g.dot")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert viz.write_dot("digraph g { a -> b; }\n", path) == [path]
    assert open(path).read().startswith("digraph g")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")
def test_write_svg_when_dot_exists(tmp_path):
    path = str(tmp_path / "segments.dot")
    files = viz.write_dot(viz.segments_dot(_model()), path)
    assert files == [path, str(tmp_path / "segments.svg")]
    assert "<svg" in open(files[1]).read()


def test_visualize_pass_keeps_every_file(tmp_path):
    m = _model()
    out = str(tmp_path)
    r = otoir.PassManager.from_text(
        f"visualize{{what=segments out={out}}},zero-groups{{ids=gezig:2}},visualize{{what=segments out={out}}},"
        f"visualize{{what=trace out={out}}}").run(m)
    files = r.results["visualize"]
    dots = [f for f in files if f.endswith(".dot")]
    assert dots == [os.path.join(out, "segments.dot"), os.path.join(out, "segments.1.dot"),
                    os.path.join(out, "trace.dot")]
    assert all(os.path.exists(f) for f in files)
    assert "(zero)" not in open(dots[0]).read()
    assert "(zero)" in open(dots[1]).read()
