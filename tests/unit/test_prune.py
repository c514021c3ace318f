"""Oracle tests for prune-channels: zero random prunable groups, prune, compare with onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

torch = pytest.importorskip("torch")

from otoir.analyses.groups import zero_group  # noqa: E402
from otoir.analyses.zig import ChannelGroups  # noqa: E402
from otoir.frontends.torch_export import export_torch  # noqa: E402
from otoir.infra.analysis import AnalysisManager  # noqa: E402
from otoir.infra.pass_manager import PassManager  # noqa: E402
from otoir.testing import random_feeds, run_ort  # noqa: E402
from otoir.zoo import build  # noqa: E402


def _nparams(model) -> int:
    return sum(v.const_value.size for v in model.graph.initializers.values() if v.const_value is not None)


def _max_rel(a, b) -> float:
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape
        scale = max(1.0, float(np.max(np.abs(x))))
        worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y))) / scale)
    return worst


def oracle(model, *, fraction: float = 0.4, seed: int = 0, exact_only: bool = True):
    """Zero random prunable groups, prune with the pass pipeline, return (diff, before, after, n)."""
    cg = AnalysisManager(model).get(ChannelGroups)
    rng = np.random.default_rng(seed)
    cands = [g for g in cg.groups if g.prunable and (g.meta["exact"] or not exact_only)]
    chosen = [g for g in cands if rng.random() < fraction] or cands[:1]
    for g in chosen:
        zero_group(model, g)
    feeds = random_feeds(model, seed + 1)
    ref = run_ort(model, feeds)
    before = _nparams(model)
    PassManager.from_text("prune-channels" + ("{allow-inexact=true}" if not exact_only else "")).run(model)
    after = _nparams(model)
    out = run_ort(model, feeds)
    return _max_rel(ref, out), before, after, len(chosen)


NETS = ["resnet_basic", "resnet_bottleneck", "vgg_bn", "densenet", "mobilenetv2", "resnext_block", "se_block",
        "shufflenet", "conv_view_linear", "unet", "bert_like", "vit_like"]


@pytest.mark.parametrize("name", NETS)
def test_oracle_zoo_eval_mode(name):
    module, x = build(name)
    model = export_torch(module, (x,), training=False)
    diff, before, after, n = oracle(model)
    assert n > 0
    assert diff <= 1e-5
    assert after < before


@pytest.mark.parametrize("name", ["resnet_basic", "densenet", "unet", "shufflenet"])
def test_oracle_training_mode_batchnorm(name):
    """Training-mode BatchNorm (batch statistics per channel) is exact too (no Dropout here)."""
    module, x = build(name)
    model = export_torch(module, (x,), training=True)
    diff, before, after, _ = oracle(model, seed=3)
    assert diff <= 1e-5
    assert after < before


def test_attention_groups_are_whole_heads_and_ffn_units():
    module, x = build("bert_like")
    model = export_torch(module, (x,), training=False)
    cg = AnalysisManager(model).get(ChannelGroups)
    q = [g for g in cg.groups if any(s.tensor == "layers.0.attention.query.weight" for s in g.slices)]
    sizes = {len(next(s for s in g.slices if s.tensor == "layers.0.attention.query.weight").indices) for g in q}
    heads = module.layers[0].attention.num_heads if hasattr(module.layers[0].attention, "num_heads") else None
    assert len(sizes) == 1
    d = sizes.pop()
    assert d > 1  # a head = head_dim rows of q, k and v
    if heads is not None:
        assert len(q) == heads
    g0 = q[0]
    tensors = {s.tensor for s in g0.slices}
    assert {"layers.0.attention.key.weight", "layers.0.attention.value.weight"} <= tensors
    assert any(s.tensor == "layers.0.attention.out.weight" for s in g0.dependent)
    assert g0.meta["exact"]


def test_layernorm_hidden_axis_flagged_inexact():
    module, x = build("bert_like")
    model = export_torch(module, (x,), training=False)
    cg = AnalysisManager(model).get(ChannelGroups)
    inexact = [g for g in cg.groups if g.prunable and not g.meta["exact"]]
    assert inexact
    assert all("LayerNormalization" in g.reason for g in inexact)
    assert any(s.tensor.endswith("norm.weight") for s in inexact[0].slices)


def test_inexact_groups_kept_by_default():
    module, x = build("bert_like")
    model = export_torch(module, (x,), training=False)
    cg = AnalysisManager(model).get(ChannelGroups)
    g = next(g for g in cg.groups if g.prunable and not g.meta["exact"])
    zero_group(model, g)
    before = _nparams(model)
    PassManager.from_text("prune-channels").run(model)
    assert _nparams(model) == before


# -- the three OTO failure cases --------------------------------------------------------------
class _Shuffle(torch.nn.Module):
    """conv-BN-ReLU -> channel shuffle (view/transpose/reshape) -> conv (OTO: max error 0.14)."""

    def __init__(self, c: int = 8, g: int = 2) -> None:
        super().__init__()
        self.g = g
        self.conv1 = torch.nn.Conv2d(3, c, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(c)
        self.conv2 = torch.nn.Conv2d(c, 4, 1)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv1(x)))
        b, c, h, w = y.shape
        y = y.view(b, self.g, c // self.g, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.conv2(y)


class _ViewLinear(torch.nn.Module):
    """conv-BN-ReLU -> view(B, -1) -> Linear (OTO: construction crashes)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(6)
        self.fc = torch.nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(y.view(y.shape[0], -1))


