"""Exact hidden-size pruning of transformers: RMSNorm folding, LayerNorm invariance, heads, embeddings.

The oracle everywhere: zero a random half of the exact prunable channel groups in the full
model, construct the pruned model with ``prune-channels``, run both in ONNX Runtime (fp32) on
the same inputs and compare (max relative difference ≤ 1e-4 of the output scale). Models come
from ``transformers`` configs with random init (``HF_HUB_OFFLINE=1``), exported through a
wrapper with keyword arguments and an explicit attention mask, then ``to-inference``.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from otoir.analyses.groups import zero_group
from otoir.analyses.zig import ChannelGroups
from otoir.infra.analysis import AnalysisManager
from otoir.infra.pass_manager import PassManager
from otoir.testing import max_rel_diff, random_feeds, run_ort

TOL = 1e-4


def _nparams(model: ir.Model) -> int:
    return sum(v.const_value.size for v in model.graph.initializers.values() if v.const_value is not None)


def _groups(model: ir.Model):
    return AnalysisManager(model).get(ChannelGroups).groups


def _hidden_groups(model: ir.Model, table: str):
    """The groups holding columns of an embedding table (the residual-stream channels)."""
    return [g for g in _groups(model) if any(s.tensor == table and s.axis == 1 for s in (*g.slices, *g.dependent))]


def _oracle(model: ir.Model, seed: int = 0, *, allow_inexact: bool = False) -> tuple[float, int, int, ir.Model]:
    """Zeroes a random half of the prunable groups, prunes; returns (max rel diff, params before, after, model)."""
    groups = [g for g in _groups(model) if g.prunable and (allow_inexact or g.meta["exact"])]
    rng = np.random.default_rng(seed)
    chosen = [g for g in groups if rng.random() < 0.5]
    assert chosen
    for g in chosen:
        zero_group(model, g)
    feeds = random_feeds(model, seed)
    ref = run_ort(model, feeds)
    before = _nparams(model)
    PassManager.from_text("prune-channels" + ("{allow-inexact=true}" if allow_inexact else "")).run(model)
    onnx.checker.check_model(ir.to_proto(model))
    out = run_ort(model, feeds)
    return max_rel_diff(ref, out), before, _nparams(model), model


# -- hand-written RMSNorm graphs --------------------------------------------------------------
_RMS = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[2,3,4] x) => (float[2,3,2] y)
<float[4,4] w1 = {0.5,-1,2,1, 1,0.5,-1,2, -2,1,0.5,1, 1,2,1,-0.5}, float[4] gain = {1,2,3,4},
 float[4,2] w2 = {1,2,3,4,5,6,7,8}>
{
  h = MatMul (x, w1)
  two = Constant <value = float {2}> ()
  sq = Pow (h, two)
  ms = ReduceMean <axes = [-1]> (sq)
  eps = Constant <value = float {0.75}> ()
  me = Add (ms, eps)
  rt = Sqrt (me)
  inv = Reciprocal (rt)
  nh = Mul (h, inv)
  gh = Mul (nh, gain)
  y = MatMul (gh, w2)
}
"""


def _parse(text: str) -> ir.Model:
    return ir.from_proto(onnx.parser.parse_model(text))


def test_rmsnorm_graph_hidden_groups_exact_and_folded():
    model = _parse(_RMS)
    groups = [g for g in _groups(model) if any(s.tensor == "w1" for s in g.slices)]
    assert len(groups) == 4 and all(g.prunable and g.meta["exact"] for g in groups)
    assert all({"w1", "gain"} <= {s.tensor for s in g.slices} for g in groups)
    full = model.clone()
    for g in groups[1::2]:  # channels 1 and 3
        zero_group(model, g)
    feeds = random_feeds(model, 0)
    ref = run_ort(model, feeds)
    PassManager.from_text("prune-channels").run(model)
    assert model.graph.initializers["gain"].const_value.numpy().shape == (2,)
    # folded: eps·n/(n-k) = 0.75·2 and gain·√2; no rescaling node
    eps = [n for n in model.graph if n.op_type == "Constant" and n.name.endswith("__eps")]
    assert len(eps) == 1 and np.isclose(eps[0].attributes["value"].value.numpy(), 1.5)
    assert np.allclose(model.graph.initializers["gain"].const_value.numpy(), np.array([1, 3]) * np.sqrt(2))
    assert not any("mean_rescale" in n.name for n in model.graph)
    assert max_rel_diff(ref, run_ort(model, feeds)) <= TOL
    # the oracle is meaningful: zeroing the groups did change the outputs of the full model
    assert max_rel_diff(run_ort(full, feeds), ref) > TOL


