"""The rule table's typed semantics and their single consumers: FLOPs (one unit, one formula
per op, used by ``otoir.stats``, the GeZIG partition and the channel groups), zero semantics
(``zero_out``), the one shape analysis and the explicit validity checker of GeZIGs."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import numpy as np
import onnx_ir as ir
import pytest

from otoir.analyses.gezig import GeZIGPartition
from otoir.analyses.shapes import StaticShapes
from otoir.analyses.validity import GroupSet, is_valid, select_redundant
from otoir.analyses.zig import ChannelGroups
from otoir.infra.analysis import AnalysisManager
from otoir.ops.rules import lookup_rule
from otoir.stats import stats

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _flops_model() -> ir.Model:
    """x[N,3,8,8] -> Conv c1, Conv c2 (4 channels each) -> Add -> Flatten [N,256]
    -> Gemm g1 (transB, 8x256) and MatMul m1 (256x8) -> Add -> y[N,8]."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in
             (("w1", (4, 3, 3, 3)), ("w2", (4, 3, 3, 3)), ("gw", (8, 256)), ("mw", (256, 8)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w2"], ["c2"], name="c2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c1", "c2"], ["s"], name="add"),
             helper.make_node("Flatten", ["s"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "gw"], ["g"], name="g1", transB=1),
             helper.make_node("MatMul", ["f", "mw"], ["m"], name="m1"),
             helper.make_node("Add", ["g", "m"], ["y"], name="out")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8])], inits)
    return ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))


