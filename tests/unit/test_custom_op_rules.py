"""A custom-domain op known only through a user rule is pruned and erased as its rule says.

The op is ``com.acme::MyConv``, a model-local ONNX function whose body is a Conv, so ONNX
Runtime runs it (the oracle) while otoir sees only the custom node and its rule. Without a
user rule the op is a barrier, and so is ``com.acme::Conv``: the ONNX Conv rule does not apply
to another domain.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest

pytest.importorskip("onnxruntime")

import otoir  # noqa: E402
from otoir.analyses.gezig import GeZIGPartition  # noqa: E402
from otoir.analyses.groups import zero_group  # noqa: E402
from otoir.analyses.zig import CHANNEL_HANDLERS, ChannelGroups, handler_for  # noqa: E402
from otoir.infra.analysis import AnalysisManager  # noqa: E402
from otoir.ops import CHANNEL_VARIANTS, ChannelMap, OpRule, ParamSpec, VertexKind, lookup_rule, unregister_rule  # noqa: E402
from otoir.testing import assert_same_outputs  # noqa: E402

ACME = "com.acme"


def _init(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)


def _model(op_type: str = "MyConv") -> ir.Model:
    """x -> Conv c0 -> Relu -> {acme conv 'ma' -> Relu, Conv cb -> Relu} -> Add -> Conv c2 -> Relu -> GAP -> Gemm.

    ``com.acme::<op_type>(X, W, B)`` is a model-local function: ``Conv(X, W, B, pads=1)``.
    """
    rng = np.random.default_rng(0)
    fn = oh.make_function(ACME, op_type, ["X", "W", "B"], ["Y"],
                          [oh.make_node("Conv", ["X", "W", "B"], ["Y"], pads=[1, 1, 1, 1])],
                          [oh.make_opsetid("", 17)])
    nodes = [
        oh.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="c0", pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c0"], ["r0"], name="r0"),
        oh.make_node(op_type, ["r0", "wa", "ba"], ["ma"], name="ma", domain=ACME),
        oh.make_node("Relu", ["ma"], ["ra"], name="ra"),
        oh.make_node("Conv", ["r0", "wb", "bb"], ["cb"], name="cb", pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["cb"], ["rb"], name="rb"),
        oh.make_node("Add", ["ra", "rb"], ["s"], name="add"),
        oh.make_node("Conv", ["s", "w2", "b2"], ["c2"], name="c2", pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c2"], ["r2"], name="r2"),
        oh.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        oh.make_node("Flatten", ["p"], ["f"], name="flat"),
        oh.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    inits = [_init(rng, "w0", 8, 3, 3, 3), _init(rng, "b0", 8), _init(rng, "wa", 6, 8, 3, 3), _init(rng, "ba", 6),
             _init(rng, "wb", 6, 8, 3, 3), _init(rng, "bb", 6), _init(rng, "w2", 4, 6, 3, 3), _init(rng, "b2", 4),
             _init(rng, "wf", 5, 4), _init(rng, "bf", 5)]
    graph = oh.make_graph(nodes, "acme", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 8, 8])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 5])], inits)
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid(ACME, 1)], functions=[fn],
                          ir_version=8)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _copy(m: ir.Model) -> ir.Model:
    return ir.from_proto(ir.to_proto(m))


@pytest.fixture
def my_conv_rule():
    """The documented extension: a user rule for a convolution in a custom domain."""

    @otoir.ops.rule("MyConv", domain=ACME, data_inputs=(0,), channel_map=ChannelMap.PRODUCE,
                    params=(ParamSpec(1, out_axis=0, in_axis=1), ParamSpec(2, role="bias")),
                    zero_params_zero_output=True, maps_zero=True)
    def my_conv(node, is_data):
        return VertexKind.STEM, "acme convolution"

    yield my_conv
    unregister_rule("MyConv", domain=ACME)


def _groups_with(cg: ChannelGroups, tensor: str, axis: int):
    return [g for g in cg.groups if any(s.tensor == tensor and s.axis == axis for s in g.slices)]


def test_user_rule_custom_op_is_pruned_exactly(my_conv_rule):
    m = _model()
    cg = AnalysisManager(m).get(ChannelGroups)
    ma = _groups_with(cg, "wa", 0)
    # the rows of the custom op's weight are groups, tied to the Conv 'cb' by the Add
    assert len(ma) == 6 and all(g.prunable for g in ma)
    assert all({("ba", 0), ("wb", 0), ("bb", 0)} <= {(s.tensor, s.axis) for s in g.slices} for g in ma)
    assert all(("w2", 1) in {(s.tensor, s.axis) for s in g.dependent} for g in ma)
    # its input channels are weight columns of c0's groups
    assert all(any(s.tensor == "wa" and s.axis == 1 for s in g.dependent) for g in _groups_with(cg, "w0", 0))
    # (a) zero two groups of the custom op and one of c0, prune, compare with onnxruntime
    for g in (ma[0], ma[3], _groups_with(cg, "w0", 0)[2]):
        zero_group(m, g)
    zeroed = _copy(m)
    otoir.PassManager.from_text("prune-channels").run(m)
    assert m.graph.initializers["wa"].const_value.shape == (4, 7, 3, 3)
    assert m.graph.initializers["w2"].const_value.shape == (4, 4, 3, 3)
    assert next(n for n in m.graph if n.name == "ma").domain == ACME
    assert_same_outputs(zeroed, m)


def test_user_rule_custom_op_groups_through_the_pipeline(my_conv_rule):
    m = _model()
    res = otoir.PassManager.from_text("partition-zig,zero-groups{kind=zig random=0.5 seed=3}").run(m)
    zeroed = _copy(m)
    assert res.results["zeroed"]
    before = m.graph.initializers["wa"].const_value.shape[0] + m.graph.initializers["w0"].const_value.shape[0]
    otoir.PassManager.from_text("prune-channels").run(m)
    after = m.graph.initializers["wa"].const_value.shape[0] + m.graph.initializers["w0"].const_value.shape[0]
    assert after < before
    assert_same_outputs(zeroed, m)


def test_user_rule_custom_op_is_erased_exactly(my_conv_rule):
    m = _model()
    res = otoir.PassManager.from_text("classify-vertices,grow-segments,partition-gezig").run(m)
    assert res.analyses.get(otoir.analyses.vertices.VertexClasses).kind(next(n for n in m.graph if n.name == "ma")) \
        is VertexKind.STEM
    p = GeZIGPartition(m, None)
    gid = next(g.id for g in p.groups if "wa" in g.meta["params"])
    otoir.PassManager.from_text(f"zero-groups{{ids={gid}}}").run(m)
    zeroed = _copy(m)
    otoir.PassManager.from_text("eliminate-dead-branches").run(m)
    names = {n.name for n in m.graph}
    assert "ma" not in names and "ra" not in names and "add" not in names
    assert "wa" not in m.graph.initializers and "ba" not in m.graph.initializers
    assert {"c0", "cb", "c2", "fc"} <= names
    assert_same_outputs(zeroed, m)


@pytest.mark.parametrize("op_type", ["MyConv", "Conv"])
def test_custom_domain_op_without_user_rule_is_a_barrier(op_type):
    # com.acme::Conv does not get the ONNX Conv rule: another domain is another op.
    assert lookup_rule(op_type, ACME) is None
    m = _model(op_type)
    cg = AnalysisManager(m).get(ChannelGroups)
    assert not _groups_with(cg, "wa", 0)  # the custom op allocates no channels
    c0 = _groups_with(cg, "w0", 0)
    assert c0 and not any(g.prunable for g in c0)
    assert all(f"no rule for op com.acme::{op_type}" in g.reason for g in c0)
    # the Conv branch 'cb' is not tied to the custom op's untracked output: its groups are refused too
    assert not any(g.prunable for g in _groups_with(cg, "wb", 0))
    p = GeZIGPartition(m, None)
    assert not [g for g in p.groups if "wa" in g.meta["params"]]


def test_every_channel_map_value_has_a_handler():
    assert {(m, v) for m, vs in CHANNEL_VARIANTS.items() for v in vs} == set(CHANNEL_HANDLERS)
    assert set(CHANNEL_VARIANTS) == set(ChannelMap)
    for m, vs in CHANNEL_VARIANTS.items():
        for v in vs:
            assert handler_for(OpRule("X", domain=ACME, channel_map=m, channel_variant=v)) is not None


def test_unknown_channel_variant_is_refused_at_registration():
    with pytest.raises(ValueError, match="com.acme::MyConv: channel_variant 'conv3d' is not one of"):
        OpRule("MyConv", domain=ACME, channel_map=ChannelMap.PRODUCE, channel_variant="conv3d")


def test_produce_rule_without_a_weight_layout_is_a_barrier_with_a_reason():
    @otoir.ops.rule("MyConv", domain=ACME, data_inputs=(0,), channel_map=ChannelMap.PRODUCE, params=(ParamSpec(1),))
    def my_conv(node, is_data):
        return VertexKind.STEM, "acme convolution"

    try:
        cg = AnalysisManager(_model()).get(ChannelGroups)
        assert not _groups_with(cg, "wa", 0)
        assert all("com.acme::MyConv 'ma': a PRODUCE rule needs a weight ParamSpec" in g.reason
                   for g in _groups_with(cg, "w0", 0))
    finally:
        unregister_rule("MyConv", domain=ACME)