def test_mean_over_channels_without_rmsnorm_is_rescaled():
    text = _RMS.replace("gh = Mul (nh, gain)", "gh = Mul (nh, ms)").replace(
        "float[4] gain = {1,2,3,4},", "")
    model = _parse(text)
    groups = [g for g in _groups(model) if any(s.tensor == "w1" for s in g.slices)]
    assert len(groups) == 4 and all(g.prunable and g.meta["exact"] for g in groups)
    zero_group(model, groups[0])
    feeds = random_feeds(model, 1)
    ref = run_ort(model, feeds)
    PassManager.from_text("prune-channels").run(model)
    assert any(n.name.endswith("__mean_rescale") and n.op_type == "Mul" for n in model.graph)
    assert max_rel_diff(ref, run_ort(model, feeds)) <= TOL


def test_mean_of_non_zero_channels_is_refused():
    """``mean(x + 1)``: a removed channel contributes 1, so its group must not be pruned."""
    text = _RMS.replace("sq = Pow (h, two)", "sq = Add (h, two)")
    groups = [g for g in _groups(_parse(text)) if any(s.tensor == "w1" for s in g.slices)]
    assert groups and not any(g.prunable for g in groups)
    assert any("feeds the reduction of ReduceMean" in g.reason for g in groups)


def test_rmsnormalization_op_folds_epsilon_and_scale():
    """Opset-23 ``RMSNormalization`` (checked with onnx's reference evaluator: ORT 1.19 predates it)."""
    from onnx.reference import ReferenceEvaluator

    text = """
    <ir_version: 11, opset_import: ["" : 23]>
    g (float[2,3,4] x) => (float[2,3,2] y)
    <float[4,4] w1 = {0.5,-1,2,1, 1,0.5,-1,2, -2,1,0.5,1, 1,2,1,-0.5}, float[4] gain = {1,2,3,4},
     float[4,2] w2 = {1,2,3,4,5,6,7,8}>
    {
      h = MatMul (x, w1)
      n = RMSNormalization <axis = -1, epsilon = 0.5> (h, gain)
      y = MatMul (n, w2)
    }
    """
    model = _parse(text)
    groups = [g for g in _groups(model) if any(s.tensor == "w1" for s in g.slices)]
    assert len(groups) == 4 and all(g.prunable and g.meta["exact"] for g in groups)
    zero_group(model, groups[2])
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    ref = ReferenceEvaluator(ir.to_proto(model)).run(None, {"x": x})[0]
    PassManager.from_text("prune-channels").run(model)
    node = next(n for n in model.graph if n.op_type == "RMSNormalization")
    assert np.isclose(node.attributes["epsilon"].value, 0.5 * 4 / 3)
    out = ReferenceEvaluator(ir.to_proto(model)).run(None, {"x": x})[0]
    assert out.shape == ref.shape and max_rel_diff([ref], [out]) <= TOL


