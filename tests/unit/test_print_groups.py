"""print-groups: the per-group table (aligned, truncated tensor lists, filters, collapsed rows)
and the group ids written as node metadata (kept by otoir.save, accepted by the load check)."""

from __future__ import annotations

import onnx.parser
import onnx_ir as ir
import pytest

import otoir
from otoir.analyses.groups import Group, TensorSlice
from otoir.errors import PipelineError
from otoir.infra.loadcheck import find_problem
from otoir.passes.print_groups import (
    GROUPS_KEY,
    NOT_PRUNABLE_KEY,
    _compact_ids,
    annotate_group_metadata,
    format_groups,
)
from otoir.zoo.random_dag import random_conv_dag

CHAIN = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[1,2,4,4] x) => (float[1,2,4,4] y)
<float[3,2,1,1] w1 = {1,0,0,1,1,1}, float[2,3,1,1] w2 = {1,0,1,0,1,1}>
{
  c1 = Conv (x, w1)
  r1 = Relu (c1)
  y = Conv (r1, w2)
}
"""


def _chain() -> ir.Model:
    return ir.from_proto(onnx.parser.parse_model(CHAIN))


def _group(i: int, tensors: tuple[str, ...], *, prunable: bool = True, reason: str = "",
           params: int = 10, flops: int = 100, head: str = "zig:t") -> Group:
    return Group(f"{head}:{i}", "zig", tuple(TensorSlice(t, 0, (i,)) for t in tensors), num_params=params,
                 flops=flops, prunable=prunable, reason=reason)


def test_table_is_aligned_and_truncates_long_tensor_lists():
    many = tuple(f"layer{k}.block.conv.weight" for k in range(9))
    groups = [_group(0, many, params=1_234_567, flops=5), _group(1, ("a",), prunable=False, reason="reaches output")]
    lines = format_groups(groups, "t").splitlines()
    assert lines[0] == "t: 2 zig (1 prunable)"
    head = lines[1]
    for col in ("kind", "tensors", "prunable"):  # every row's cell starts under its heading
        at = head.index(col)
        assert all(row[at - 2:at] == "  " and row[at] != " " for row in lines[2:])
    # params/FLOPs are right-aligned under their headings, with k/M/G suffixes
    assert all(row[:head.index("params") + len("params")].endswith(("1.23M", "10")) for row in lines[2:])
    row0 = lines[2]
    assert "layer0.block.conv.weight" in row0 and "layer8" not in row0
    shown = row0.split("zig", 2)[2].split("(+")[0].count("layer")
    assert f"(+{9 - shown} more)" in row0 and shown >= 1
    assert lines[3].endswith("no: reaches output")
    assert max(len(ln) for ln in lines) < 140


def test_one_long_tensor_name_is_clipped_with_a_count():
    lines = format_groups([_group(0, ("x" * 200, "y"))]).splitlines()
    assert "..." in lines[2] and "(+1 more)" in lines[2] and len(lines[2]) < 120


def test_empty_and_collapsed():
    assert format_groups([], "t") == "t: none\n"
    groups = [_group(i, ("w", "b")) for i in range(8)] + [_group(8, ("w", "b"), flops=7), _group(0, ("v",), head="zig:u")]
    lines = format_groups(groups, "t", collapse=True).splitlines()
    assert lines[0] == "t: 10 zig (10 prunable)"  # the heading counts groups, not rows
    assert [ln.split()[0] for ln in lines[2:]] == ["zig:t:0-7", "zig:t:8", "zig:u:0"]
    assert "(x8)" in lines[2]


def test_compact_ids():
    assert _compact_ids(["zig:w:0", "zig:w:1", "zig:w:2", "zig:w:5", "gezig:3", "zig:v:1"]) == [
        "zig:w:0-2", "zig:w:5", "gezig:3", "zig:v:1"]


def test_pass_leaves_the_table_in_results_and_prints_nothing(capsys):
    r = otoir.PassManager.from_text("print-groups{kind=zig only-prunable=true}").run(_chain())
    text = r.results["print-groups"]
    assert text.startswith("print-groups{kind=zig only-prunable=true}: 3 zig (3 prunable)\n")
    assert "zig:w2:0" not in text and text.count(" yes") == 3
    assert not r.changed
    assert capsys.readouterr() == ("", "")
    # Two runs in one pipeline: both tables are kept.
    r = otoir.PassManager.from_text("print-groups{kind=zig},print-groups{kind=gezig}").run(_chain())
    tables = r.results_of("print-groups")
    assert len(tables) == 2 and "4 zig (3 prunable)" in tables[0] and tables[1] == "print-groups{kind=gezig}: none\n"


def test_bad_kind_is_a_pipeline_error():
    with pytest.raises(PipelineError, match="unknown kind='both'"):
        otoir.PassManager.from_text("print-groups{kind=both}")


def test_metadata_survives_save_and_load_check(tmp_path):
    m = random_conv_dag(3, n_blocks=4)
    r = otoir.PassManager.from_text("print-groups{annotate-metadata=true}").run(m)
    assert r.changed
    annotated = {n.name: dict(n.metadata_props) for n in m.graph if GROUPS_KEY in n.metadata_props}
    assert annotated and r.records[0].statistics["nodes-annotated"] == len(annotated)
    # every id written is a group of the table (ranges expanded)
    text = r.results["print-groups"]
    for props in annotated.values():
        for item in props[GROUPS_KEY].split(","):
            head, _, tail = item.rpartition(":")
            first = f"{head}:{tail.split('-')[0]}" if "-" in tail else item
            assert first in text
    assert any(NOT_PRUNABLE_KEY in p for p in annotated.values())  # the classifier's groups reach the output
    assert find_problem(m) is None
    path = tmp_path / "m.onnx"
    otoir.save(m, path)
    back = otoir.load(path)
    assert {n.name: dict(n.metadata_props) for n in back.graph if GROUPS_KEY in n.metadata_props} == annotated


def test_metadata_is_replaced_not_accumulated():
    m = _chain()
    groups = [_group(0, ("w1",), head="zig:w1")]
    node = next(iter(m.graph))
    node.metadata_props[NOT_PRUNABLE_KEY] = "stale"
    assert annotate_group_metadata(m, groups) == 1
    assert dict(node.metadata_props) == {GROUPS_KEY: "zig:w1:0"}
    assert annotate_group_metadata(m, []) == 0
    assert dict(node.metadata_props) == {}


def test_table_of_a_hundred_groups_is_readable():
    m = random_conv_dag(5, n_blocks=6, channels=(8, 16))
    r = otoir.PassManager.from_text("print-groups").run(m)
    lines = r.results["print-groups"].splitlines()
    assert len(lines) - 2 >= 50  # many groups, one row each
    for col in ("kind", "tensors", "prunable"):
        at = lines[1].index(col)
        assert all(row[at - 2:at] == "  " and row[at] != " " for row in lines[2:])
    assert max(len(ln) for ln in lines) < 200
    short = otoir.PassManager.from_text("print-groups{collapse=true}").run(m).results["print-groups"].splitlines()
    assert len(short) < len(lines) / 2
    assert short[0].split(": ", 1)[1] == lines[0].split(": ", 1)[1]  # same counts


def test_printer_shows_only_otoir_metadata_and_only_when_asked():
    from otoir.textir import print_model

    m = _chain()
    node = next(iter(m.graph))
    node.metadata_props["pkg.torch.onnx.stack_trace"] = "File x.py, line 1 ..."
    node.metadata_props[GROUPS_KEY] = "zig:w1:0-2"
    text = print_model(m, metadata=True)
    assert "   # metadata: otoir.groups=zig:w1:0-2\n   c1 = Conv" in text
    assert "stack_trace" not in text
    assert "# metadata" not in print_model(m)
    # comments only: the text still parses back to the same graph
    assert [n.op_type for n in ir.from_proto(onnx.parser.parse_model(text)).graph] == ["Conv", "Relu", "Conv"]