class _ConcatSlice(torch.nn.Module):
    """two convs -> cat -> slice a window that straddles both -> conv (OTO: misaligned indices)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 5, 1)
        self.b = torch.nn.Conv2d(3, 7, 1)
        self.c = torch.nn.Conv2d(6, 4, 1)
        self.d = torch.nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        return self.c(y[:, 3:9]) + self.d(y[:, 6:12])


@pytest.mark.parametrize("cls,shape", [(_Shuffle, (2, 3, 4, 4)), (_ViewLinear, (2, 3, 4, 4)), (_ConcatSlice, (2, 3, 4, 4))])
def test_oto_failure_cases_are_exact(cls, shape):
    torch.manual_seed(0)
    module = cls().eval()
    x = torch.randn(*shape)
    for seed in range(3):
        model = export_torch(module, (x,), training=False)
        diff, before, after, n = oracle(model, seed=seed, fraction=0.5)
        assert n > 0
        assert diff <= 1e-5, (cls.__name__, seed, diff)
        assert after < before


def test_shuffle_groups_couple_the_permuted_channels():
    torch.manual_seed(0)
    model = export_torch(_Shuffle().eval(), (torch.randn(2, 3, 4, 4),), training=False)
    cg = AnalysisManager(model).get(ChannelGroups)
    g = [g for g in cg.groups if any(s.tensor == "conv1.weight" for s in g.slices)]
    # one group per column of the (g=2, c/g=4) view: channels j and j+4 move together
    assert sorted(next(s for s in x.slices if s.tensor == "conv1.weight").indices for x in g) == [
        (0, 4), (1, 5), (2, 6), (3, 7)]
    for grp in g:
        cols = next(s for s in grp.dependent if s.tensor == "conv2.weight").indices
        assert len(cols) == 2  # the shuffled positions of those two channels


def test_view_linear_columns_expand_by_spatial_stride():
    model = export_torch(_ViewLinear().eval(), (torch.randn(2, 3, 4, 4),), training=False)
    cg = AnalysisManager(model).get(ChannelGroups)
    g = next(g for g in cg.groups if any(s.tensor == "conv.weight" and s.indices == (2,) for s in g.slices))
    cols = next(s for s in g.dependent if s.tensor == "fc.weight")
    assert cols.axis == 1 and cols.indices == tuple(range(32, 48))


def test_concat_slice_offsets():
    model = export_torch(_ConcatSlice().eval(), (torch.randn(2, 3, 4, 4),), training=False)
    cg = AnalysisManager(model).get(ChannelGroups)
    g = next(g for g in cg.groups if any(s.tensor == "b.weight" and s.indices == (2,) for s in g.slices))
    # b's channel 2 is concat position 7: column 4 of c (window 3:9) and column 1 of d (6:12)
    dep = {s.tensor: s.indices for s in g.dependent}
    assert dep["c.weight"] == (4,) and dep["d.weight"] == (1,)


class _NormNet(torch.nn.Module):
    """conv -> norm -> conv -> pool -> linear, for the per-channel norms other than BatchNorm."""

    def __init__(self, norm: str) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = {"group": torch.nn.GroupNorm(4, 8), "instance": torch.nn.InstanceNorm2d(8, affine=True),
                     "prelu": torch.nn.PReLU(8)}[norm]
        self.c2 = torch.nn.Conv2d(8, 6, 3, padding=1)
        self.fc = torch.nn.Linear(6, 5)

    def forward(self, x):
        y = self.c2(torch.relu(self.norm(self.c1(x))))
        return self.fc(y.mean(dim=(2, 3)))


@pytest.mark.parametrize("norm", ["group", "instance", "prelu"])
def test_oracle_other_norms(norm):
    torch.manual_seed(0)
    module = _NormNet(norm)
    with torch.no_grad():  # non-trivial affine parameters
        for p in module.norm.parameters():
            p.uniform_(0.5, 1.5)
    model = export_torch(module, (torch.randn(2, 3, 8, 8),), training=False)
    cg = AnalysisManager(model).get(ChannelGroups)
    c1 = [g for g in cg.groups if g.prunable and any(s.tensor == "c1.weight" for s in g.slices)]
    if norm == "group":
        # torch exports GroupNorm (opset 17) as Reshape -> InstanceNormalization -> Reshape ->
        # Mul -> Add: one group per norm group (4 of 2 channels), exact
        assert len(c1) == 4
        assert all(next(s for s in g.slices if s.tensor == "c1.weight").indices == (2 * k, 2 * k + 1)
                   and g.meta["exact"] for k, g in enumerate(c1))
    else:
        assert len(c1) == 8
    diff, before, after, n = oracle(model, fraction=0.5, seed=1)
    assert n > 0
    assert diff <= 1e-5
    assert after < before



class _GroupNormResNet(torch.nn.Module):
    """Residual blocks normalised by GroupNorm(4, C) (the residual stream crosses several norms),
    a bottleneck whose inner GroupNorm has other groups, and a GroupNorm(1) (inexact) head."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        gn = torch.nn.GroupNorm
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, c, 3, padding=1), gn(4, c), torch.nn.ReLU())
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Conv2d(c, 2 * c, 1), gn(8, 2 * c), torch.nn.ReLU(),
                                torch.nn.Conv2d(2 * c, c, 3, padding=1), gn(4, c)) for _ in range(2))
        self.head = torch.nn.Sequential(torch.nn.Conv2d(c, 8, 1), gn(1, 8), torch.nn.ReLU())
        self.fc = torch.nn.Linear(8, 5)
        with torch.no_grad():  # non-trivial affine parameters
            for m in self.modules():
                if isinstance(m, gn):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = torch.relu(x + b(x))
        return self.fc(self.head(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_groupnorm_groups_are_whole_norm_groups_and_exact(exporter):
    # dynamo writes the affine as Mul(x, CastLike(gamma, x)): CastLike reads only x's type
    torch.manual_seed(0)
    model = export_torch(_GroupNormResNet(), (torch.randn(2, 3, 8, 8),), training=False, exporter=exporter)
    cg = AnalysisManager(model).get(ChannelGroups)
    stem = [g for g in cg.groups if g.prunable and any(s.tensor == "stem.0.weight" for s in g.slices)]
    inner = [g for g in cg.groups if g.prunable and any(s.tensor == "blocks.0.0.weight" for s in g.slices)]
    # the residual stream: 4 norm groups of 4 channels, each shared by the three GroupNorm(4, 16)
    assert sorted(next(s for s in g.slices if s.tensor == "stem.0.weight").indices for g in stem) == \
        [tuple(range(4 * k, 4 * k + 4)) for k in range(4)]
    assert all(g.meta["exact"] and {"stem.1.weight", "blocks.0.4.bias", "blocks.1.4.weight"} <=
               {s.tensor for s in g.slices} for g in stem)
    assert len(inner) == 8 and all(g.meta["exact"] for g in inner)  # GroupNorm(8, 32): 8 groups of 4
    head = [g for g in cg.groups if g.prunable and any(s.tensor == "head.0.weight" for s in g.slices)]
    assert head and not any(g.meta["exact"] for g in head)  # GroupNorm(1) stays inexact
    for seed in range(3):
        m = ir.serde.deserialize_model(ir.serde.serialize_model(model))
        diff, before, after, n = oracle(m, fraction=0.5, seed=seed)
        assert n > 0 and after < before
        assert diff <= 1e-5
        # each rewritten GroupNorm keeps one InstanceNormalization row per norm group left
        fewer = 0
        for node in m.graph:
            if node.op_type == "InstanceNormalization":
                sc = node.inputs[1]
                rows = (sc.const_value if sc.const_value is not None else sc.producer().attributes["value"].value).shape[0]
                conv = node.inputs[0].producer().inputs[0].producer()
                assert conv.op_type == "Conv"
                per = 8 if conv.inputs[1].name == "head.0.weight" else 4
                assert conv.inputs[1].const_value.shape[0] == rows * per
                fewer += rows < (8 if per == 4 and conv.inputs[1].name.startswith("blocks") and
                                 conv.inputs[1].name.endswith(".0.weight") else 4 if per == 4 else 1)
        assert fewer > 0


def test_groupnorm_with_a_broadcast_scale_is_a_barrier_naming_the_node():
    from onnx import TensorProto, helper

    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["c1"]), n("Reshape", ["c1", "g_shape"], ["r"]),
             n("InstanceNormalization", ["r", "one", "zero"], ["nrm"], name="gn_in"),
             n("Shape", ["c1"], ["shp"]), n("Reshape", ["nrm", "shp"], ["back"]), n("Conv", ["back", "w2"], ["y"])]
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor(k, TensorProto.FLOAT if a.dtype == np.float32 else TensorProto.INT64, a.shape,
                                a.ravel().tolist())
             for k, a in {"w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
                          "w2": rng.standard_normal((2, 8, 1, 1)).astype(np.float32),
                          "g_shape": np.array([0, 4, -1], np.int64), "one": np.ones(1, np.float32),
                          "zero": np.zeros(4, np.float32)}.items()]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])], inits)
    model = ir.serde.deserialize_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    cg = AnalysisManager(model).get(ChannelGroups)
    c1 = [g for g in cg.groups if any(s.tensor == "w1" for s in g.slices)]
    assert c1 and not any(g.prunable for g in c1)
    assert any("InstanceNormalization 'gn_in'" in g.reason and "broadcast scale" in g.reason for g in c1)


