"""Shared weights in channel pruning: one initializer used by several nodes is sliced once.

Every use must agree with that slicing: the ZIG analysis ties the channels of all uses of a
shared initializer together, and refuses (with a reason) the groups of an axis that one use
follows and another does not. Each case runs the oracle: zero random prunable groups,
``prune-channels``, and the pruned model must pass the full ONNX checker, load and *run* in
ONNX Runtime with the outputs of the zeroed full model.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from otoir.analyses.groups import zero_group
from otoir.analyses.zig import ChannelGroups
from otoir.errors import PassFailure
from otoir.infra.analysis import AnalysisManager
from otoir.infra.pass_manager import PassManager
from otoir.testing import max_rel_diff, random_feeds, run_ort

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from otoir.frontends.torch_export import export_torch  # noqa: E402


def _nparams(model: ir.Model) -> int:
    return sum(v.const_value.size for v in model.graph.initializers.values() if v.const_value is not None)


def _groups(model: ir.Model):
    return AnalysisManager(model).get(ChannelGroups).groups


def prune_oracle(model: ir.Model, *, seed: int, fraction: float = 0.5) -> tuple[float, int, int, int]:
    """Zero a random ``fraction`` of the prunable groups, prune, run both models.

    Returns:
        ``(max relative difference, params before, params after, groups zeroed)``.
    """
    rng = np.random.default_rng(seed)
    cands = [g for g in _groups(model) if g.prunable and g.meta["exact"]]
    chosen = [g for g in cands if rng.random() < fraction] or cands[:1]
    for g in chosen:
        zero_group(model, g)
    feeds = random_feeds(model, seed + 1)
    ref = run_ort(model, feeds)
    before = _nparams(model)
    PassManager.from_text("prune-channels").run(model)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    out = run_ort(model, feeds)  # loads AND runs
    return max_rel_diff(ref, out), before, _nparams(model), len(chosen)


# -- torch modules --------------------------------------------------------------------------------
class ConvTwice(torch.nn.Module):
    """A stem, then one 8->8 Conv applied twice in sequence (same weight)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        return self.head(torch.relu(self.conv(torch.relu(self.conv(y)))))


class ConvTwiceOnInput(torch.nn.Module):
    """One 3->3 Conv applied twice, the first time to the graph input (the reported failure)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.head = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(torch.relu(self.conv(x)))))


class ParallelShared(torch.nn.Module):
    """One Conv applied to two different branches, whose outputs are concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 1)
        self.b = torch.nn.Conv2d(3, 8, 1)
        self.conv = torch.nn.Conv2d(8, 6, 3, padding=1)
        self.head = torch.nn.Conv2d(12, 4, 1)

    def forward(self, x):
        u = torch.relu(self.conv(torch.relu(self.a(x))))
        v = torch.relu(self.conv(torch.relu(self.b(x))))
        return self.head(torch.cat([u, v], 1))


class LinearTwice(torch.nn.Module):
    """A Linear (MatMul through a Transpose of the weight) applied twice."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(5, 16)
        self.w = torch.nn.Linear(16, 16)
        self.out = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.out(torch.relu(self.w(torch.relu(self.w(torch.relu(self.a(x)))))))


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(8, 12, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(12)
        self.c2 = torch.nn.Conv2d(12, 8, 3, padding=1)

    def forward(self, x):
        return x + self.c2(torch.relu(self.bn(self.c1(x))))


class ReusedBlock(torch.nn.Module):
    """``self.block(self.block(x))``: a residual block (Conv-BN-ReLU-Conv) reused."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.block = _Block()
        self.head = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.block(self.block(torch.relu(self.stem(x)))))


CASES = [(ConvTwice, (2, 3, 6, 6)), (ParallelShared, (2, 3, 6, 6)), (LinearTwice, (2, 5)),
         (ReusedBlock, (2, 3, 6, 6))]


