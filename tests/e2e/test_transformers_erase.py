"""Erasing whole attention and MLP sub-layers of Hugging Face ``transformers`` models (OTOv3 GeZIGs).

Models are built from small configs with random weights (``HF_HUB_OFFLINE=1``, nothing is
downloaded), exported through a wrapper that takes keyword arguments and an explicit attention
mask, and brought to the inference form (``to-inference``: the training-form export keeps
Dropout). Covered: post-LN (BERT), pre-LN (GPT-2), RMSNorm + SwiGLU + rotary + grouped-query
attention (LLaMA), ViT, ConvNeXt (depthwise conv, LayerNorm, MLP, layer scale), an
encoder-decoder with cross-attention (BART), parallel attention + MLP (GPT-NeoX), one layer
shared across depth (ALBERT) and an MLP-Mixer written here (token and channel mixers).

For each: every attention and every MLP sub-layer (named by its output projection) is in a
GeZIG, and the oracle holds: zeroing a random valid half of the GeZIGs and erasing them gives
the outputs of the full model with those parameters zeroed (ONNX Runtime, fp32, 1e-4 of the
output scale), with strictly fewer parameters.
"""

from __future__ import annotations

import os
import re

import numpy as np
import onnx_ir as ir
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

import otoir  # noqa: E402
from otoir.analyses.gezig import GeZIGPartition  # noqa: E402
from otoir.analyses.groups import zero_group  # noqa: E402
from otoir.analyses.validity import select_redundant  # noqa: E402
from otoir.infra.analysis import AnalysisManager  # noqa: E402
from otoir.infra.pass_manager import PassManager  # noqa: E402
from otoir.testing import run_ort  # noqa: E402

VOCAB = 64


class _Wrapper(torch.nn.Module):
    """Calls the model with keyword arguments; returns the last hidden state."""

    def __init__(self, model: torch.nn.Module, kind: str) -> None:
        super().__init__()
        self.m = model
        self.kind = kind

    def forward(self, a, b=None):
        if self.kind == "image":
            return self.m(pixel_values=a)[0]
        if self.kind == "seq2seq":
            return self.m(input_ids=a, attention_mask=b, decoder_input_ids=a, use_cache=False)[0]
        if self.kind == "plain":
            return self.m(a)
        return self.m(input_ids=a, attention_mask=b)[0]


class _MixerBlock(torch.nn.Module):
    """MLP-Mixer block: token mixing across patches, then channel mixing, each pre-LN residual."""

    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(dim)
        self.token_mlp = torch.nn.Sequential(torch.nn.Linear(tokens, 2 * tokens), torch.nn.GELU(),
                                             torch.nn.Linear(2 * tokens, tokens))
        self.norm2 = torch.nn.LayerNorm(dim)
        self.channel_mlp = torch.nn.Sequential(torch.nn.Linear(dim, 2 * dim), torch.nn.GELU(),
                                               torch.nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class _Mixer(torch.nn.Module):
    def __init__(self, depth: int = 2, dim: int = 8, patch: int = 4, image: int = 8) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, dim, patch, stride=patch)
        self.blocks = torch.nn.Sequential(*[_MixerBlock((image // patch) ** 2, dim) for _ in range(depth)])
        self.norm = torch.nn.LayerNorm(dim)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        return self.norm(self.blocks(x)).mean(1)


def _build(name: str):
    """``(module, kind, example inputs, output-projection patterns, sub-layers expected)``."""
    T = transformers
    if name == "bert":  # post-LN
        cfg = T.BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                           vocab_size=VOCAB, max_position_embeddings=32)
        return T.BertModel(cfg), "text", [r"attention\.output\.dense\.weight", r"\d\.output\.dense\.weight"], 4
    if name == "gpt2":  # pre-LN
        cfg = T.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=VOCAB, n_positions=32)
        return T.GPT2Model(cfg), "text", [r"attn\.c_proj\.weight", r"mlp\.c_proj\.weight"], 4
    if name == "llama":  # RMSNorm, SwiGLU, rotary, grouped-query attention
        cfg = T.LlamaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            intermediate_size=32, vocab_size=VOCAB, max_position_embeddings=32)
        return T.LlamaModel(cfg), "text", [r"o_proj\.weight", r"down_proj\.weight"], 4
    if name == "vit":
        cfg = T.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                          image_size=8, patch_size=4, num_channels=3)
        # (module names differ between transformers versions)
        return T.ViTModel(cfg), "image", [r"attention\.(o_proj|output\.dense)\.weight",
                                          r"(mlp\.fc2|\d\.output\.dense)\.weight"], 4
    if name == "convnext":  # one GeZIG per block: dwconv, LayerNorm, MLP, layer scale
        cfg = T.ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[2, 1], num_stages=2, image_size=16)
        return T.ConvNextModel(cfg), "image", [r"pwconv2\.weight"], 3
    if name == "bart":  # encoder-decoder with cross-attention
        cfg = T.BartConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=VOCAB,
                           max_position_embeddings=32)
        return T.BartModel(cfg), "seq2seq", [r"self_attn\.out_proj\.weight", r"encoder_attn\.out_proj\.weight",
                                             r"fc2\.weight"], 5
    if name == "neox":  # parallel attention + MLP: x + attn(ln1(x)) + mlp(ln2(x))
        cfg = T.GPTNeoXConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                              vocab_size=VOCAB, max_position_embeddings=32, use_parallel_residual=True)
        return T.GPTNeoXModel(cfg), "text", [r"attention\.dense\.weight", r"dense_4h_to_h\.weight"], 4
    if name == "albert":  # one layer applied at every depth: a GeZIG spans every use
        cfg = T.AlbertConfig(hidden_size=16, embedding_size=8, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=32, vocab_size=VOCAB, max_position_embeddings=32)
        return T.AlbertModel(cfg), "text", [r"attention\.dense\.weight", r"ffn_output\.weight"], 2
    if name == "mixer":
        return _Mixer(), "plain", [r"token_mlp\.2\.weight", r"channel_mlp\.2\.weight"], 4
    raise ValueError(name)