# -- selective scan (Mamba-like) and grouped-query attention, written here in torch -----------
class _MiniScan(torch.nn.Module):
    """Mamba's mixer in miniature: in_proj -> (x, gate); depthwise conv1d (weight seen through
    Squeeze/Unsqueeze); x_proj -> (dt, B, C); ``dt_proj.weight @ dt`` (constant left operand);
    ``A = -exp(A_log)``; a scan from ``zeros(b, d, n)`` whose state is contracted with C."""

    def __init__(self, h: int = 5, d: int = 6, n: int = 3, r: int = 2) -> None:
        super().__init__()
        self.d, self.n, self.r = d, n, r
        self.inp = torch.nn.Linear(h, 2 * d, bias=False)
        self.conv = torch.nn.Conv1d(d, d, 3, groups=d, padding=2)
        self.xp = torch.nn.Linear(d, r + 2 * n, bias=False)
        self.dt = torch.nn.Linear(r, d)
        self.A_log = torch.nn.Parameter(torch.randn(d, n))
        self.D = torch.nn.Parameter(torch.rand(d) + 0.5)
        self.out = torch.nn.Linear(d, h, bias=False)

    def forward(self, x):
        length = x.shape[1]
        u, z = self.inp(x).transpose(1, 2).chunk(2, dim=1)
        w = self.conv.weight.squeeze(1).unsqueeze(1)
        u = torch.nn.functional.silu(torch.nn.functional.conv1d(u, w, self.conv.bias, padding=2, groups=self.d)[..., :length])
        dt, b, c = torch.split(self.xp(u.transpose(1, 2)), [self.r, self.n, self.n], dim=-1)
        dt = torch.nn.functional.softplus(self.dt.weight @ dt.transpose(1, 2) + self.dt.bias[:, None])
        a = -torch.exp(self.A_log.float())
        da = torch.exp(a[None, :, None, :] * dt[:, :, :, None])
        dbu = dt[:, :, :, None] * b[:, None, :, :] * u[:, :, :, None]
        state = torch.zeros(u.shape[0], u.shape[1], self.n)
        ys = []
        for i in range(length):
            state = da[:, :, i] * state + dbu[:, :, i]
            ys.append((state @ c[:, i, :].unsqueeze(-1))[:, :, 0])
        y = (torch.stack(ys, dim=-1) + u * self.D[None, :, None]) * torch.nn.functional.silu(z)
        return self.out(y.transpose(1, 2))


