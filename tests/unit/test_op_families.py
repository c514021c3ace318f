"""One small ONNX graph per op family of the rule table, without torch.

For each family: the vertex classes of its nodes, its channel groups (how many are prunable,
which tensors they span, or why none is), and the pruning oracle: zero a random valid set of
groups (``zero-groups{kind=zig random=...}``), prune (``prune-channels``), and compare the
outputs with ONNX Runtime before and after. A family whose zero channels do not stay zero (a
barrier) is checked the other way round: a zeroed channel must not be removed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from otoir.analyses.vertices import VertexClasses
from otoir.analyses.zig import ChannelGroups
from otoir.infra.analysis import AnalysisManager
from otoir.infra.pass_manager import PassManager
from otoir.testing import assert_same_outputs, random_feeds

pytest.importorskip("onnxruntime")

N = helper.make_node
IMAGE = [("x", ("N", 3, 8, 8))]
TOKENS = [("x", ("N", 4, 8))]


def _model(nodes, inits, inputs, outputs) -> ir.Model:
    """A float model; an initializer is an array, or a shape filled with seeded normal values."""
    rng = np.random.default_rng(0)
    tensors = [numpy_helper.from_array(s if isinstance(s, np.ndarray) else rng.standard_normal(s).astype(np.float32), n)
               for n, s in inits]

    def vi(name, shape):
        return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(shape))

    g = helper.make_graph(nodes, "g", [vi(*i) for i in inputs], [vi(*o) for o in outputs], tensors)
    return ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))


def _i64(*v):
    return np.array(v, np.int64)


def _f32(v):
    return np.array(v, np.float32)


@dataclass(frozen=True)
class Family:
    """An op family's test graph and what the analyses must say about it.

    Attributes:
        build: Builds the model (node outputs name the nodes).
        kinds: Node output name -> vertex kind.
        prunable: Number of prunable channel groups.
        tensors: Initializers the prunable groups span together (slices and dependent entries).
        barrier: For a family with no prunable group: a word of the reason.
    """

    build: Callable[[], ir.Model]
    kinds: dict[str, str]
    prunable: int
    tensors: frozenset[str] = frozenset()
    barrier: str = ""


FAMILIES: dict[str, Family] = {
    "conv": Family(
        lambda: _model([N("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), N("Relu", ["c1"], ["r1"]),
                        N("Conv", ["r1", "dw"], ["d"], group=4, pads=[1, 1, 1, 1]), N("Conv", ["d", "w2"], ["y"])],
                       [("w1", (4, 3, 3, 3)), ("b1", (4,)), ("dw", (4, 1, 3, 3)), ("w2", (5, 4, 1, 1))],
                       IMAGE, [("y", ("N", 5, 8, 8))]),
        {"c1": "stem", "r1": "accessory", "d": "stem", "y": "stem"}, 4, frozenset({"w1", "b1", "dw", "w2"})),
    "pool": Family(
        lambda: _model([N("Conv", ["x", "w1"], ["c1"]), N("MaxPool", ["c1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
                        N("AveragePool", ["p1"], ["p2"], kernel_shape=[2, 2]), N("GlobalAveragePool", ["p2"], ["g"]),
                        N("Flatten", ["g"], ["f"]), N("Gemm", ["f", "fc"], ["y"], transB=1)],
                       [("w1", (4, 3, 1, 1)), ("fc", (10, 4))], IMAGE, [("y", ("N", 10))]),
        {"c1": "stem", "p1": "accessory", "p2": "accessory", "g": "accessory", "f": "passthrough-shape", "y": "stem"},
        4, frozenset({"w1", "fc"})),
    "norm": Family(
        lambda: _model([N("Conv", ["x", "w1"], ["c1"]), N("BatchNormalization", ["c1", "s", "b", "m", "v"], ["n1"]),
                        N("InstanceNormalization", ["n1", "is", "ib"], ["n2"]), N("Conv", ["n2", "w2"], ["y"])],
                       [("w1", (4, 3, 1, 1)), ("s", (4,)), ("b", (4,)), ("m", (4,)), ("v", _f32([1, 2, 3, 4])),
                        ("is", (4,)), ("ib", (4,)), ("w2", (5, 4, 1, 1))], IMAGE, [("y", ("N", 5, 8, 8))]),
        {"c1": "stem", "n1": "accessory", "n2": "accessory", "y": "stem"},
        4, frozenset({"w1", "s", "b", "m", "v", "is", "ib", "w2"})),
    "elementwise": Family(
        lambda: _model([N("Conv", ["x", "w1"], ["a"]), N("Conv", ["x", "w2"], ["b"]), N("Add", ["a", "b"], ["s"]),
                        N("Mul", ["s", "k"], ["m"]), N("Sub", ["m", "k2"], ["t"]), N("Conv", ["t", "w3"], ["y"])],
                       [("w1", (4, 3, 1, 1)), ("w2", (4, 3, 1, 1)), ("k", (1, 4, 1, 1)), ("k2", (1, 4, 1, 1)),
                        ("w3", (5, 4, 1, 1))], IMAGE, [("y", ("N", 5, 8, 8))]),
        {"a": "stem", "b": "stem", "s": "joint", "m": "accessory", "t": "accessory", "y": "stem"},
        4, frozenset({"w1", "w2", "k", "k2", "w3"})),
    "matmul": Family(
        lambda: _model([N("MatMul", ["x", "w1"], ["a"]), N("Add", ["a", "b1"], ["ab"]), N("Relu", ["ab"], ["r"]),
                        N("MatMul", ["r", "w2"], ["y"])],
                       [("w1", (8, 16)), ("b1", (16,)), ("w2", (16, 8))], TOKENS, [("y", ("N", 4, 8))]),
        {"a": "stem", "ab": "accessory", "r": "accessory", "y": "stem"}, 16, frozenset({"w1", "b1", "w2"})),
    "gemm": Family(
        lambda: _model([N("Flatten", ["x"], ["f"]), N("Gemm", ["f", "w1", "b1"], ["a"], transB=1), N("Relu", ["a"], ["r"]),
                        N("Gemm", ["r", "w2"], ["y"])],
                       [("w1", (16, 32)), ("b1", (16,)), ("w2", (16, 10))], TOKENS, [("y", ("N", 10))]),
        {"f": "passthrough-shape", "a": "stem", "r": "accessory", "y": "stem"}, 16, frozenset({"w1", "b1", "w2"})),
    "flatten": Family(  # a conv's channel k is the Gemm's columns k*64 .. k*64+63
        lambda: _model([N("Conv", ["x", "w1"], ["c"]), N("Relu", ["c"], ["r"]), N("Flatten", ["r"], ["f"]),
                        N("Gemm", ["f", "fc"], ["y"], transB=1)],
                       [("w1", (4, 3, 1, 1)), ("fc", (10, 256))], IMAGE, [("y", ("N", 10))]),
        {"c": "stem", "r": "accessory", "f": "passthrough-shape", "y": "stem"}, 4, frozenset({"w1", "fc"})),
    "reshape-transpose": Family(
        lambda: _model([N("MatMul", ["x", "w1"], ["a"]), N("Transpose", ["a"], ["t"], perm=[0, 2, 1]), N("Relu", ["t"], ["r"]),
                        N("Transpose", ["r"], ["tt"], perm=[0, 2, 1]), N("Reshape", ["tt", "shp"], ["rs"]),
                        N("MatMul", ["rs", "w2"], ["y"])],
                       [("w1", (8, 16)), ("w2", (16, 8)), ("shp", _i64(0, 4, 16))], TOKENS, [("y", ("N", 4, 8))]),
        {"a": "stem", "t": "passthrough-shape", "r": "accessory", "tt": "passthrough-shape", "rs": "passthrough-shape",
         "y": "stem"}, 16, frozenset({"w1", "w2"})),
    "concat-split": Family(
        lambda: _model([N("Conv", ["x", "wa"], ["a"]), N("Conv", ["x", "wb"], ["b"]), N("Concat", ["a", "b"], ["c"], axis=1),
                        N("Relu", ["c"], ["r"]), N("Split", ["r", "sp"], ["s1", "s2"], axis=1),
                        N("Conv", ["s1", "w1"], ["o1"]), N("Conv", ["s2", "w2"], ["o2"]), N("Add", ["o1", "o2"], ["y"])],
                       [("wa", (2, 3, 1, 1)), ("wb", (3, 3, 1, 1)), ("sp", _i64(2, 3)), ("w1", (4, 2, 1, 1)),
                        ("w2", (4, 3, 1, 1))], IMAGE, [("y", ("N", 4, 8, 8))]),
        {"a": "stem", "b": "stem", "c": "joint", "r": "accessory", "s1": "passthrough-shape", "o1": "stem", "o2": "stem",
         "y": "joint"}, 5, frozenset({"wa", "wb", "w1", "w2"})),
    "slice": Family(  # channels 1..4 of 6 go on; 0 and 5 are dead and prunable on their own; channel 1
        # is kept so that 's' keeps one whatever the selection takes (it carries part of w1's groups)
        lambda: _model([N("Conv", ["x", "w1"], ["c"]), N("Slice", ["c", "st", "en", "ax"], ["s"]), N("Conv", ["s", "w2"], ["y"])],
                       [("w1", (6, 3, 1, 1)), ("st", _i64(1)), ("en", _i64(5)), ("ax", _i64(1)), ("w2", (4, 4, 1, 1))],
                       IMAGE, [("y", ("N", 4, 8, 8))]),
        {"c": "stem", "s": "passthrough-shape", "y": "stem"}, 5, frozenset({"w1", "w2"}),
        barrier="kept so that 's' keeps a channel"),
    "reduce": Family(
        lambda: _model([N("Conv", ["x", "w1"], ["c"]), N("ReduceMean", ["c"], ["r"], axes=[2, 3], keepdims=0),
                        N("Gemm", ["r", "fc"], ["y"], transB=1)],
                       [("w1", (4, 3, 1, 1)), ("fc", (10, 4))], IMAGE, [("y", ("N", 10))]),
        {"c": "stem", "r": "accessory", "y": "stem"}, 4, frozenset({"w1", "fc"})),
    "reduce-channels": Family(  # a max over the channels changes when a zero channel goes
        lambda: _model([N("Conv", ["x", "w1"], ["c"]), N("ReduceMax", ["c"], ["r"], axes=[1], keepdims=1),
                        N("Conv", ["r", "w2"], ["y"])],
                       [("w1", (4, 3, 1, 1)), ("w2", (4, 1, 1, 1))], IMAGE, [("y", ("N", 4, 8, 8))]),
        {"c": "stem", "r": "accessory", "y": "stem"}, 0, barrier="channel axis"),
    # a sum over the channels is unchanged by removing zero channels; a mean is compensated
    **{f"{op.lower()}-channels": Family(
        lambda op=op: _model([N("Conv", ["x", "w1"], ["c"]),
                              N(op, ["c", "ax"], ["r"], keepdims=1) if op == "ReduceSum"
                              else N(op, ["c"], ["r"], axes=[1], keepdims=1),  # opset 13: attribute
                              N("Conv", ["r", "w2"], ["y"])],
                             [("w1", (4, 3, 1, 1)), ("ax", _i64(1)), ("w2", (4, 1, 1, 1))], IMAGE,
                             [("y", ("N", 4, 8, 8))]),
        {"c": "stem", "r": "accessory", "y": "stem"}, 4, frozenset({"w1"})) for op in ("ReduceSum", "ReduceMean")},
    "activation": Family(  # each maps 0 to 0 (Clip's range contains 0)
        lambda: _model([N("Conv", ["x", "w1"], ["c"]), N("LeakyRelu", ["c"], ["a1"], alpha=0.1), N("Tanh", ["a1"], ["a2"]),
                        N("Clip", ["a2", "lo", "hi"], ["a3"]), N("HardSwish", ["a3"], ["a4"]), N("Elu", ["a4"], ["a5"]),
                        N("Erf", ["a5"], ["a6"]), N("Relu", ["a6"], ["a7"]), N("Conv", ["a7", "w2"], ["y"])],
                       [("w1", (4, 3, 1, 1)), ("lo", _f32(-1)), ("hi", _f32(1)), ("w2", (5, 4, 1, 1))],
                       IMAGE, [("y", ("N", 5, 8, 8))]),
        {"c": "stem", **{f"a{i}": "accessory" for i in range(1, 8)}, "y": "stem"}, 4, frozenset({"w1", "w2"})),
    "activation-nonzero": Family(  # sigmoid(0) = 0.5: a zero channel does not stay zero
        lambda: _model([N("Conv", ["x", "w1"], ["c"]), N("Sigmoid", ["c"], ["a"]), N("Conv", ["a", "w2"], ["y"])],
                       [("w1", (4, 3, 1, 1)), ("w2", (5, 4, 1, 1))], IMAGE, [("y", ("N", 5, 8, 8))]),
        {"c": "stem", "a": "accessory", "y": "stem"}, 0, barrier="not zero"),
    "clip-off-zero": Family(  # Clip to [0.5, 1] maps 0 to 0.5
        lambda: _model([N("Conv", ["x", "w1"], ["c"]), N("Clip", ["c", "lo", "hi"], ["a"]), N("Conv", ["a", "w2"], ["y"])],
                       [("w1", (4, 3, 1, 1)), ("lo", _f32(0.5)), ("hi", _f32(1)), ("w2", (5, 4, 1, 1))],
                       IMAGE, [("y", ("N", 5, 8, 8))]),
        {"c": "stem", "a": "accessory", "y": "stem"}, 0, barrier="not zero"),
}

PRUNABLE = [name for name, f in FAMILIES.items() if f.prunable]
BARRIERS = [name for name, f in FAMILIES.items() if not f.prunable]


def _groups(model):
    return AnalysisManager(model).get(ChannelGroups).groups


def _nparams(model) -> int:
    """Float initializer entries (parameters; not the int64 shape/axes constants surgery rewrites)."""
    return sum(v.const_value.size for v in model.graph.initializers.values()
               if v.const_value is not None and v.const_value.dtype.is_floating_point())


@pytest.mark.parametrize("name", FAMILIES)
def test_vertex_classes(name):
    fam = FAMILIES[name]
    model = fam.build()
    info = AnalysisManager(model).get(VertexClasses).info
    got = {n.outputs[0].name: info[n].kind.value for n in model.graph}
    assert got == fam.kinds


@pytest.mark.parametrize("name", FAMILIES)
def test_channel_groups(name):
    fam = FAMILIES[name]
    groups = _groups(fam.build())
    prunable = [g for g in groups if g.prunable]
    assert len(prunable) == fam.prunable, [(g.id, g.reason) for g in groups]
    spanned = {s.tensor for g in prunable for s in (*g.slices, *g.dependent)}
    assert spanned == fam.tensors
    assert all(g.meta.get("exact", True) for g in prunable)
    # one channel per group; every group's parameter count is what it spans
    assert all(len(g.slices[0].indices) == 1 for g in prunable)
    assert all(g.num_params > 0 for g in groups)
    if fam.barrier:
        assert any(fam.barrier in g.reason for g in groups), [g.reason for g in groups]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", PRUNABLE)
def test_prune_oracle(name, seed):
    model = FAMILIES[name].build()
    by_id = {g.id: g for g in _groups(model)}
    res = PassManager.from_text(f"zero-groups{{kind=zig random=0.5 seed={seed}}}").run(model)
    zeroed = res.results["zeroed"]
    assert zeroed and all(by_id[i].prunable for i in zeroed)
    full = model.clone()
    before = _nparams(model)
    PassManager.from_text("prune-channels,check").run(model)
    assert before - _nparams(model) == sum(by_id[i].num_params for i in zeroed)
    assert_same_outputs(full, model, random_feeds(full, seed), rtol_scale=1e-5)


@pytest.mark.parametrize("name", BARRIERS)
def test_barrier_keeps_zero_channels(name):
    model = FAMILIES[name].build()
    w1 = model.graph.initializers["w1"]
    arr = w1.const_value.numpy().copy()
    arr[1] = 0.0  # channel 1 of the first conv is all zero, but does not stay zero after the barrier
    w1.const_value = ir.tensor(arr, name="w1")
    full = model.clone()
    before = _nparams(model)
    res = PassManager.from_text("prune-channels").run(model)
    assert _nparams(model) == before and not res.changed
    assert_same_outputs(full, model, random_feeds(full, 0))