@pytest.mark.parametrize("cls,shape", CASES, ids=[c.__name__ for c, _ in CASES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shared_weight_oracle(cls, shape, seed):
    torch.manual_seed(seed)
    model = export_torch(cls().eval(), (torch.randn(*shape),), training=False)
    diff, before, after, n = prune_oracle(model, seed=seed)
    assert n > 0
    assert diff <= 1e-5
    assert after < before


def test_conv_twice_slices_rows_and_columns_of_the_shared_weight_alike():
    model = export_torch(ConvTwice().eval(), (torch.randn(1, 3, 6, 6),), training=False)
    groups = [g for g in _groups(model) if any(s.tensor == "conv.weight" for s in g.slices)]
    assert len(groups) == 8 and all(g.prunable for g in groups)
    for g in groups:
        rows = next(s for s in g.slices if s.tensor == "conv.weight" and s.axis == 0).indices
        cols = [s.indices for s in (*g.slices, *g.dependent) if s.tensor == "conv.weight" and s.axis == 1]
        assert cols == [rows]  # the input channels of the second use are the first use's outputs
        assert any(s.tensor == "stem.weight" and s.indices == rows for s in g.slices)


def test_reused_block_ties_both_applications():
    model = export_torch(ReusedBlock().eval(), (torch.randn(1, 3, 6, 6),), training=False)
    g = next(g for g in _groups(model) if any(s.tensor == "block.c1.weight" for s in g.slices))
    # the hidden channel of c1 is one group for both applications (one weight row, one BN entry)
    assert g.prunable
    assert {s.tensor for s in g.slices} >= {"block.c1.weight", "block.bn.weight"}
    assert any(s.tensor == "block.c2.weight" and s.axis == 1 for s in g.dependent)


def test_shared_weight_on_graph_input_is_refused_with_reason():
    model = export_torch(ConvTwiceOnInput().eval(), (torch.randn(1, 3, 6, 6),), training=False)
    groups = [g for g in _groups(model) if any(s.tensor == "conv.weight" for s in g.slices)]
    assert groups
    for g in groups:
        assert not g.prunable
        assert "shared weight 'conv.weight'" in g.reason and "axis 1" in g.reason
    # the reported failure: zero the shared weight's rows anyway; prune-channels must keep it
    w = np.array(model.graph.initializers["conv.weight"].const_value.numpy())
    w[1] = 0
    model.graph.initializers["conv.weight"].const_value = ir.tensor(w, name="conv.weight")
    feeds = random_feeds(model, 0)
    ref = run_ort(model, feeds)
    PassManager.from_text("prune-channels").run(model)
    assert max_rel_diff(ref, run_ort(model, feeds)) <= 1e-6
    assert model.graph.initializers["conv.weight"].const_value.shape == (3, 3, 3, 3)
    with pytest.raises(PassFailure, match="shared weight"):
        PassManager.from_text(f"prune-channels{{ids={groups[0].id}}}").run(model)


# -- hand-built ONNX: Gemm and MatMul sharing one initializer ---------------------------------
def _onnx(nodes, inits, x_shape, y_shape) -> ir.Model:
    rng = np.random.default_rng(0)
    tensors = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in inits]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, y_shape)], tensors)
    return ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))