class _GQA(torch.nn.Module):
    """Grouped-query attention with LLaMA's ``repeat_kv`` (an Expand whose target is computed
    from the symbolic batch size)."""

    def __init__(self, h: int = 8, heads: int = 4, kv: int = 2, hd: int = 2) -> None:
        super().__init__()
        self.heads, self.kv, self.hd = heads, kv, hd
        self.q = torch.nn.Linear(h, heads * hd)
        self.k = torch.nn.Linear(h, kv * hd)
        self.v = torch.nn.Linear(h, kv * hd)
        self.o = torch.nn.Linear(heads * hd, h)

    def _repeat(self, t):
        b, _, length, hd = t.shape
        rep = self.heads // self.kv
        return t[:, :, None, :, :].expand(b, self.kv, rep, length, hd).reshape(b, self.heads, length, hd)

    def forward(self, x):
        b, length, _ = x.shape
        q = self.q(x).view(b, length, self.heads, self.hd).transpose(1, 2)
        k = self._repeat(self.k(x).view(b, length, self.kv, self.hd).transpose(1, 2))
        v = self._repeat(self.v(x).view(b, length, self.kv, self.hd).transpose(1, 2))
        att = torch.softmax(q @ k.transpose(-1, -2) / self.hd ** 0.5, dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(b, length, self.heads * self.hd))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_selective_scan(seed):
    torch.manual_seed(seed)
    model = export_torch(_MiniScan().eval(), (torch.randn(1, 4, 5),), training=False)
    cg = AnalysisManager(model).get(ChannelGroups)
    inner = [g for g in cg.groups if g.prunable and any(s.tensor == "conv.weight" for s in g.slices)]
    assert len(inner) == 6  # one per inner channel: x row, gate row, conv, dt_proj row, D (+ A_log row)
    assert all(any(s.tensor == "A_log" for s in g.dependent) for g in inner)
    c_rows = [g for g in cg.groups if any(s.tensor == "xp.weight" and min(s.indices) >= 5 for s in g.slices)]
    assert c_rows and not any(g.prunable for g in c_rows)  # C meets the untracked state: refused
    diff, before, after, n = oracle(model, fraction=0.5, seed=seed)
    assert n > 0
    assert diff <= 1e-5
    assert after < before


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_oracle_grouped_query_attention(seed):
    """Batch 2 at run time, 9973 (the symbolic stand-in) during the analysis: the pruned
    Expand target must not freeze the batch size."""
    torch.manual_seed(seed)
    model = export_torch(_GQA().eval(), (torch.randn(1, 3, 8),), training=False)
    diff, before, after, n = oracle(model, fraction=0.6, seed=seed)
    assert n > 0
    assert diff <= 1e-5
    assert after < before


