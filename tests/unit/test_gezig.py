"""Golden tests of partition-gezig (OTOv3 Figure 1c, oto-notes 6.2) and the zero-ness checks."""

from __future__ import annotations

import functools

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import otoir
from otoir.analyses.gezig import GeZIGPartition
from otoir.infra.analysis import AnalysisManager


@functools.cache
def _model(name: str, width: float):
    pytest.importorskip("torch")
    import otoir.zoo as zoo

    m, x = zoo.build(name, width=width)
    return otoir.load(m, x)


def _prefixes(g) -> set[str]:
    return {p.split(".")[0] for p in g.meta["params"]}


def test_demosupnet_gezigs_match_figure_1c():
    p = AnalysisManager(_model("demosupnet", 0.125)).get(GeZIGPartition)
    groups = {frozenset(_prefixes(g)): g for g in p.groups}
    assert set(groups) == {frozenset(s) for s in (
        {"conv2", "bn2"}, {"conv3", "bn3"}, {"conv4", "bn4"}, {"conv5", "bn5"}, {"conv6"},
        {"conv7", "bn7"}, {"conv8", "bn8"})}
    assert set(p.complement) == {"conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "linear.weight", "linear.bias"}
    g2 = groups[frozenset({"conv2", "bn2"})]
    assert g2.meta["joints"] == ("/Concat",) and g2.meta["concat"]
    # Conv6's first column block depends on g2 (Figure 1: columns of K6 marked by incoming segment).
    cols = [s for s in g2.dependent if s.tensor == "conv6.weight"]
    assert len(cols) == 1 and cols[0].axis == 1 and cols[0].indices == tuple(range(8))
    g4 = groups[frozenset({"conv4", "bn4"})]
    assert [s.indices for s in g4.dependent if s.tensor == "conv6.weight"] == [tuple(range(16, 24))]
    assert groups[frozenset({"conv8", "bn8"})].meta["joints"] == ("/Add_1",)
    assert all(g.num_params > 0 and g.flops > 0 for g in p.groups)
    why = {v.segment: v.reason for v in p.verdicts.values() if not v.gezig}
    assert "not a joint" in why[0] and "graph output" in why[11]


def test_stackedunets_six_gezigs():
    p = AnalysisManager(_model("stackedunets", 0.5)).get(GeZIGPartition)
    mods = sorted({".".join(x.split(".")[:2]) for g in p.groups for x in g.meta["params"]})
    assert mods == ["left.down3", "left.out", "left.up26", "right.down3", "right.out", "right.up63"]


def _tiny(op_after: str, attrs: dict | None = None, extra_inputs=()):
    """x -> Conv(w) -> OP -> Add(with x) -> y."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[0, 0, 0, 0]),
             helper.make_node(op_after, ["c", *extra_inputs], ["a"], name="act", **(attrs or {})),
             helper.make_node("Add", ["a", "x"], ["y"], name="add")]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [2, 2, 1, 1], [1, 0, 0, 1]),
             helper.make_tensor("b", TensorProto.FLOAT, [2], [0.5, -0.5])]
    for name in extra_inputs:
        inits.append(helper.make_tensor(name, TensorProto.FLOAT, [], [0.25]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    return ir.serde.deserialize_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))


@pytest.mark.parametrize(("op", "attrs", "extra", "ok"), [
    ("Relu", None, (), True),
    ("Sigmoid", None, (), False),
    ("Softplus", None, (), False),
    ("HardSigmoid", None, (), False),
    ("Add", None, ("k",), True),  # k is a trainable initializer of the segment, zeroed with it
    ("Mul", None, ("k",), True),
])
def test_zero_ness_walk(op, attrs, extra, ok):
    p = GeZIGPartition(_tiny(op, attrs, extra), None)
    assert (len(p.groups) == 1) is ok
    if not ok:
        (v,) = p.verdicts.values()
        assert "do not zero its output" in v.reason


def test_mul_joint_is_not_gezig():
    m = _tiny("Relu")
    add = [n for n in m.graph if n.name == "add"][0]
    add.op_type = "Mul"
    p = GeZIGPartition(m, None)
    assert not p.groups
    assert "Mul joint" in next(iter(p.verdicts.values())).reason


def test_zero_gezig_output_is_zero():
    from otoir.analyses.groups import zero_group
    from otoir.testing import run_ort

    model = _model("demosupnet", 0.125)
    m = ir.from_proto(ir.to_proto(model))
    p = GeZIGPartition(m, None)
    g = next(g for g in p.groups if "conv8.weight" in g.meta["params"])
    zero_group(m, g)
    seg = p.segments.segments[g.meta["segment"]]
    m.graph.outputs.append(seg.last.outputs[0])
    from otoir.testing import random_feeds

    out = run_ort(m, random_feeds(m))
    assert np.all(out[-1] == 0)


# -- Concat: a joint for erasing only along the channel axis --------------------------------------
def _cat_net(axis: int, consumer: str, c: int = 2) -> ir.Model:
    """x -> conv0 -> relu -> {conv1 (zeroable branch), conv2} -> Concat(axis) -> consumer -> y.

    Both branches are [2, c, 4, 6] (height 4 and width 6 differ, so an axis confusion shows in
    the shapes). Consumers: ``conv`` (a 1x1 Conv), ``flatten`` (Flatten -> Gemm, the issue's
    height concat), ``pool`` (MaxPool -> Flatten -> Gemm), ``flatcat`` (the branches are
    flattened first and concatenated as [2, 48] along ``axis`` into a Gemm).
    """
    rng = np.random.default_rng(0)

    def t(name, shape):
        return helper.make_tensor(name, TensorProto.FLOAT, shape, rng.standard_normal(shape).astype(np.float32).ravel())

    nodes = [helper.make_node("Conv", ["x", "w0"], ["a0"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["a1"], name="conv1"),
             helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r0", "w2"], ["a2"], name="conv2")]
    inits = [t("w0", [2, 3, 3, 3]), t("w1", [c, 2, 1, 1]), t("b1", [c]), t("w2", [c, 2, 1, 1])]
    shape = [2, c, 4, 6]
    cat_shape = list(shape)
    if consumer == "flatcat":
        nodes += [helper.make_node("Flatten", ["r1"], ["f1"], name="flat1"),
                  helper.make_node("Flatten", ["a2"], ["f2"], name="flat2"),
                  helper.make_node("Concat", ["f1", "f2"], ["c"], axis=axis, name="cat")]
        cat_shape = [2, 24 * c]
        cat_shape[axis % 2] *= 2
        nodes.append(helper.make_node("Gemm", ["c", "fc"], ["y"], name="fc", transB=1))
        inits.append(t("fc", [3, cat_shape[1]]))
        out = [2 * (2 if axis % 2 == 0 else 1), 3]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)
        return ir.serde.deserialize_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))
    nodes.append(helper.make_node("Concat", ["r1", "a2"], ["c"], axis=axis, name="cat"))
    cat_shape[axis % 4] *= 2
    if consumer == "conv":
        nodes.append(helper.make_node("Conv", ["c", "w3"], ["y"], name="conv3"))
        inits.append(t("w3", [3, cat_shape[1], 1, 1]))
        out = [2, 3, *cat_shape[2:]]
    else:
        src = "c"
        if consumer == "pool":
            nodes.append(helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
            src = "p"
            cat_shape = [*cat_shape[:2], cat_shape[2] // 2, cat_shape[3] // 2]
        nodes.append(helper.make_node("Flatten", [src], ["f"], name="flat"))
        nodes.append(helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1))
        inits += [t("fc", [3, int(np.prod(cat_shape[1:]))]), t("fcb", [3])]
        out = [2, 3]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)
    return ir.serde.deserialize_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))


def _erase_conv1(m: ir.Model):
    """Zeroes conv1's group if there is one and erases; returns (partition, zeroed copy, result)."""
    p = GeZIGPartition(m, None)
    ids = [g.id for g in p.groups if "w1" in g.meta["params"]]
    zeroed = ir.from_proto(ir.to_proto(m))
    if ids:
        otoir.PassManager.from_text(f"zero-groups{{ids={ids[0]}}}").run(m)
        zeroed = ir.from_proto(ir.to_proto(m))
        otoir.PassManager.from_text("eliminate-dead-branches").run(m)
    return p, zeroed, ids


@pytest.mark.parametrize("consumer", ["conv", "flatten", "pool"])
@pytest.mark.parametrize("axis", [1, -3])
def test_channel_concat_branch_is_erased_exactly(axis, consumer):
    from otoir.testing import assert_same_outputs

    m = _cat_net(axis, consumer)
    p, zeroed, ids = _erase_conv1(m)
    assert ids, p.to_text()
    g = p.groups[[g.id for g in p.groups].index(ids[0])]
    assert g.meta["concat"] and g.meta["joints"] == ("cat",)
    assert "conv1" not in {n.name for n in m.graph} and "w1" not in m.graph.initializers
    assert_same_outputs(zeroed, m, rtol_scale=1e-5)


@pytest.mark.parametrize("c", [2, 6])
@pytest.mark.parametrize("consumer", ["conv", "flatten", "pool"])
@pytest.mark.parametrize("axis", [2, -2, 3, -1])
def test_spatial_concat_branch_is_not_a_gezig(axis, consumer, c):
    # Issue 10: erasing read the concat's height/width ranges as channels. With 6 channels it
    # wrote models ONNX Runtime cannot run (Gemm/Conv dimension mismatch), with 2 channels it
    # raised an IndexError. The zero branch is part of the output's shape: not removable, and
    # the reason names the node and the axis.
    m = _cat_net(axis, consumer, c)
    p = GeZIGPartition(m, None)
    seg = next(s for s in p.segments.segments if any(n.name == "conv1" for n in s.nodes))
    v = p.verdicts[seg.id]
    assert not v.gezig
    assert f"cat: Concat stacks along axis {axis % 4}, not the channel axis 1" in v.reason
    assert "w1" in p.complement
    # the pipeline erases what it may (nothing here) and the outputs stay those of the model
    from otoir.testing import assert_same_outputs

    before = ir.from_proto(ir.to_proto(m))
    otoir.PassManager.from_text("zero-groups{random=1.0 seed=0},eliminate-dead-branches").run(m)
    assert "conv1" in {n.name for n in m.graph}
    zeroed = ir.from_proto(ir.to_proto(m))
    assert_same_outputs(zeroed, m)
    assert len(list(m.graph)) == len(list(before.graph))


def test_concat_after_flatten():
    from otoir.testing import assert_same_outputs

    # features of [N, F] (axis 1 or -1): a channel concat; the Gemm rows of the branch go
    m = _cat_net(1, "flatcat")
    p, zeroed, ids = _erase_conv1(m)
    assert ids
    assert m.graph.initializers["fc"].const_value.shape.dims == (3, 48)
    assert_same_outputs(zeroed, m)
    m = _cat_net(-1, "flatcat")
    _, zeroed, ids = _erase_conv1(m)
    assert ids
    assert_same_outputs(zeroed, m)
    # along the batch axis: not removable
    p = GeZIGPartition(_cat_net(0, "flatcat"), None)
    assert not [g for g in p.groups if "w1" in g.meta["params"]]
    assert any("stacks along axis 0, not the channel axis 1" in v.reason for v in p.verdicts.values())


def test_concat_consumer_on_another_axis_is_refused():
    # A channel concat whose consumer works on another axis (a Softmax over channels is a
    # REDUCE op, not on the walk) cannot lose channels.
    m = _cat_net(1, "conv")
    conv3 = next(n for n in m.graph if n.name == "conv3")
    sm = ir.node("Softmax", [conv3.inputs[0]], {"axis": 1}, name="sm")
    m.graph.insert_before(conv3, sm)
    conv3.replace_input_with(0, sm.outputs[0])
    p = GeZIGPartition(m, None)
    assert not [g for g in p.groups if "w1" in g.meta["params"]]
    assert any("sm: Softmax (input 0) after the Concat cannot drop channels" in v.reason for v in p.verdicts.values())


def test_stacking_joint_comes_from_the_rule_table():
    # A user rule for a custom-domain concat: its stacking axis is the attribute the rule names.
    from otoir.ops import DropInput, OpRule, register_rule, unregister_rule

    register_rule(OpRule("Stack", domain="com.acme", kind=otoir.ops.VertexKind.JOINT, reason="custom concat",
                         channel_map=otoir.ops.ChannelMap.CONCAT, channel_axis=1, maps_zero=True,
                         drop_input=DropInput.STACK, axis_attribute="dim"))
    try:
        for dim, ok in ((1, True), (2, False)):
            m = _cat_net(1, "conv")
            cat = next(n for n in m.graph if n.name == "cat")
            cat.op_type, cat.domain = "Stack", "com.acme"
            cat.attributes.pop("axis")
            cat.attributes["dim"] = ir.AttrInt64("dim", dim)
            m.opset_imports["com.acme"] = 1
            p = GeZIGPartition(m, None)
            assert bool([g for g in p.groups if "w1" in g.meta["params"]]) is ok
            if not ok:
                assert any("Stack stacks along axis 2" in v.reason for v in p.verdicts.values())
    finally:
        unregister_rule("Stack", domain="com.acme")


def test_erase_refusal_leaves_the_model_untouched():
    # Every joint is planned before anything changes: a refused joint (a Mul, later in the
    # graph) does not leave the Concat before it half rewired and its consumer sliced.
    from otoir.analyses.shapes import StaticShapes
    from otoir.analyses.vertices import VertexClasses
    from otoir.surgery.erase import erase_segment_outputs

    m = _cat_net(1, "conv")
    r0 = next(n for n in m.graph if n.name == "relu0").outputs[0]
    q = ir.node("Relu", [r0], name="q")
    z = ir.node("Mul", [q.outputs[0], q.outputs[0]], name="mul")
    m.graph.extend([q, z])
    z.outputs[0].name = "z"
    z.outputs[0].dtype = ir.DataType.FLOAT
    m.graph.outputs.append(z.outputs[0])
    r1 = next(n for n in m.graph if n.name == "relu1").outputs[0]
    res = erase_segment_outputs(m, [r1, q.outputs[0]], VertexClasses(m), StaticShapes(m).value_dims)
    assert [(msg, n.name) for msg, n in res.errors] == [("feeds a Mul joint (a zero input does not vanish)", "mul")]
    cat = next(n for n in m.graph if n.name == "cat")
    assert len(cat.inputs) == 2 and cat.inputs[0] is r1
    assert m.graph.initializers["w3"].const_value.shape.dims == (3, 4, 1, 1)


def _from_text(text: str) -> ir.Model:
    import onnx

    return ir.from_proto(onnx.parser.parse_model(text))


_NESTED = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[1,2,4,4] x) => (float[1,2,4,4] y)
<float[2,2,1,1] wa = {1,0,0,1}, float[2,2,1,1] wb = {0,1,1,0}, float[2,2,1,1] wd = {2,0,0,2}>
{
  ca = Conv (x, wa)
  cb = Conv (x, wb)
  n2 = Add (ca, cb)
  r = Relu (n2)
  cd = Conv (r, wd)
  y = Add (x, cd)
}
"""


def _erase(model: ir.Model, groups) -> tuple[list[np.ndarray], list[np.ndarray], ir.Model]:
    from otoir.analyses.groups import zero_group
    from otoir.infra.pass_manager import PassManager
    from otoir.testing import run_ort

    for g in groups:
        zero_group(model, g)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)}
    ref = run_ort(model, feeds)
    PassManager.from_text("eliminate-dead-branches,cleanup").run(model)
    return ref, run_ort(model, feeds), model


def test_nested_regions_each_form_a_gezig():
    """Branches a and b feed a sum inside the region of d (everything d reads): three GeZIGs; d's
    region holds a's and b's, and erasing d removes them with it, zero or not."""
    m = _from_text(_NESTED)
    p = GeZIGPartition(m, None)
    by = {g.meta["params"]: g for g in p.groups}
    assert set(by) == {("wa",), ("wb",), ("wd",)}
    d = by[("wd",)]
    assert {p.segments.segment_of[n] for n in m.graph if n.op_type == "Conv"} <= set(d.meta["region"])
    # a and b both zero leave the sum without inputs (its consumer is no joint): invalid; with d
    # zero too they are inside d's region and go with it.
    assert not p.checker.check([by[("wa",)], by[("wb",)]]).valid
    assert p.checker.check([by[("wa",)], by[("wb",)], d]).valid
    ref, got, out = _erase(m, [by[("wa",)], by[("wb",)], d])
    np.testing.assert_array_equal(ref[0], got[0])
    assert [n.op_type for n in out.graph] == ["Identity"]


def test_erasing_an_outer_region_removes_nested_nonzero_groups():
    m = _from_text(_NESTED)
    p = GeZIGPartition(m, None)
    (d,) = [g for g in p.groups if g.meta["params"] == ("wd",)]
    ref, got, out = _erase(m, [d])
    np.testing.assert_array_equal(ref[0], got[0])
    assert not set(out.graph.initializers) & {"wa", "wb", "wd"}


def test_parameters_shared_by_two_sublayers_form_one_gezig():
    """One weight applied at two depths (ALBERT): a GeZIG over both uses; zeroing it erases both."""
    m = _from_text("""