_PRE_LN = """
<ir_version: 10, opset_import: ["" : 17]>
g (int64[2,3] ids) => (float[2,3,2] y)
<float[5,4] emb = {1,2,3,6, 0,0,4,4, 1,1,1,1, 2,0,2,0, -1,1,-1,5}, float[4] g1 = {1,2,1,2}, float[4] b1 = {0,1,0,1},
 float[4,4] wa = {1,0,0,3, 0,1,1,2, 2,2,0,0, 1,0,1,2}, float[4] g2 = {2,1,3,2}, float[4] b2 = {1,0,0,0},
 float[4,2] wo = {1,2,3,4,5,6,7,8}>
{
  e = Gather (emb, ids)
  n1 = LayerNormalization <axis = -1, epsilon = 0.5> (e, g1, b1)
  a = MatMul (n1, wa)
  h = Add (e, a)
  n2 = LayerNormalization <axis = -1, epsilon = 0.5> (h, g2, b2)
  y = MatMul (n2, wo)
}
"""


@pytest.mark.parametrize("absorb", [True, False])
def test_layernorm_invariance_small_graph(absorb):
    model = _parse(_PRE_LN)
    feeds = {"ids": np.array([[0, 1, 2], [3, 4, 0]], dtype=np.int64)}
    ref = run_ort(model, feeds)
    PassManager.from_text(f"layernorm-invariance{{absorb={str(absorb).lower()}}}").run(model)
    assert max_rel_diff(ref, run_ort(model, feeds)) <= TOL
    hidden = _hidden_groups(model, "emb")
    assert len(hidden) == 4 and all(g.prunable and g.meta["exact"] for g in hidden)
    zero_group(model, hidden[1])
    ref = run_ort(model, feeds)
    PassManager.from_text("prune-channels").run(model)
    assert model.graph.initializers["emb"].const_value.numpy().shape == (5, 3)
    assert max_rel_diff(ref, run_ort(model, feeds)) <= TOL


# -- transformers models ----------------------------------------------------------------------
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

import otoir  # noqa: E402

VOCAB, SEQ = 64, 8


class _Wrapper(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=False)[0]


def _export(module: torch.nn.Module) -> bytes:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ids = torch.randint(0, VOCAB, (1, SEQ))
    mask = torch.ones(1, SEQ, dtype=torch.long)
    model = otoir.load(_Wrapper(module.eval()), (ids, mask), training=False)
    PassManager.from_text("to-inference").run(model)
    return ir.to_proto(model).SerializeToString()


def _load(data: bytes) -> ir.Model:
    return ir.from_proto(onnx.load_from_string(data))


def _small(**kw):
    return {**dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   max_position_embeddings=32), **kw}


@pytest.fixture(scope="module")
def llama() -> dict[bool, bytes]:
    out = {}
    for tied in (False, True):
        torch.manual_seed(0)
        cfg = transformers.LlamaConfig(**_small(num_key_value_heads=2, tie_word_embeddings=tied))
        out[tied] = _export(transformers.LlamaForCausalLM(cfg))
    return out


@pytest.fixture(scope="module")
def gpt2() -> bytes:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return _export(transformers.GPT2LMHeadModel(cfg))


@pytest.fixture(scope="module")
def bert() -> bytes:
    torch.manual_seed(0)
    return _export(transformers.BertForSequenceClassification(transformers.BertConfig(**_small())))


@pytest.mark.parametrize("tied", [False, True])
def test_llama_hidden_size_exact(llama, tied):
    """RMSNorm (decomposed by the exporter) over the residual stream: hidden groups exact; GQA heads."""
    model = _load(llama[tied])
    hidden = _hidden_groups(model, "model.model.embed_tokens.weight")
    assert len(hidden) == 32 and all(g.prunable and g.meta["exact"] for g in hidden)
    if tied:  # lm_head = embed_tokens: the same columns, one tensor
        assert "model.lm_head.weight" not in model.graph.initializers
    # grouped-query attention: a KV head's group holds its k/v rows and both of its query heads
    kv = [g for g in _groups(model) if any(s.tensor == "model.model.layers.0.self_attn.k_proj.weight"
                                           for s in g.slices)]
    assert len(kv) == 2 and all(g.prunable and g.meta["exact"] for g in kv)
    q_rows = next(s for s in kv[0].slices if s.tensor == "model.model.layers.0.self_attn.q_proj.weight").indices
    assert len(q_rows) == 16  # two query heads of head_dim 8 (rotary dims kept together)
    diff, before, after, _ = _oracle(model, seed=int(tied))
    assert diff <= TOL and after < before