@pytest.mark.parametrize("cls,shape", [(_MiniScan, (1, 4, 5)), (_GQA, (1, 3, 8))])
def test_stale_value_shapes_are_dropped(cls, shape):
    """A model carrying inferred value shapes (``onnx.shape_inference``) stays consistent: the
    outputs of the Transpose/Squeeze/Exp nodes between a sliced initializer and its user lose
    their stale shapes too."""
    import onnx

    torch.manual_seed(0)
    proto = onnx.shape_inference.infer_shapes(ir.to_proto(export_torch(cls().eval(), (torch.randn(*shape),),
                                                                       training=False)))
    model = ir.from_proto(proto)
    assert any(v.shape is not None for n in model.graph for v in n.outputs if n.op_type == "Transpose")
    diff, before, after, n = oracle(model, fraction=0.5, seed=0)
    assert n > 0 and diff <= 1e-5 and after < before
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


class _OneHeadAttention(torch.nn.Module):
    """Single-head attention (SegFormer stage 1): ``q @ k^T`` contracts the only tracked axis."""

    def __init__(self, h: int = 6) -> None:
        super().__init__()
        self.q = torch.nn.Linear(h, h)
        self.k = torch.nn.Linear(h, h)
        self.v = torch.nn.Linear(h, h)
        self.o = torch.nn.Linear(h, h)

    def forward(self, x):
        att = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2), dim=-1)
        return self.o(att @ self.v(x))