def test_flops_agree_between_stats_gezig_and_zig():
    conv = 2 * 4 * 8 * 8 * (3 * 3 * 3)  # 2 * Cout * Hout * Wout * Cin * k
    fc = 2 * 8 * 256  # 2 * N * K
    m = _flops_model()
    am = AnalysisManager(m)
    st = stats(m, am)
    assert st.per_node["c1"][1] == st.per_node["c2"][1] == conv
    assert st.per_node["g1"][1] == st.per_node["m1"][1] == fc
    # GeZIGs: one per branch; its FLOPs are its nodes' (the same unit as stats)
    p = am.get(GeZIGPartition)
    by_param = {g.meta["params"][0]: g.flops for g in p.groups}
    assert by_param == {"w1": conv, "w2": conv, "gw": fc, "mw": fc}
    # Channel groups: channel c of the Add ties row c of w1 and w2 and the 64 columns of gw/mw
    # that read it: a quarter of each stem's FLOPs
    zig = am.get(ChannelGroups)
    conv_groups = [g for g in zig.groups if any(s.tensor == "w1" for s in g.slices)]
    assert len(conv_groups) == 4
    assert all(g.flops == (2 * conv + 2 * fc) // 4 for g in conv_groups)
    assert sum(g.flops for g in conv_groups) == sum(st.per_node[n][1] for n in ("c1", "c2", "g1", "m1"))
    # one cached shape analysis served them all
    assert p.shapes is am.cached(StaticShapes)


def _node(op: str, inputs, **attrs) -> ir.Node:
    return ir.node(op, inputs, attributes=attrs)


def _const(value, name: str) -> ir.Value:
    v = ir.Value(name=name, const_value=ir.tensor(np.asarray(value, np.float32)))
    return v


def test_zero_semantics_come_from_the_rule():
    x = ir.Value(name="x")
    data = {x}

    def is_data(v):
        return v in data

    def never(v):
        return False

    clip = lookup_rule("Clip")
    assert clip.zero_output(_node("Clip", [x, _const(-1.0, "lo"), _const(6.0, "hi")]), is_data, never) == ""
    assert "excludes 0" in clip.zero_output(_node("Clip", [x, _const(0.5, "lo"), None]), is_data, never)
    assert "excludes 0" in clip.zero_output(_node("Clip", [x, ir.Value(name="dyn")]), is_data, never)
    pad = lookup_rule("Pad")
    pads = _const([0, 0, 1, 1, 0, 0, 1, 1], "pads")
    assert pad.zero_output(_node("Pad", [x, pads]), is_data, never) == ""
    assert pad.zero_output(_node("Pad", [x, pads, _const(0.0, "v0")]), is_data, never) == ""
    assert "non-zero" in pad.zero_output(_node("Pad", [x, pads, _const(2.0, "v2")]), is_data, never)
    assert pad.zero_output(_node("Pad", [x, pads, _const(2.0, "v2")], mode="reflect"), is_data, never) == ""
    div = lookup_rule("Div")
    c = _const(2.0, "c")
    assert div.zero_output(_node("Div", [x, c]), is_data, never) == ""
    assert div.zero_output(_node("Div", [c, x]), is_data, never) == "Div by data"
    add = lookup_rule("Add")
    assert "not a zeroed parameter" in add.zero_output(_node("Add", [x, c]), is_data, never)
    assert add.zero_output(_node("Add", [x, c]), is_data, lambda v: v is c) == ""
    # rules without node-dependent semantics answer from maps_zero
    assert lookup_rule("Relu").zero_output(_node("Relu", [x]), is_data, never) == ""
    assert "does not map zero" in lookup_rule("Sigmoid").zero_output(_node("Sigmoid", [x]), is_data, never)
    # the unread extra flag is gone: the behaviour is the typed field
    assert "zero_if_range_contains_0" not in clip.extra


def test_gezig_checker_is_explicit_not_hidden_in_group_meta():
    import otoir
    import otoir.zoo as zoo
    from otoir.optim.from_groups import groups_for

    m, x = zoo.build("demosupnet", width=0.125)
    m = otoir.load(m, x)
    am = AnalysisManager(m)
    p = am.get(GeZIGPartition)
    assert isinstance(p.groups, GroupSet) and p.groups.checker is p.checker
    assert all("checker" not in g.meta for g in p.groups)
    gs = groups_for(m, "gezig", am)
    assert isinstance(gs, GroupSet) and gs.checker is p.checker
    plain = list(p.groups)
    with pytest.raises(ValueError, match="validity checker"):
        select_redundant(plain, [1.0] * len(plain), 2)
    with pytest.raises(ValueError, match="validity checker"):
        is_valid(plain)
    scores = list(np.random.default_rng(0).uniform(size=len(plain)))
    k = len(plain) // 2
    picked = select_redundant(plain, scores, k, p.checker)
    assert picked == select_redundant(p.groups, scores, k) == p.groups.selector()(scores, k)
    assert p.checker.check([plain[i] for i in picked]).valid
    # channel groups need no checker
    zig = groups_for(m, "zig", am)
    assert isinstance(zig, GroupSet) and zig.checker is None
    assert len(select_redundant(zig, [1.0] * len(zig), 3)) == 3


def test_one_remove_dead_nodes_and_no_rules_table_cycle():
    import otoir.passes.eliminate_dead_branches as edb
    import otoir.surgery.channels as channels
    import otoir.surgery.common as common

    assert channels.remove_dead_nodes is common.remove_dead_nodes is edb.remove_dead_nodes
    defs = [p for p in (ROOT / "otoir").rglob("*.py") if "def remove_dead_nodes(" in p.read_text()]
    assert [p.relative_to(ROOT).as_posix() for p in defs] == ["otoir/surgery/common.py"]
    assert "otoir.ops.table" not in (ROOT / "otoir" / "ops" / "rules.py").read_text().replace(
        ":mod:`otoir.ops.table`", "")
    # importing only the rules module still sees the built-in rules (the package registers them)
    code = "from otoir.ops.rules import lookup_rule; assert lookup_rule('Conv').flops is not None"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_analyses_do_not_import_surgery():
    for path in (ROOT / "otoir" / "analyses").rglob("*.py"):
        assert not re.search(r"^\s*(from|import) otoir\.surgery", path.read_text(), re.M), path.name


def test_shape_probe_runs_through_otoir_runtime(monkeypatch):
    """Where shape inference leaves a Resize output unknown, value_dims asks ONNX Runtime
    (through otoir.runtime); without a runtime it keeps the inferred shapes."""
    pytest.importorskip("torch")
    import otoir
    import otoir.zoo as zoo
    from otoir import runtime
    from otoir.errors import RuntimeUnavailableError

    m, x = zoo.build("stackedunets", width=0.5)
    m = otoir.load(m, x)
    outputs = [o.name for n in m.graph for o in n.outputs if o.name]
    calls = []
    real = runtime.session

    def counting(*args, **kwargs):
        calls.append(kwargs.get("optimization"))
        return real(*args, **kwargs)

    monkeypatch.setattr(runtime, "session", counting)
    s = StaticShapes(m)
    unknown = [n for n in outputs if n not in s.shapes]
    assert unknown and all("Resize" in n for n in unknown)
    dims = s.value_dims
    assert calls == ["disable"] and all(n in dims for n in outputs)
    assert all(isinstance(d, int) for n in outputs for d in dims[n])

    def unavailable(*args, **kwargs):
        raise RuntimeUnavailableError("no onnxruntime")

    monkeypatch.setattr(runtime, "session", unavailable)
    fallback = StaticShapes(m).value_dims
    assert all(n not in fallback for n in unknown) and len(fallback) > len(outputs) - len(unknown)