def test_gpt2_layernorm_invariance_then_exact(gpt2):
    model = _load(gpt2)
    assert any(not g.meta["exact"] for g in _groups(model))  # LayerNorm: inexact before the transform
    feeds = random_feeds(model, 0)
    ref = run_ort(model, feeds)
    res = PassManager.from_text("layernorm-invariance").run(model)
    stats = dict(res.statistics)["layernorm-invariance"]
    assert stats["layernorms-replaced"] == 5 and stats["tied-heads-corrected"] == 1
    assert stats["readers-absorbed"] == 4  # ln_f keeps its affine: its reader is the tied head
    assert not any(n.op_type == "LayerNormalization" for n in model.graph)
    assert max_rel_diff(ref, run_ort(model, feeds)) <= TOL  # outputs unchanged by the transform
    assert "model.transformer.wte.weight" in model.graph.initializers  # still tied (no copy)
    hidden = _hidden_groups(model, "model.transformer.wte.weight")
    assert len(hidden) == 32 and all(g.prunable and g.meta["exact"] for g in hidden)
    assert all(g.meta["exact"] for g in _groups(model))
    diff, before, after, _ = _oracle(model, seed=2)
    assert diff <= TOL and after < before


def test_bert_post_ln_stays_inexact_and_allow_inexact_prunes(bert):
    model = _load(bert)
    feeds = random_feeds(model, 0)
    ref = run_ort(model, feeds)
    res = PassManager.from_text("layernorm-invariance").run(model)
    # post-LN: every block's stream is read by attention and the residual Add directly: refused;
    # only the embeddings' own stream (lookups read by their LayerNorm) is transformed, exactly
    stats = dict(res.statistics)["layernorm-invariance"]
    assert stats["streams-refused"] == 4 and stats["layernorms-replaced"] == 1
    assert any("reads the residual stream" in d.message for d in res.diagnostics)
    assert max_rel_diff(ref, run_ort(model, feeds)) <= TOL
    hidden = _hidden_groups(model, "model.bert.embeddings.word_embeddings.weight")
    assert len(hidden) == 32 and all(g.prunable and not g.meta["exact"] for g in hidden)
    assert "LayerNormalization" in hidden[0].reason
    # token-type embeddings (looked up with a computed index buffer) are sliced with the hidden size
    assert all(any(s.tensor == "model.bert.embeddings.token_type_embeddings.weight" for s in g.slices) for g in hidden)
    # default: the zero inexact groups are kept (exact); allow-inexact removes them (measured error)
    diff, before, after, _ = _oracle(_load(bert), seed=0)
    assert diff <= TOL
    diff_inexact, _, after_inexact, _ = _oracle(_load(bert), seed=0, allow_inexact=True)
    assert after_inexact < after and np.isfinite(diff_inexact)


def test_phi3_fused_projections():
    """Phi-3's fused qkv_proj and gate_up_proj: slices of one weight belong to different groups."""
    torch.manual_seed(0)
    cfg = transformers.Phi3Config(**_small(num_key_value_heads=2, pad_token_id=0))
    model = _load(_export(transformers.Phi3ForCausalLM(cfg)))
    qkv = "model.model.layers.0.self_attn.qkv_proj.weight"
    gu = "model.model.layers.0.mlp.gate_up_proj.weight"
    heads = [g for g in _groups(model) if any(s.tensor == qkv for s in g.slices)]
    units = [g for g in _groups(model) if any(s.tensor == gu for s in g.slices)]
    # rows: queries 0-31, keys 32-47, values 48-63; a KV-head group takes rows from all three
    assert len(heads) == 2 and all(g.prunable and g.meta["exact"] for g in heads)
    for g in heads:
        rows = np.array(next(s for s in g.slices if s.tensor == qkv and s.axis == 0).indices)
        assert [int(np.sum((rows >= a) & (rows < b))) for a, b in ((0, 32), (32, 48), (48, 64))] == [16, 8, 8]
    ffn = [g for g in units if any(s.tensor == gu and s.axis == 0 for s in g.slices)]
    assert len(ffn) == 48
    rows = next(s for s in ffn[0].slices if s.tensor == gu and s.axis == 0).indices
    assert len(rows) == 2 and rows[1] - rows[0] == 48  # gate unit j with up unit j
    diff, before, after, _ = _oracle(model, seed=3)
    assert diff <= TOL and after < before


