"""Unit tests for the channel-group analysis (ChannelGroups, OTOv2 ZIGs) on hand-built graphs."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from otoir.analyses.groups import Group, TensorSlice
from otoir.analyses.zig import ChannelGroups
from otoir.infra.analysis import AnalysisManager


def _model(nodes, inits, out="y", out_shape=("N", 4, 8, 8)) -> ir.Model:
    rng = np.random.default_rng(0)
    tensors = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in inits]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, list(out_shape))], tensors)
    return ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))


def _bn(name, x, y, c):
    inits = [(f"{name}.{k}", (c,)) for k in ("s", "b", "m", "v")]
    return helper.make_node("BatchNormalization", [x, *(n for n, _ in inits)], [y], name=name), inits


def _groups(model):
    return AnalysisManager(model).get(ChannelGroups).groups


def _by_id(groups):
    return {g.id: g for g in groups}


def test_conv_bn_relu_conv_group_contents():
    bn, bn_inits = _bn("bn", "c1", "n1", 5)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"), bn,
             helper.make_node("Relu", ["n1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1, 1, 1, 1], name="conv2")]
    model = _model(nodes, [("w1", (5, 3, 3, 3)), ("b1", (5,)), *bn_inits, ("w2", (4, 5, 3, 3))])
    groups = _by_id(_groups(model))
    g = groups["zig:w1:2"]
    assert g.prunable and g.kind == "zig" and g.meta["exact"]
    assert g.slices == (TensorSlice("w1", 0, (2,)), TensorSlice("b1", 0, (2,)), TensorSlice("bn.s", 0, (2,)),
                        TensorSlice("bn.b", 0, (2,)))
    assert set(g.dependent) == {TensorSlice("bn.m", 0, (2,)), TensorSlice("bn.v", 0, (2,)),
                                TensorSlice("w2", 1, (2,))}
    assert g.num_params == 27 + 1 + 4 + 9 * 4
    # conv2's channels reach the graph output: not prunable, with the reason
    out = groups["zig:w2:0"]
    assert not out.prunable and "graph output" in out.reason
    assert sum(1 for x in groups.values() if x.prunable) == 5


def test_concat_offsets():
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="ca"),
             helper.make_node("Conv", ["x", "wb"], ["b"], name="cb"),
             helper.make_node("Concat", ["a", "b"], ["c"], axis=1, name="cat"),
             helper.make_node("Conv", ["c", "w"], ["y"], name="conv")]
    model = _model(nodes, [("wa", (2, 3, 1, 1)), ("wb", (3, 3, 1, 1)), ("w", (4, 5, 1, 1))])
    groups = _by_id(_groups(model))
    # b's channel k is column 2 + k of the consumer
    for k in range(3):
        assert TensorSlice("w", 1, (2 + k,)) in groups[f"zig:wb:{k}"].dependent
    assert TensorSlice("w", 1, (1,)) in groups["zig:wa:1"].dependent


def test_depthwise_conv_joins_producer_channels():
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
             helper.make_node("Conv", ["a", "dw"], ["d"], group=4, pads=[1, 1, 1, 1], name="dw"),
             helper.make_node("Conv", ["d", "w2"], ["y"], name="c2")]
    model = _model(nodes, [("w1", (4, 3, 1, 1)), ("dw", (4, 1, 3, 3)), ("w2", (4, 4, 1, 1))])
    g = _by_id(_groups(model))["zig:w1:3"]
    assert g.prunable
    tensors = {(s.tensor, s.axis, s.indices) for s in (*g.slices, *g.dependent)}
    assert {("w1", 0, (3,)), ("dw", 0, (3,)), ("w2", 1, (3,))} <= tensors


def test_barrier_op_is_not_prunable():
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
             helper.make_node("Softmax", ["a"], ["s"], axis=1, name="softmax"),
             helper.make_node("Conv", ["s", "w2"], ["y"], name="c2")]
    model = _model(nodes, [("w1", (4, 3, 1, 1)), ("w2", (4, 4, 1, 1))])
    g = _by_id(_groups(model))["zig:w1:0"]
    assert not g.prunable and "softmax" in g.reason.lower()


def test_groups_behave_as_group_dataclasses():
    bn, bn_inits = _bn("bn", "c1", "n1", 5)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"), bn,
             helper.make_node("Conv", ["n1", "w2"], ["y"], name="conv2")]
    groups = _groups(_model(nodes, [("w1", (5, 3, 1, 1)), *bn_inits, ("w2", (4, 5, 1, 1))]))
    g = groups[0]
    plain = Group(**{f.name: getattr(g, f.name) for f in dataclasses.fields(Group)})
    assert plain == g and g == plain and hash(plain) == hash(g)
    assert pickle.loads(pickle.dumps(g)) == g
    r = dataclasses.replace(g, prunable=False)
    assert r.slices == g.slices and not r.prunable
    assert g.tensors == ("w1", "bn.s", "bn.b")
    assert len(set(groups)) == len(groups)


def _model2(nodes, inits, inputs, out_shape) -> ir.Model:
    rng = np.random.default_rng(0)
    tensors = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in inits]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(out_shape))], tensors)
    return ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))


def test_matmul_contracting_channels_with_an_untracked_operand_is_refused():
    """``relu(x @ w) @ s`` with s a graph input: s keeps its rows, so w's columns cannot go
    (Mamba's scan: C contracted with the state; ONNX Runtime refused the pruned model)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="proj"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "s"], ["y"], name="contract")]
    model = _model2(nodes, [("w", (3, 4))], [("x", [2, 3]), ("s", [4, 5])], [2, 5])
    groups = [g for g in _groups(model) if any(t.tensor == "w" for t in g.slices)]
    assert groups and not any(g.prunable for g in groups)
    assert all("MatMul 'contract' contracts channels with an operand whose channels are not tracked" in g.reason
               for g in groups)


def test_matmul_broadcasting_channels_against_an_untracked_operand_is_refused():
    """A tracked batch axis of one operand where the other, untracked, has the same size."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("MatMul", ["c", "s"], ["y"], name="bmm")]
    model = _model2(nodes, [("w", (4, 3, 1, 1))], [("x", [1, 3, 2, 2]), ("s", [1, 4, 2, 2])], [1, 4, 2, 2])
    g = next(g for g in _groups(model) if any(t.tensor == "w" for t in g.slices))
    assert not g.prunable and "broadcasts channels" in g.reason


def test_matmul_with_constant_left_operand_is_a_stem():
    """``W @ X`` (Mamba's dt_proj): W's rows are the output channels, its columns X's."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="p1"),
             helper.make_node("Transpose", ["a"], ["at"], perm=[0, 2, 1], name="t"),
             helper.make_node("MatMul", ["wl", "at"], ["b"], name="left"),
             helper.make_node("Relu", ["b"], ["r"], name="relu"),
             helper.make_node("Transpose", ["r"], ["rt"], perm=[0, 2, 1], name="t2"),
             helper.make_node("MatMul", ["rt", "w2"], ["y"], name="p2")]
    model = _model2(nodes, [("w1", (3, 4)), ("wl", (6, 4)), ("w2", (6, 2))], [("x", [2, 5, 3])], [2, 5, 2])
    groups = _by_id(_groups(model))
    g = groups["zig:wl:2"]
    assert g.prunable and TensorSlice("wl", 0, (2,)) in g.slices and TensorSlice("w2", 0, (2,)) in g.dependent
    h = groups["zig:w1:1"]
    assert h.prunable and TensorSlice("wl", 1, (1,)) in h.dependent
