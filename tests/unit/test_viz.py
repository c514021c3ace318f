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


def test_labels_are_escaped_for_dot():
    # A line break in a label is DOT's \n escape (one backslash), never a doubled backslash
    # (drawn as a literal "\n"); backslashes and quotes in names are escaped.
    assert viz._q('a\nb') == '"a\\nb"'
    assert viz._q('x\\y"z') == '"x\\\\y\\"z"'
    m = _model()
    for dot in (viz.trace_dot(m), viz.segments_dot(m)):
        assert "\\\\n" not in dot
        assert "\n\n" not in dot.strip()  # no raw line break inside a label either
    assert "@c1\\nConv" in viz.trace_dot(m)
    assert "\\ngezig:1" in viz.segments_dot(m)


def test_zig_dot_draws_channel_groups():
    from otoir.analyses.zig import ChannelGroups
    from otoir.infra.analysis import AnalysisManager

    m = _model()
    groups = AnalysisManager(m).get(ChannelGroups).groups
    dot = viz.zig_dot(m, groups)
    assert dot.startswith('digraph "zig" {')
    # c1's output channels are two prunable groups; c2/c3 feed the graph output (not prunable).
    c1 = next(line for line in dot.splitlines() if "@c1\\nConv" in line)
    assert "zig:w1 (2 ch, 2 prunable)" in c1 and "fillcolor=\"#" in c1
    out = [line for line in dot.splitlines() if "\\nConv" in line and "@c1\\n" not in line]
    assert out and all("0 prunable" in line and "dashed" in line for line in out)
    relu = next(line for line in dot.splitlines() if "@r1\\nRelu" in line)
    assert "prunable" not in relu  # no trainable input: not coloured
    assert dot.count(" -> ") == viz.trace_dot(m).count(" -> ")


def test_write_dot_warns_without_graphviz(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    said: list[str] = []
    path = str(tmp_path / "g.dot")
    assert viz.write_dot("digraph g { }\n", path, warn=said.append) == [path]
    assert len(said) == 1 and "Graphviz 'dot' not found" in said[0] and path in said[0]


def test_visualize_pass_warns_without_graphviz_and_draws_zig(tmp_path, monkeypatch):
    from otoir.infra.diagnostics import Severity

    monkeypatch.setattr(shutil, "which", lambda name: None)
    r = otoir.PassManager.from_text(f"visualize{{what=zig out={tmp_path}}}").run(_model())
    path = os.path.join(str(tmp_path), "zig.dot")
    assert r.results["visualize"] == [path]
    assert "(2 ch, 2 prunable)" in open(path).read()
    warnings = [str(d) for d in r.diagnostics if d.severity is Severity.WARNING]
    assert len(warnings) == 1 and "not found" in warnings[0] and path in warnings[0]