def test_albert_shared_layer():
    """ALBERT applies one layer at every depth: a group spans every use of the shared weights."""
    torch.manual_seed(0)
    cfg = transformers.AlbertConfig(**_small(embedding_size=16, num_hidden_layers=3))
    model = _load(_export(transformers.AlbertForSequenceClassification(cfg)))
    ffn = "model.albert.encoder.albert_layer_groups.0.albert_layers.0.ffn.weight"
    units = [g for g in _groups(model) if any(s.tensor == ffn and s.axis == 0 for s in g.slices)]
    assert len(units) == 48 and all(g.prunable and g.meta["exact"] for g in units)
    diff, before, after, _ = _oracle(model, seed=4)
    assert diff <= TOL and after < before


def test_t5_relative_position_bias_heads():
    """T5's relative position bias (a table looked up by computed buckets) is sliced with the heads.

    Layer 0 computes the bias and every later layer reuses it, so head h of every layer is one
    group together with column h of the table.
    """
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                relative_attention_num_buckets=8, relative_attention_max_distance=16)
    model = _load(_export(transformers.T5EncoderModel(cfg)))
    table = "model.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    heads = [g for g in _groups(model) if any(s.tensor == table for s in g.slices)]
    assert len(heads) == 4 and all(g.prunable and g.meta["exact"] for g in heads)
    for g in heads:
        q = {s.tensor for s in g.slices if s.tensor.endswith("SelfAttention.q.weight")}
        assert len(q) == 2  # the same head of both layers
    diff, before, after, _ = _oracle(model, seed=5)
    assert diff <= TOL and after < before


