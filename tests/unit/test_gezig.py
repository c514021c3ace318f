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