def test_single_head_attention_each_group_alone():
    """Every group pruned on its own: q and k rows go together (their product contracts them),
    v rows with o's columns; the scores carry no channels."""
    torch.manual_seed(0)
    base = ir.to_proto(export_torch(_OneHeadAttention().eval(), (torch.randn(1, 4, 6),), training=False))
    groups = [g for g in AnalysisManager(ir.from_proto(base)).get(ChannelGroups).groups if g.prunable]
    qk = [g for g in groups if {s.tensor for s in g.slices} >= {"q.weight", "k.weight"}]
    assert len(qk) == 6 and len(groups) == 12
    for i, g in enumerate(groups):
        model = ir.from_proto(base)
        zero_group(model, g)  # slices name tensors: valid for every copy of the model
        feeds = random_feeds(model, i)
        ref = run_ort(model, feeds)
        PassManager.from_text("prune-channels").run(model)
        assert _max_rel(ref, run_ort(model, feeds)) <= 1e-6


# -- weight standardization (BiT, timm's StdConv2d): a conv weight computed row by row ---------
class _StdConv(torch.nn.Conv2d):
    """BiT's / timm's weight-standardized convolution (``F.batch_norm`` over ``W.reshape(1, O, -1)``)."""

    def forward(self, x):
        w = torch.nn.functional.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                                           momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return torch.nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


class _GlobalCentred(torch.nn.Conv2d):
    """A weight transform that is not row by row (one mean over the whole weight)."""

    def forward(self, x):
        return torch.nn.functional.conv2d(x, self.weight - self.weight.mean(), self.bias, self.stride, self.padding)


class _StdNet(torch.nn.Module):
    def __init__(self, conv=_StdConv) -> None:
        super().__init__()
        self.c1 = conv(3, 16, 3, padding=1, bias=False)
        self.n1 = torch.nn.GroupNorm(4, 16)
        self.c2 = conv(16, 16, 3, padding=1, bias=False)
        self.n2 = torch.nn.GroupNorm(8, 16)
        self.c3 = conv(16, 8, 1, bias=False)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.n1(self.c1(x)))
        x = x + torch.relu(self.n2(self.c2(x)))
        return self.fc(self.c3(x).mean((2, 3)))