def test_vit_layernorm_invariance_patch_conv_and_class_token():
    """ViT: the stream is written by a patch Conv (through Reshape/Transpose), the class token
    (Expand, Concat along the sequence axis) and learned position embeddings (an Add)."""
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                 image_size=16, patch_size=4, num_channels=3, num_labels=5)

    class Pixels(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m(pixel_values=pixel_values, return_dict=False)[0]

    model = otoir.load(Pixels(transformers.ViTForImageClassification(cfg).eval()), (torch.randn(1, 3, 16, 16),),
                       training=False)
    PassManager.from_text("to-inference").run(model)
    feeds = random_feeds(model, 0)
    ref = run_ort(model, feeds)
    res = PassManager.from_text("layernorm-invariance").run(model)
    assert dict(res.statistics)["layernorm-invariance"]["layernorms-replaced"] == 5
    assert max_rel_diff(ref, run_ort(model, feeds)) <= TOL
    conv = "m.vit.embeddings.patch_embeddings.projection.weight"
    hidden = [g for g in _groups(model) if any(s.tensor == conv and s.axis == 0 for s in g.slices)]
    assert len(hidden) == 32 and all(g.prunable and g.meta["exact"] for g in hidden)
    assert all({"m.vit.embeddings.cls_token", "m.vit.embeddings.position_embeddings"}
               <= {s.tensor for s in g.slices} for g in hidden)
    diff, before, after, _ = _oracle(model, seed=6)
    assert diff <= TOL and after < before


class _Head(torch.nn.Module):
    """``head(model(**{key: x})[index])`` (no head when ``classes`` is 0)."""

    def __init__(self, m: torch.nn.Module, key: str, index: int, classes: int = 0) -> None:
        super().__init__()
        self.m, self.key, self.index = m, key, index
        self.head = torch.nn.Linear(32, classes) if classes else None

    def forward(self, x):
        y = self.m(**{self.key: x}, return_dict=False)[self.index]
        return self.head(y) if self.head is not None else y


def _centring_case(module: torch.nn.Module, x: torch.Tensor, writer_op: str, stem: str):
    """layernorm-invariance on a stream with a non-linear writer: exact, a centring, exact groups."""
    model = otoir.load(module.eval(), (x,), training=False)
    PassManager.from_text("to-inference").run(model)
    feeds = random_feeds(model, 0)
    ref = run_ort(model, feeds)
    n_before = _nparams(model)
    res = PassManager.from_text("layernorm-invariance").run(model)
    stats = dict(res.statistics)["layernorm-invariance"]
    assert stats["centrings-inserted"] == 1 and "streams-refused" not in stats
    assert any("centring inserted" in d.message and writer_op in d.message for d in res.diagnostics)
    assert not any(n.op_type == "LayerNormalization" for n in model.graph)
    assert max_rel_diff(ref, run_ort(model, feeds)) <= TOL  # outputs unchanged by the transform
    (u,) = [k for k in model.graph.initializers if k.endswith("__centring_u")]
    (w,) = [k for k in model.graph.initializers if k.endswith("__centring_w")]
    assert _nparams(model) <= n_before + 64  # 2n for the centring, less each absorbed scale and bias
    groups = _groups(model)
    assert all(g.meta["exact"] for g in groups)
    # the centring's rows (u) and columns (w) go with the writer's channels, which are the stream's
    hidden = [g for g in groups if any(s.tensor == w and s.axis == 1 for s in g.slices)]
    assert len(hidden) == 32 and all(g.prunable for g in hidden)
    assert all(any(s.tensor == u and s.axis == 0 for s in g.dependent) for g in hidden)
    assert all(any(s.tensor.endswith(stem) for s in g.slices) for g in hidden)
    diff, before, after, pruned = _oracle(model, seed=7)
    assert diff <= TOL and after < before
    assert pruned.graph.initializers[w].const_value.numpy().shape[1] < 32  # hidden channels removed
    return stats


def test_whisper_conv_stem_centred():
    """Whisper's stream is written by GELU(conv) (not linear) and position embeddings: the GELU
    output gets ``v - (v @ 1/n) @ 1``; then every LayerNorm is an RMSNorm and the hidden size is exact."""
    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(vocab_size=VOCAB, num_mel_bins=8, d_model=32, encoder_layers=2,
                                     encoder_attention_heads=4, encoder_ffn_dim=48, decoder_layers=1,
                                     decoder_attention_heads=4, decoder_ffn_dim=48, max_source_positions=16,
                                     max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                     decoder_start_token_id=1, num_labels=3)
    module = _Head(transformers.WhisperForAudioClassification(cfg), "input_features", 0)
    stats = _centring_case(module, torch.randn(1, 8, 32), "Mul", "encoder.conv2.weight")
    assert stats["layernorms-replaced"] == stats["readers-absorbed"] == 5  # two per layer and the final one


def test_clip_pre_layernorm_writer_centred():
    """CLIP's stream is written by ``pre_layrnorm`` (a LayerNorm: γ⊙n+β is not mean-zero): its output
    gets the centring (its own scale and bias stay as Mul and Add); the pooled class token
    reaches ``post_layernorm`` through a Gather along the sequence axis."""
    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=48)
    module = _Head(transformers.CLIPVisionModel(cfg), "pixel_values", 1, classes=5)
    stats = _centring_case(module, torch.randn(1, 3, 16, 16), "LayerNormalization",
                           "embeddings.patch_embedding.weight")
    assert stats["layernorms-replaced"] == 6
    assert stats["readers-absorbed"] == 5  # pre_layrnorm's readers are the centring's MatMul and Sub


