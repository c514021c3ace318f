"""The rule fields ``channel_walk``, ``const_flow`` and ``zero_join`` decide what the analyses do.

Each test declares a custom-domain op (``com.acme::*``, a model-local ONNX function so ONNX
Runtime runs it) twice through the public :func:`otoir.ops.rule`: once with the field, once
without it, and checks that the analyses follow the declaration and nothing else (no op-name
list elsewhere knows these ops).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest

import otoir
from otoir.analyses.erasability import ChannelPlan, plan_channel_removal
from otoir.analyses.shapes import StaticShapes
from otoir.analyses.vertices import VertexClasses
from otoir.analyses.zig import ChannelGroups
from otoir.infra.analysis import AnalysisManager
from otoir.ops import ChannelMap, ChannelWalk, ConstFlow, OpRule, VertexKind, ZeroJoin, lookup_rule, unregister_rule

ACME = "com.acme"


def _init(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)


def _model(nodes, inits, fn: onnx.FunctionProto, out_shape: list[int]) -> ir.Model:
    graph = oh.make_graph(nodes, "acme", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 6, 6])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape)], inits)
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid(ACME, 1)], functions=[fn],
                          ir_version=8)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _function(op_type: str, inputs: list[str], body_op: str) -> onnx.FunctionProto:
    return oh.make_function(ACME, op_type, inputs, ["Y"], [oh.make_node(body_op, inputs, ["Y"])],
                            [oh.make_opsetid("", 17)])


@pytest.fixture
def declare():
    """Registers user rules for acme ops; removes them afterwards."""
    declared: list[str] = []

    def _declare(op_type: str, kind: VertexKind, **fields) -> None:
        @otoir.ops.rule(op_type, domain=ACME, **fields)
        def classify(node, is_data):
            return kind, f"acme {op_type}"

        declared.append(op_type)

    yield _declare
    for op in declared:
        unregister_rule(op, domain=ACME)


# -- channel_walk: erasing's channel removal after a Concat --------------------------------------
def _concat_model() -> ir.Model:
    """x -> {Conv c1, Conv c2} -> Concat -> acme::MyAct (Relu) -> Conv c3 -> GAP -> Flatten -> y."""
    rng = np.random.default_rng(0)
    nodes = [
        oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        oh.make_node("Conv", ["x", "w2", "b2"], ["c2"], name="c2", pads=[1, 1, 1, 1]),
        oh.make_node("Concat", ["c1", "c2"], ["cat"], name="cat", axis=1),
        oh.make_node("MyAct", ["cat"], ["a"], name="act", domain=ACME),
        oh.make_node("Conv", ["a", "w3", "b3"], ["c3"], name="c3", pads=[1, 1, 1, 1]),
        oh.make_node("GlobalAveragePool", ["c3"], ["p"], name="gap"),
        oh.make_node("Flatten", ["p"], ["y"], name="flat"),
    ]
    inits = [_init(rng, "w1", 4, 3, 3, 3), _init(rng, "b1", 4), _init(rng, "w2", 5, 3, 3, 3), _init(rng, "b2", 5),
             _init(rng, "w3", 6, 9, 3, 3), _init(rng, "b3", 6)]
    return _model(nodes, inits, _function("MyAct", ["X"], "Relu"), [2, 6])


def _plan(m: ir.Model) -> ChannelPlan | str:
    am = AnalysisManager(m)
    vc = am.get(VertexClasses)
    shapes = am.get(StaticShapes).value_dims
    cat = next(n for n in m.graph if n.name == "cat")
    return plan_channel_removal(m, cat.outputs[0], 1, [0, 1, 2, 3], shapes, vc)


_ACT = dict(data_inputs=(0,), channel_map=ChannelMap.IDENTITY, channel_axis=None, maps_zero=True)


def test_channel_walk_pass_lets_erasing_walk_through_a_custom_op(declare):
    declare("MyAct", VertexKind.ACCESSORY, channel_walk=ChannelWalk.PASS, **_ACT)
    plan = _plan(_concat_model())
    assert isinstance(plan, ChannelPlan), plan
    assert plan.slices == [("w3", 1, (0, 1, 2, 3), False)]
    assert [v.name for v in plan.values] == ["cat", "a"]


def test_without_channel_walk_the_custom_op_stops_the_walk(declare):
    declare("MyAct", VertexKind.ACCESSORY, **_ACT)
    plan = _plan(_concat_model())
    assert isinstance(plan, str)
    assert "MyAct" in plan and "cannot drop channels" in plan


def test_channel_walk_pass_still_needs_zero_semantics(declare):
    # declared walkable, but the op does not keep a zero channel zero (a Sigmoid-like op)
    declare("MyAct", VertexKind.ACCESSORY, channel_walk="pass", **{**_ACT, "maps_zero": False})
    plan = _plan(_concat_model())
    assert isinstance(plan, str) and "does not map zero to zero" in plan


def test_custom_walk_op_is_erased_exactly(declare):
    pytest.importorskip("onnxruntime")
    from otoir.analyses.gezig import GeZIGPartition
    from otoir.testing import assert_same_outputs

    declare("MyAct", VertexKind.ACCESSORY, channel_walk=ChannelWalk.PASS, **_ACT)
    m = _concat_model()
    p = GeZIGPartition(m, None)
    gid = next(g.id for g in p.groups if "w1" in g.meta["params"])
    otoir.PassManager.from_text(f"zero-groups{{ids={gid}}}").run(m)
    zeroed = ir.from_proto(ir.to_proto(m))
    otoir.PassManager.from_text("eliminate-dead-branches").run(m)
    names = {n.name for n in m.graph}
    assert "c1" not in names and "act" in names
    assert m.graph.initializers["w3"].const_value.shape == (6, 5, 3, 3)
    assert_same_outputs(zeroed, m)


# -- const_flow: following a parameter back through a constant sub-graph -------------------------
def _scale_model() -> ir.Model:
    """x -> Conv c1 -> Mul(., acme::MyView(scale)) -> Conv c2 -> GAP -> Flatten -> y."""
    rng = np.random.default_rng(1)
    nodes = [
        oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        oh.make_node("MyView", ["scale"], ["s"], name="view", domain=ACME),
        oh.make_node("Mul", ["c1", "s"], ["m"], name="mul"),
        oh.make_node("Conv", ["m", "w2", "b2"], ["c2"], name="c2", pads=[1, 1, 1, 1]),
        oh.make_node("GlobalAveragePool", ["c2"], ["p"], name="gap"),
        oh.make_node("Flatten", ["p"], ["y"], name="flat"),
    ]
    inits = [_init(rng, "w1", 4, 3, 3, 3), _init(rng, "b1", 4), _init(rng, "scale", 1, 4, 1, 1),
             _init(rng, "w2", 5, 4, 3, 3), _init(rng, "b2", 5)]
    return _model(nodes, inits, _function("MyView", ["X"], "Identity"), [2, 5])


_VIEW = dict(data_inputs=(0,), channel_map=ChannelMap.IDENTITY, channel_axis=None, maps_zero=True)


def _c1_groups(m: ir.Model):
    cg = AnalysisManager(m).get(ChannelGroups)
    return [g for g in cg.groups if any(s.tensor == "w1" and s.axis == 0 for s in g.slices)]


def test_const_flow_same_follows_a_parameter_through_a_custom_op(declare):
    declare("MyView", VertexKind.PASSTHROUGH_SHAPE, const_flow=ConstFlow.SAME, **_VIEW)
    groups = _c1_groups(_scale_model())
    assert len(groups) == 4 and all(g.prunable for g in groups)
    for g in groups:
        assert any(s.tensor == "scale" and s.axis == 1 for s in (*g.slices, *g.dependent))


def test_without_const_flow_the_parameter_is_not_followed(declare):
    declare("MyView", VertexKind.PASSTHROUGH_SHAPE, **_VIEW)
    groups = _c1_groups(_scale_model())
    assert groups and not any(g.prunable for g in groups)
    assert all("computed in the graph" in g.reason for g in groups)


# -- zero_join: where an element-wise op of several inputs is zero --------------------------------
def _square_model() -> ir.Model:
    """x -> Conv c1 -> acme::MyMul(c1, c1) -> Conv c2 -> GAP -> Flatten -> y."""
    rng = np.random.default_rng(2)
    nodes = [
        oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        oh.make_node("MyMul", ["c1", "c1"], ["m"], name="mul", domain=ACME),
        oh.make_node("Conv", ["m", "w2", "b2"], ["c2"], name="c2", pads=[1, 1, 1, 1]),
        oh.make_node("GlobalAveragePool", ["c2"], ["p"], name="gap"),
        oh.make_node("Flatten", ["p"], ["y"], name="flat"),
    ]
    inits = [_init(rng, "w1", 4, 3, 3, 3), _init(rng, "b1", 4), _init(rng, "w2", 5, 4, 3, 3), _init(rng, "b2", 5)]
    return _model(nodes, inits, _function("MyMul", ["A", "B"], "Mul"), [2, 5])


@pytest.mark.parametrize("join", [ZeroJoin.ANY, ZeroJoin.ALL])
def test_zero_join_makes_a_custom_product_zero_invariant(declare, join):
    declare("MyMul", VertexKind.JOINT, channel_map=ChannelMap.BROADCAST, channel_axis=None, zero_join=join)
    groups = _c1_groups(_square_model())
    assert len(groups) == 4 and all(g.prunable for g in groups)


def test_without_zero_join_the_product_is_not_zero(declare):
    declare("MyMul", VertexKind.JOINT, channel_map=ChannelMap.BROADCAST, channel_axis=None)
    groups = _c1_groups(_square_model())
    assert groups and not any(g.prunable for g in groups)
    assert all("not zero when its group is zeroed" in g.reason for g in groups)


# -- the fields themselves ------------------------------------------------------------------------
def test_fields_accept_their_values_as_strings_and_refuse_others():
    r = OpRule("X", domain=ACME, channel_walk="norm", const_flow="relayout", zero_join="numerator")
    assert (r.channel_walk, r.const_flow, r.zero_join) == (ChannelWalk.NORM, ConstFlow.RELAYOUT, ZeroJoin.NUMERATOR)
    with pytest.raises(ValueError, match="com.acme::X: channel_walk 'walk' is not one of"):
        OpRule("X", domain=ACME, channel_walk="walk")


def test_builtin_rules_declare_the_fields():
    assert lookup_rule("Relu").channel_walk is ChannelWalk.PASS
    assert lookup_rule("BatchNormalization").channel_walk is ChannelWalk.NORM
    assert lookup_rule("Flatten").channel_walk is ChannelWalk.FLATTEN
    assert lookup_rule("Gemm").channel_walk is ChannelWalk.CONSUME
    # element-wise ops that map zero to zero but were never on the walk stay off it
    assert lookup_rule("Trilu").channel_walk is None and lookup_rule("Pad").channel_walk is None
    assert lookup_rule("ConvTranspose").channel_walk is None
    assert lookup_rule("Exp").const_flow is ConstFlow.UNARY and lookup_rule("Shape").const_flow is ConstFlow.SHAPE
    assert lookup_rule("Where").zero_join is ZeroJoin.SELECT and lookup_rule("Max").zero_join is ZeroJoin.ALL
    # Pow(x, c) is zero where x is, refined by its zero_out to a positive constant exponent
    assert lookup_rule("Pow").zero_join is ZeroJoin.NUMERATOR and lookup_rule("Sqrt").zero_join is None