def test_weight_standardized_conv_groups_are_exact():
    torch.manual_seed(0)
    model = export_torch(_StdNet(), (torch.randn(2, 3, 8, 8),), training=False)
    cg = AnalysisManager(model).get(ChannelGroups)
    c3 = [g for g in cg.groups if g.prunable and any(s.tensor == "c3.weight" and s.axis == 0 for s in g.slices)]
    assert len(c3) == 8 and all(g.meta["exact"] for g in c3)  # rows of the raw weight, through the standardization
    stream = [g for g in cg.groups if g.prunable and any(s.tensor == "c1.weight" for s in g.slices)]
    assert len(stream) == 4  # GroupNorm(4, 16) and GroupNorm(8, 16) on the residual stream: 4 groups of 4
    assert all({"c2.weight", "c3.weight"} <= {s.tensor for s in g.dependent} for g in stream)  # their columns
    for seed in range(3):
        m = ir.serde.deserialize_model(ir.serde.serialize_model(model))
        diff, before, after, n = oracle(m, fraction=0.5, seed=seed)
        assert n > 0 and after < before
        assert diff <= 1e-5
        # the standardization is folded into the (sliced) weights, under the raw weights' names
        assert "BatchNormalization" not in {node.op_type for node in m.graph}
        convs = [node for node in m.graph if node.op_type == "Conv"]
        assert [c.inputs[1].name for c in convs] == ["c1.weight", "c2.weight", "c3.weight"]


def test_a_weight_transform_that_mixes_rows_is_a_barrier():
    torch.manual_seed(0)
    model = export_torch(_StdNet(_GlobalCentred), (torch.randn(2, 3, 8, 8),), training=False)
    cg = AnalysisManager(model).get(ChannelGroups)
    # the convolutions are barriers: no group holds their weights, so none of them is cut
    assert not any(s.tensor in ("c1.weight", "c2.weight", "c3.weight") for g in cg.groups
                   for s in (*g.slices, *g.dependent))
    assert len(cg.groups) == 1 and not cg.groups[0].prunable  # the classifier's outputs