def test_stream_as_graph_output_is_refused_with_reason():
    """CLIPVisionModel's ``last_hidden_state`` is the residual stream itself: centring it would change
    the output, so those LayerNorms stay (a remark names the value); outputs unchanged."""
    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=4, intermediate_size=48)
    model = otoir.load(_Head(transformers.CLIPVisionModel(cfg), "pixel_values", 0).eval(),
                       (torch.randn(1, 3, 16, 16),), training=False)
    PassManager.from_text("to-inference").run(model)
    feeds = random_feeds(model, 0)
    ref = run_ort(model, feeds)
    res = PassManager.from_text("layernorm-invariance").run(model)
    stats = dict(res.statistics)["layernorm-invariance"]
    assert stats["streams-refused"] == 2 and stats["layernorms-replaced"] == 1  # pre_layrnorm's own stream
    assert any("is a graph input or output" in d.message for d in res.diagnostics)
    assert max_rel_diff(ref, run_ort(model, feeds)) <= TOL


def test_bart_shared_embedding_and_scale():
    """BART: ``embed_tokens(ids) * embed_scale`` (a scalar Mul: linear) from one table shared by the
    encoder and the decoder streams. Centring the table for one stream would change the other, so
    each stream's lookup gets the centring instead; the blocks are post-LN (refused, with reasons)."""
    torch.manual_seed(0)
    cfg = transformers.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=1, decoder_layers=1,
                                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                                  decoder_ffn_dim=48, max_position_embeddings=32, scale_embedding=True)
    model = _load(_export(transformers.BartModel(cfg)))
    feeds = random_feeds(model, 0)
    ref = run_ort(model, feeds)
    res = PassManager.from_text("layernorm-invariance").run(model)
    stats = dict(res.statistics)["layernorm-invariance"]
    assert stats["centrings-inserted"] == 2 and stats["layernorms-replaced"] == 2  # the two layernorm_embedding
    shared = [d.message for d in res.diagnostics if "centring inserted" in d.message]
    assert len(shared) == 2 and all("writer weight 'model.shared.weight' is also used by Gather" in m for m in shared)
    assert any("reads the residual stream" in d.message for d in res.diagnostics)  # post-LN blocks
    assert max_rel_diff(ref, run_ort(model, feeds)) <= TOL
    diff, before, after, _ = _oracle(model, seed=8)
    assert diff <= TOL and after < before


def test_bert_post_ln_centred_locally_is_exact(bert):
    """``post-ln=true``: each post-LN LayerNorm gets its own centring ``v - (v @ 1/n) @ 1`` (a removed
    channel stays zero and leaves the variance) and becomes an RMSNorm: outputs unchanged, every
    hidden-size group exact and prunable, prune oracle exact."""
    model = _load(bert)
    feeds = random_feeds(model, 0)
    ref = run_ort(model, feeds)
    res = PassManager.from_text("layernorm-invariance{post-ln=true}").run(model)
    stats = next(v for k, v in dict(res.statistics).items() if k.startswith("layernorm-invariance"))
    assert stats["streams-refused"] == 4 and stats["layernorms-centred-locally"] == 4
    assert stats["layernorms-replaced"] == 1  # the embeddings' own stream, as without the option
    assert not any(n.op_type == "LayerNormalization" for n in model.graph)
    assert max_rel_diff(ref, run_ort(model, feeds)) <= TOL
    hidden = _hidden_groups(model, "model.bert.embeddings.word_embeddings.weight")
    assert len(hidden) == 32 and all(g.prunable and g.meta["exact"] for g in hidden)
    assert all(g.meta["exact"] for g in _groups(model))
    diff, before, after, pruned = _oracle(model, seed=9)
    assert diff <= TOL and after < before
    emb = pruned.graph.initializers["model.bert.embeddings.word_embeddings.weight"].const_value.numpy()
    assert emb.shape[1] < 32  # hidden channels removed