def _gemm_twice(first_on_input: bool) -> ir.Model:
    nodes = []
    h = "x"
    if not first_on_input:
        nodes += [helper.make_node("Gemm", ["x", "w0", "b0"], ["h0"], transB=1, name="g0"),
                  helper.make_node("Relu", ["h0"], ["h"], name="r0")]
        h = "h"
    nodes += [helper.make_node("Gemm", [h, "w", "b"], ["u"], transB=1, name="g1"),
              helper.make_node("Relu", ["u"], ["v"], name="r1"),
              helper.make_node("Gemm", ["v", "w", "b"], ["z"], transB=1, name="g2"),
              helper.make_node("Relu", ["z"], ["t"], name="r2"),
              helper.make_node("MatMul", ["t", "wo"], ["y"], name="out")]
    inits = [("w", (6, 6)), ("b", (6,)), ("wo", (6, 2))]
    if not first_on_input:
        inits += [("w0", (6, 4)), ("b0", (6,))]
    return _onnx(nodes, inits, [3, 6 if first_on_input else 4], [3, 2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gemm_weight_shared_by_two_uses(seed):
    model = _gemm_twice(first_on_input=False)
    diff, before, after, n = prune_oracle(model, seed=seed)
    assert n > 0 and diff <= 1e-5 and after < before


def test_gemm_weight_shared_with_untracked_input_is_refused():
    model = _gemm_twice(first_on_input=True)
    groups = [g for g in _groups(model) if any(s.tensor == "w" for s in g.slices)]
    assert groups and not any(g.prunable for g in groups)
    assert all("shared weight 'w'" in g.reason for g in groups)


def test_matmul_weight_shared_by_parallel_uses():
    """One MatMul weight applied to two projections of the input; the outputs are added."""
    nodes = [helper.make_node("MatMul", ["x", "pa"], ["a0"], name="pa"),
             helper.make_node("Relu", ["a0"], ["a"], name="ra"),
             helper.make_node("MatMul", ["x", "pb"], ["b0"], name="pb"),
             helper.make_node("Relu", ["b0"], ["b"], name="rb"),
             helper.make_node("MatMul", ["a", "w"], ["u"], name="ua"),
             helper.make_node("MatMul", ["b", "w"], ["v"], name="ub"),
             helper.make_node("Relu", ["u"], ["u1"], name="ru"),
             helper.make_node("Relu", ["v"], ["v1"], name="rv"),
             helper.make_node("Add", ["u1", "v1"], ["s"], name="add"),
             helper.make_node("MatMul", ["s", "wo"], ["y"], name="out")]
    model = _onnx(nodes, [("pa", (4, 8)), ("pb", (4, 8)), ("w", (8, 6)), ("wo", (6, 2))], [3, 4], [3, 2])
    cg = AnalysisManager(model).get(ChannelGroups)
    g = next(g for g in cg.groups if any(s.tensor == "pa" for s in g.slices))
    # pa's column j and pb's column j are both row j of the shared w: one group
    pa = next(s for s in g.slices if s.tensor == "pa").indices
    assert any(s.tensor == "pb" and s.indices == pa for s in g.slices)
    assert any(s.tensor == "w" and s.axis == 0 and s.indices == pa for s in g.dependent)
    for seed in range(3):
        m = _onnx(nodes, [("pa", (4, 8)), ("pb", (4, 8)), ("w", (8, 6)), ("wo", (6, 2))], [3, 4], [3, 2])
        diff, before, after, n = prune_oracle(m, seed=seed)
        assert n > 0 and diff <= 1e-5 and after < before


# -- random networks reusing a pool of layers -----------------------------------------------------
class RandomReuse(torch.nn.Module):
    """A random program over a pool of C->C layers, each used any number of times.

    The first layer may read the graph input (C channels) directly, as in the reported failure.
    Steps: conv, residual conv after a shared BatchNorm, concat + 1x1 reduction, a shared Linear
    over the channel axis, and a concat along the height axis cropped back.
    """

    def __init__(self, rng: np.random.Generator, c: int = 6) -> None:
        super().__init__()
        self.on_input = bool(rng.random() < 0.4)
        self.stem = torch.nn.Conv2d(3, c, 3, padding=1)
        self.pool = torch.nn.ModuleList(
            [torch.nn.Conv2d(c, c, 3, padding=1, groups=int(rng.choice([1, 1, c]))) for _ in range(3)])
        self.bns = torch.nn.ModuleList([torch.nn.BatchNorm2d(c) for _ in range(2)])
        self.lin = torch.nn.Linear(c, c)
        self.red = torch.nn.Conv2d(2 * c, c, 1)
        self.head = torch.nn.Conv2d(c, 4, 1)
        self.program = [(int(rng.integers(0, 6)), int(rng.integers(0, 3)), int(rng.integers(0, 2)))
                        for _ in range(int(rng.integers(2, 7)))]

    def forward(self, x):
        h = torch.relu(self.pool[0](x)) if self.on_input else torch.relu(self.stem(x))
        for op, i, j in self.program:
            conv = self.pool[i]
            if op == 0:
                h = torch.relu(conv(h))
            elif op == 1:
                h = h + conv(torch.relu(self.bns[j](h)))
            elif op == 2:
                h = torch.relu(self.red(torch.cat([h, conv(h)], 1)))
            elif op == 3:
                h = self.lin(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            elif op == 4:
                h = torch.relu(self.bns[j](conv(h)))
            else:
                h = torch.cat([h, conv(h)], 2)[:, :, :h.shape[2]]
        return self.head(h)


@pytest.mark.parametrize("case", range(8))
def test_random_layer_reuse_prunes_exactly(case):
    """Each group alone (the first few) and a random half: the result runs and is exact."""
    rng = np.random.default_rng(case)
    torch.manual_seed(case)
    net = RandomReuse(rng).eval()
    proto = ir.to_proto(export_torch(net, (torch.randn(2, 6 if net.on_input else 3, 5, 5),), training=False))
    groups = [g for g in _groups(ir.from_proto(proto)) if g.prunable and g.meta["exact"]]
    trials = [[g] for g in groups[:4]] + [[g for g in groups if rng.random() < 0.5]]
    for chosen in (t for t in trials if t):
        model = ir.from_proto(proto)
        for g in chosen:
            zero_group(model, g)
        feeds = random_feeds(model, case)
        ref = run_ort(model, feeds)
        PassManager.from_text("prune-channels").run(model)
        assert max_rel_diff(ref, run_ort(model, feeds)) <= 1e-5, (case, net.program, [g.id for g in chosen])