<ir_version: 10, opset_import: ["" : 17]>
g (float[2,3,4] x) => (float[2,3,4] y)
<float[4,4] w = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1}, float[4] b = {1,1,1,1}>
{
  h0 = MatMul (x, w)
  h = Add (h0, b)
  x1 = Add (x, h)
  k0 = MatMul (x1, w)
  k = Add (k0, b)
  y = Add (x1, k)
}
""")
    p = GeZIGPartition(m, None)
    (g,) = p.groups
    assert g.meta["params"] == ("w", "b") and len(g.meta["exits"]) == 2
    assert p.checker.check([g]).valid
    from otoir.analyses.groups import zero_group
    from otoir.infra.pass_manager import PassManager

    zero_group(m, g)
    PassManager.from_text("eliminate-dead-branches,cleanup").run(m)
    assert [n.op_type for n in m.graph] == ["Identity"]


def test_attention_group_zeroed_through_v_not_through_q():
    """The rule table's MatMul zero semantics: P @ V is zero when V is; Q @ K^T zero is not enough."""
    from otoir.analyses.erasability import node_output_zero, region_zero_values
    from otoir.analyses.vertices import VertexClasses

    m = _from_text("""
<ir_version: 10, opset_import: ["" : 17]>
g (float[2,3,4] x) => (float[2,3,4] y)
<float[4,4] wq = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1}, float[4,4] wv = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1}>
{
  q = MatMul (x, wq)
  xt = Transpose <perm = [0, 2, 1]> (x)
  s = MatMul (q, xt)
  p = Softmax <axis = -1> (s)
  v = MatMul (x, wv)
  c = MatMul (p, v)
  y = Add (x, c)
}
""")
    vc = VertexClasses(m)
    nodes = [n for n in m.graph if n.op_type != "Add"]
    zero_q, why_q = region_zero_values(nodes, vc, {"wq"})
    c = nodes[-1].outputs[0]
    assert c not in zero_q and "Softmax does not map zero to zero" in why_q[nodes[3]]
    zero_v, _ = region_zero_values(nodes, vc, {"wv"})
    assert c in zero_v
    assert node_output_zero(nodes[-1], vc, lambda v: False) == "MatMul has no all-zero factor"


_ROUTED = """
<ir_version: 10, opset_import: ["" : 17, "com.acme" : 1]>
g (float[2,3,4] x) => (float[2,3,4] y)
<float[4,4] we = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1}>
{
  e = MatMul (x, we)
  r = com.acme.Router (x)
  o = Mul (e, r)
  y = Add (x, o)
}
"""


def test_an_op_without_rule_off_the_zero_path_does_not_block_a_region():
    """The router (no rule) only scales the expert: a zero expert zeroes the product whatever the
    router computes, so the region is a GeZIG and the router goes with it as dead code."""
    p = GeZIGPartition(_from_text(_ROUTED), None)
    assert [g.meta["params"] for g in p.groups] == [("we",)]


def test_an_op_without_rule_on_the_zero_path_blocks_it():
    m = _from_text(_ROUTED.replace("r = com.acme.Router (x)\n  o = Mul (e, r)", "o = com.acme.Router (e)"))
    p = GeZIGPartition(m, None)
    assert not p.groups
    (v,) = [v for v in p.verdicts.values() if v.params == ("we",)]
    assert "Router" in v.reason and "do not zero its output" in v.reason