#: Parameter names of the layers of pre-LN models (all inside some sub-layer's group).
_ALL_IN_GROUP = {"gpt2": r"\.h\.\d+\.", "llama": r"layers\.\d+\.", "neox": r"layers\.\d+\.", "mixer": r"blocks\.\d+\."}

_CACHE: dict[str, bytes] = {}


def _export(name: str) -> tuple[ir.Model, list[str], int]:
    module, kind, patterns, expected = _build(name)
    if name not in _CACHE:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        torch.manual_seed(0)
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = "eager"
        wrapped = _Wrapper(module.eval(), kind).eval()
        if kind in ("image", "plain"):
            ex = (torch.randn(2, 3, *(16, 16) if name == "convnext" else (8, 8)),)
        else:
            ids = torch.randint(0, VOCAB, (2, 5))
            ex = (ids, torch.ones_like(ids))
        model = otoir.load(wrapped, ex)
        PassManager.from_text("to-inference").run(model)
        _CACHE[name] = ir.to_proto(model).SerializeToString()
    return ir.from_proto(__import__("onnx").load_from_string(_CACHE[name])), patterns, expected


def _feeds(model: ir.Model, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    inputs = [v for v in model.graph.inputs if v not in set(model.graph.initializers.values())]
    for k, v in enumerate(inputs):
        dims = [d if isinstance(d, int) else (2 if i == 0 else 5) for i, d in enumerate(v.shape.dims)]
        if v.dtype == ir.DataType.INT64:
            if k == 0:
                feeds[v.name] = rng.integers(0, VOCAB, dims).astype(np.int64)
            else:  # the attention mask: one padded position
                mask = np.ones(dims, np.int64)
                mask[0, -1] = 0
                feeds[v.name] = mask
        else:
            feeds[v.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def _numel(model: ir.Model) -> int:
    return sum(v.const_value.size for v in model.graph.initializers.values() if v.const_value is not None)


MODELS = ["bert", "gpt2", "llama", "vit", "convnext", "bart", "neox", "albert", "mixer"]


@pytest.mark.parametrize("name", MODELS)
def test_every_sublayer_is_a_gezig_and_erasing_is_exact(name):
    model, patterns, expected = _export(name)
    p = AnalysisManager(model).get(GeZIGPartition)
    in_group = {x for g in p.groups for x in g.meta["params"]}
    # Every sub-layer's output projection is in a GeZIG (the whole sub-layer's own variables are).
    projections = [n for n in model.graph.initializers if any(re.search(pat, n) for pat in patterns)]
    assert len(projections) >= expected, projections
    assert [n for n in projections if n not in in_group] == []
    assert len(p.groups) >= expected
    # Pre-LN blocks: every variable of a layer (norms, q/k/v — rotary included —, gates) belongs
    # to the group of its sub-layer.
    if name in _ALL_IN_GROUP:
        layer = [n for n in model.graph.initializers if re.search(_ALL_IN_GROUP[name], n)]
        assert layer and [n for n in layer if n not in in_group] == []
    # Oracle: a random valid half zeroed, erased; outputs unchanged, fewer parameters.
    rng = np.random.default_rng(0)
    groups = list(p.groups)
    chosen = select_redundant(p.groups, rng.random(len(groups)).tolist(), max(1, len(groups) // 2))
    assert chosen
    for i in chosen:
        zero_group(model, groups[i])
    feeds = _feeds(model, rng)
    ref = run_ort(model, feeds)
    before, nodes_before = _numel(model), len(model.graph)
    PassManager.from_text("eliminate-dead-branches,cleanup").run(model)
    got = run_ort(model, feeds)
    assert _numel(model) < before and len(model.graph) < nodes_before
    for a, b in zip(ref, got, strict=True):
        assert a.shape == b.shape
        scale = max(float(np.abs(a).max()), 1e-6)
        assert float(np.abs(a - b).max()) <= 1e-4 * scale


@pytest.mark.parametrize("name", ["llama", "bart"])
def test_erasing_every_sublayer_leaves_the_residual_stream(name):
    """All sub-layers zero: every residual ``x + 0`` becomes ``x``; only embeddings and norms remain."""
    model, patterns, _ = _export(name)
    p = AnalysisManager(model).get(GeZIGPartition)
    sub = [g for g in p.groups if any(re.search(pat, x) for pat in patterns for x in g.meta["params"])]
    assert p.checker.check(sub).valid
    for g in sub:
        zero_group(model, g)
    feeds = _feeds(model, np.random.default_rng(1))
    ref = run_ort(model, feeds)
    PassManager.from_text("eliminate-dead-branches,cleanup").run(model)
    assert not [n for n in model.graph.initializers if any(re.search(pat, n) for pat in patterns)]
    assert not [n for n in model.graph if n.op_type == "Softmax"]
    got = run_ort(model, feeds)
    for a, b in zip(ref, got, strict=True):
        assert float(np.abs(a - b).max()) <= 1e-4 * max(float(np.abs(a).max()), 1e-6)