# -- Einsum written as a batched matrix product (torchvision MaxViT's attention) -----------------
class _EinsumAttention(torch.nn.Module):
    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.h, self.d = heads, d
        self.emb = torch.nn.Linear(6, d)
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.proj = torch.nn.Linear(d, d)
        self.fc = torch.nn.Linear(d, 4)

    def forward(self, x):  # x: (B, T, 6)
        b, t, _ = x.shape
        x = self.emb(x)

        def heads(z):
            return z.reshape(b, t, self.h, self.d // self.h).transpose(1, 2)

        q, k, v = (heads(z) for z in self.qkv(x).chunk(3, dim=-1))
        att = torch.einsum("b h i d, b h j d -> b h i j", q, k).softmax(-1)
        out = torch.einsum("b h i j, b h j d -> b h i d", att, v)
        y = x + self.proj(out.transpose(1, 2).reshape(b, t, self.d))
        return self.fc(y.mean(1))


def test_einsum_batched_matmul_is_lowered_and_exact():
    from otoir.passes.normalize_export import _matmul_form

    assert _matmul_form("B G H I D, B G H J D -> B G H I J") == (False, True)
    assert _matmul_form("bhij,bhjd->bhid") == (False, False)
    assert _matmul_form("bkm,bkn->bmn") == (True, False)
    assert _matmul_form("btp,pd->btd") == (False, False)  # a linear layer
    assert _matmul_form("...pd,...qd->...pq") == (False, True)
    assert _matmul_form("bd,dn->bn") == (False, False)
    assert _matmul_form("bhwc,hkc->bhwk") == (False, True)  # SAM's decomposed relative positions
    for eq in ("bi,bi->b", "bij,bjk->bki", "ii->i", "bij,bjk,bkl->bil", "...c,...cb->...b", "bij,bjk->bijk",
               "bqc,bchw->bqhw", "bhwc,wkc->bhwk", "xtp,pd->btd", "...ij,jk->...ik", "bij,bjk->cik"):
        assert _matmul_form(eq) is None, eq
    torch.manual_seed(0)
    module = _EinsumAttention()
    x = torch.randn(2, 5, 6)
    model = export_torch(module, (x,), training=False)
    assert [n.op_type for n in model.graph].count("Einsum") == 2
    res = PassManager.from_text("normalize-export").run(model)  # (the named pipelines' first step)
    assert res.statistics[-1][1]["einsums-lowered"] == 2
    assert "Einsum" not in {n.op_type for n in model.graph}
    from otoir.testing import run_ort

    with torch.no_grad():
        want = module(x).numpy()
    assert np.allclose(run_ort(model, {model.graph.inputs[0].name: x.numpy()})[0], want, atol=1e-5)
    cg = AnalysisManager(model).get(ChannelGroups)
    qkv = [g for g in cg.groups if g.prunable and any(s.tensor == "qkv.weight" for s in g.slices)]
    assert qkv  # the head channels pass the products (the Einsum was a barrier)
    for seed in range(2):
        m = ir.serde.deserialize_model(ir.serde.serialize_model(model))
        diff, before, after, n = oracle(m, fraction=0.5, seed=seed)
        assert n > 0 and after < before and diff <= 1e-5


@pytest.mark.parametrize("equation,sa,sb", [
    ("btp,pd->btd", (2, 3, 4), (4, 5)),
    ("...pd,...qd->...pq", (2, 3, 4, 5), (2, 3, 6, 5)),
    ("bhwc,hkc->bhwk", (2, 3, 4, 5), (3, 6, 5)),
    ("bkm,bkn->bmn", (2, 4, 3), (2, 4, 5)),
    ("B G H I D, B G H J D -> B G H I J", (1, 2, 2, 3, 4), (1, 2, 2, 5, 4)),
])
def test_einsum_lowering_computes_the_same(equation, sa, sb):
    from onnx import TensorProto, helper

    from otoir.testing import run_ort

    g = helper.make_graph(
        [helper.make_node("Einsum", ["a", "b"], ["y"], equation=equation)], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(sa)),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, list(sb))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = ir.serde.deserialize_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal(sa).astype(np.float32), "b": rng.standard_normal(sb).astype(np.float32)}
    want = run_ort(model, feeds)[0]
    PassManager.from_text("normalize-export").run(model)
    assert [n.op_type for n in model.graph if n.op_type in ("Einsum", "MatMul")] == ["MatMul"]
    got = run_ort(model, feeds)[0]
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-5)


class _UnbindAttention(_EinsumAttention):
    """timm's / SAM's attention: ``qkv(x).reshape(B, T, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)``
    (exported as a Split of the size-3 axis and a Squeeze of each size-1 part), with MatMuls."""

    def forward(self, x):
        b, t, _ = x.shape
        x = self.emb(x)
        q, k, v = self.qkv(x).reshape(b, t, 3, self.h, self.d // self.h).permute(2, 0, 3, 1, 4).unbind(0)
        out = ((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(b, t, self.d)
        return self.fc((x + self.proj(out)).mean(1))


def test_fused_qkv_split_and_squeezed_keeps_its_head_channels():
    torch.manual_seed(0)
    model = export_torch(_UnbindAttention(), (torch.randn(2, 5, 6),), training=False)
    assert "Squeeze" in {n.op_type for n in model.graph}
    cg = AnalysisManager(model).get(ChannelGroups)
    qkv = [g for g in cg.groups if g.prunable and any(s.tensor == "qkv.weight" for s in g.slices)]
    assert qkv and not any("size-1 channel axis" in g.reason for g in cg.groups)
    for seed in range(3):
        m = ir.serde.deserialize_model(ir.serde.serialize_model(model))
        diff, before, after, n = oracle(m, fraction=0.5, seed=seed)
        assert n > 0 and after < before and diff <= 1e-5
