"""The transformer test set: Hugging Face ``transformers`` architectures from tiny configs.

Every model is built from a small config with random weights (nothing is downloaded; set
``HF_HUB_OFFLINE=1``), wrapped so that its forward takes the graph inputs positionally
(token models get an explicit ``attention_mask``: a causal LM's packed-sequence check otherwise
uses ``aten::diff``, which the ONNX exporter cannot export) and returns one tensor, and exported
in eval form (no Dropout). The set covers encoder-only (post-LN), decoder-only (pre-LN, RMSNorm,
fused projections, grouped-query attention, MoE), encoder–decoder, state-space (Mamba), vision
(ViT, Swin, CLIP, SegFormer, ConvNeXt, PoolFormer, MobileNetV2) and audio (Whisper encoder,
wav2vec2) families.

Example:
    >>> from otoir.zoo.hf import HF_MODELS, export
    >>> model = export("llama")            # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnx_ir as ir
    import torch

__all__ = ["HF_MODELS", "HFEntry", "build", "export", "export_case", "names"]

_VOCAB = 96
_SEQ = 8


class HFEntry(NamedTuple):
    """One model of the set.

    Attributes:
        make: ``make(transformers) -> (module, example_inputs)``; ``module`` takes the inputs
            positionally and returns one tensor.
        family: What the architecture exercises (one line).
        layer_norm: ``pre``, ``post``, ``rms``, ``none`` or ``conv``: the normalisation around
            the residual stream (what hidden-size pruning has to deal with).
    """

    make: Callable[[Any], tuple[Any, tuple[Any, ...]]]
    family: str
    layer_norm: str


def _wrap(model: Any, names: tuple[str, ...], **fixed: Any) -> Any:
    """A module whose forward takes ``names`` positionally and returns the first output tensor."""
    import torch

    class _FirstOutput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.input_names = names

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            out = self.model(**dict(zip(names, args)), **fixed, return_dict=False)
            return out[0]

    return _FirstOutput().eval()


def _tokens(batch: int = 2, seq: int = _SEQ, vocab: int = _VOCAB) -> tuple[Any, Any]:
    import torch

    ids = torch.randint(3, vocab, (batch, seq))
    return ids, torch.ones(batch, seq, dtype=torch.int64)


def _text(cls: str, cfg: Any, *, cache: bool = False) -> Callable[[Any], tuple[Any, tuple[Any, ...]]]:
    def make(t: Any) -> tuple[Any, tuple[Any, ...]]:
        model = getattr(t, cls)(cfg(t)).eval()
        fixed = {"use_cache": False} if cache else {}
        return _wrap(model, ("input_ids", "attention_mask"), **fixed), _tokens()

    return make


def _image(cls: str, cfg: Any, *, channels: int = 3, side: int = 32, key: str = "pixel_values"
           ) -> Callable[[Any], tuple[Any, tuple[Any, ...]]]:
    def make(t: Any) -> tuple[Any, tuple[Any, ...]]:
        import torch

        model = getattr(t, cls)(cfg(t)).eval()
        return _wrap(model, (key,)), (torch.randn(2, channels, side, side),)

    return make


def _bart(t: Any) -> tuple[Any, tuple[Any, ...]]:
    cfg = t.BartConfig(vocab_size=_VOCAB, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32)
    model = t.BartModel(cfg).eval()
    ids, mask = _tokens()
    dec, _ = _tokens(seq=_SEQ - 2)
    return _wrap(model, ("input_ids", "attention_mask", "decoder_input_ids"), use_cache=False), (ids, mask, dec)


def _whisper(t: Any) -> tuple[Any, tuple[Any, ...]]:
    import torch

    cfg = t.WhisperConfig(vocab_size=_VOCAB, num_mel_bins=8, d_model=32, encoder_layers=2, encoder_attention_heads=4,
                          encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64,
                          max_source_positions=16, max_target_positions=16, pad_token_id=0, bos_token_id=1,
                          eos_token_id=2, decoder_start_token_id=1)
    encoder = t.WhisperModel(cfg).get_encoder().eval()
    return _wrap(encoder, ("input_features",)), (torch.randn(2, 8, 32),)


def _wav2vec2(t: Any) -> tuple[Any, tuple[Any, ...]]:
    import torch

    cfg = t.Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                           conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8,
                           num_conv_pos_embedding_groups=4, num_labels=3, do_stable_layer_norm=True,
                           feat_extract_norm="layer", vocab_size=_VOCAB)
    model = t.Wav2Vec2ForSequenceClassification(cfg).eval()
    return _wrap(model, ("input_values",)), (torch.randn(2, 400),)


def _mamba(t: Any) -> tuple[Any, tuple[Any, ...]]:
    cfg = t.MambaConfig(vocab_size=_VOCAB, hidden_size=32, state_size=4, num_hidden_layers=2, expand=2, conv_kernel=4,
                        time_step_rank=4)
    model = t.MambaForCausalLM(cfg).eval()
    ids, _ = _tokens()
    return _wrap(model, ("input_ids",), use_cache=False), (ids,)


_LM = dict(vocab_size=_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
           max_position_embeddings=64)

#: name -> entry. Configs are tiny (hidden 32, two layers where the model allows) so that the whole
#: set exports and runs its oracles in a few minutes on two CPU cores.
HF_MODELS: dict[str, HFEntry] = {
    "bert": HFEntry(_text("BertForSequenceClassification", lambda t: t.BertConfig(
        vocab_size=_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32)), "encoder, post-LN, GELU, token-type embeddings", "post"),
    "roberta": HFEntry(_text("RobertaForSequenceClassification", lambda t: t.RobertaConfig(
        vocab_size=_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=40)), "encoder, post-LN, padding-offset positions", "post"),
    "distilbert": HFEntry(_text("DistilBertForSequenceClassification", lambda t: t.DistilBertConfig(
        vocab_size=_VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=32)),
        "encoder, post-LN, no token types", "post"),
    "albert": HFEntry(_text("AlbertForSequenceClassification", lambda t: t.AlbertConfig(
        vocab_size=_VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32)), "encoder, one layer shared across depth", "post"),
    "bart": HFEntry(_bart, "encoder-decoder, cross-attention, post-LN", "post"),
    "t5_encoder": HFEntry(_text("T5EncoderModel", lambda t: t.T5Config(
        vocab_size=_VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8)),
        "encoder, RMSNorm (T5LayerNorm), relative position bias", "rms"),
    "gpt2": HFEntry(_text("GPT2LMHeadModel", lambda t: t.GPT2Config(
        vocab_size=_VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32), cache=True),
        "decoder, pre-LN, Conv1D, tied lm_head", "pre"),
    "llama": HFEntry(_text("LlamaForCausalLM", lambda t: t.LlamaConfig(**_LM), cache=True),
                     "decoder, RMSNorm, SwiGLU, rotary", "rms"),
    "qwen2": HFEntry(_text("Qwen2ForCausalLM", lambda t: t.Qwen2Config(**{**_LM, "num_key_value_heads": 2}),
                           cache=True), "decoder, grouped-query attention, qkv bias", "rms"),
    "mistral": HFEntry(_text("MistralForCausalLM", lambda t: t.MistralConfig(
        **{**_LM, "num_key_value_heads": 2, "sliding_window": None}), cache=True),
        "decoder, grouped-query attention", "rms"),
    "phi3": HFEntry(_text("Phi3ForCausalLM", lambda t: t.Phi3Config(
        **{**_LM, "pad_token_id": 0}), cache=True), "decoder, fused qkv and gate_up projections", "rms"),
    "mixtral": HFEntry(_text("MixtralForCausalLM", lambda t: t.MixtralConfig(
        **{**_LM, "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": None,
           "experts_implementation": "batched_mm"}),
        cache=True), "decoder, mixture of experts (TopK routing)", "rms"),
    "mamba": HFEntry(_mamba, "state space (selective scan)", "rms"),
    "vit": HFEntry(_image("ViTForImageClassification", lambda t: t.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=5)), "vision, pre-LN, class token", "pre"),
    "swin": HFEntry(_image("SwinForImageClassification", lambda t: t.SwinConfig(
        image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=5)),
        "vision, shifted windows, patch merging", "pre"),
    "clip_vision": HFEntry(_image("CLIPVisionModel", lambda t: t.CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64)), "vision, pre-LN, quick-GELU", "pre"),
    "segformer": HFEntry(_image("SegformerForSemanticSegmentation", lambda t: t.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=32, num_labels=3)),
        "vision, efficient attention (spatial reduction), Mix-FFN", "pre"),
    "convnext": HFEntry(_image("ConvNextForImageClassification", lambda t: t.ConvNextConfig(
        num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)), "vision, depthwise conv, LayerNorm2d, layer scale",
        "conv"),
    "poolformer": HFEntry(_image("PoolFormerForImageClassification", lambda t: t.PoolFormerConfig(
        hidden_sizes=[8, 16], depths=[1, 1], num_encoder_blocks=2, patch_sizes=[7, 3], strides=[4, 2],
        padding=[2, 1], num_labels=5)), "vision, MetaFormer (pooling mixer, GroupNorm(1)), MLP-Mixer-like", "conv"),
    "mobilenet_v2": HFEntry(_image("MobileNetV2ForImageClassification", lambda t: t.MobileNetV2Config(
        image_size=32, depth_multiplier=0.25, num_labels=5, tf_padding=True, initializer_range=0.3)),
        "vision, TF 'same' padding (Pad)", "none"),
    "opt": HFEntry(_text("OPTForCausalLM", lambda t: t.OPTConfig(
        vocab_size=_VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=32), cache=True),
        "decoder, pre-LN, ReLU, learned positions with an offset", "pre"),
    "gpt_neox": HFEntry(_text("GPTNeoXForCausalLM", lambda t: t.GPTNeoXConfig(**_LM), cache=True),
                        "decoder, parallel attention + MLP, fused interleaved qkv, partial rotary", "pre"),
    "falcon": HFEntry(_text("FalconForCausalLM", lambda t: t.FalconConfig(
        vocab_size=_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, new_decoder_architecture=True,
        num_kv_heads=2), cache=True), "decoder, parallel blocks, grouped fused qkv", "pre"),
    "bloom": HFEntry(_text("BloomForCausalLM", lambda t: t.BloomConfig(
        vocab_size=_VOCAB, hidden_size=32, n_layer=2, n_head=4), cache=True),
        "decoder, ALiBi, fused qkv, embedding LayerNorm", "pre"),
    "gptj": HFEntry(_text("GPTJForCausalLM", lambda t: t.GPTJConfig(
        vocab_size=_VOCAB, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64), cache=True),
        "decoder, parallel attention + MLP, interleaved partial rotary", "pre"),
    "phi": HFEntry(_text("PhiForCausalLM", lambda t: t.PhiConfig(**{**_LM, "partial_rotary_factor": 0.5}), cache=True),
                   "decoder, parallel attention + MLP, partial rotary", "pre"),
    "gemma2": HFEntry(_text("Gemma2ForCausalLM", lambda t: t.Gemma2Config(
        **{**_LM, "head_dim": 8, "num_key_value_heads": 2}), cache=True),
        "decoder, RMSNorm (1 + w), sandwich norms, logit soft-capping", "rms"),
    "qwen3": HFEntry(_text("Qwen3ForCausalLM", lambda t: t.Qwen3Config(
        **{**_LM, "num_key_value_heads": 2, "head_dim": 8}), cache=True), "decoder, per-head q/k RMSNorm", "rms"),
    "electra": HFEntry(_text("ElectraForSequenceClassification", lambda t: t.ElectraConfig(
        vocab_size=_VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, initializer_range=0.2)),
        "encoder, post-LN, embedding projection", "post"),
    "deberta_v2": HFEntry(_text("DebertaV2ForSequenceClassification", lambda t: t.DebertaV2Config(
        vocab_size=_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, initializer_range=0.2)), "encoder, disentangled relative attention", "post"),
    "deit": HFEntry(_image("DeiTForImageClassification", lambda t: t.DeiTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=5)), "vision, class and distillation tokens", "pre"),
    "beit": HFEntry(_image("BeitForImageClassification", lambda t: t.BeitConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=5, use_relative_position_bias=True)),
        "vision, relative position bias, layer scale, mean pooling", "pre"),
    "dinov2": HFEntry(_image("Dinov2Model", lambda t: t.Dinov2Config(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2)),
        "vision, layer scale, interpolated position embeddings", "pre"),
    "convnextv2": HFEntry(_image("ConvNextV2ForImageClassification", lambda t: t.ConvNextV2Config(
        num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)),
        "vision, global response normalisation (GRN)", "conv"),
    "resnet": HFEntry(_image("ResNetForImageClassification", lambda t: t.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=5)), "vision, bottleneck ResNet", "none"),
    "regnet": HFEntry(_image("RegNetForImageClassification", lambda t: t.RegNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8, num_labels=5)),
        "vision, grouped convolutions, squeeze-and-excitation", "none"),
    "bit": HFEntry(_image("BitForImageClassification", lambda t: t.BitConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_groups=4, num_labels=5)),
        "vision, weight-standardized convolutions, GroupNorm (BiT / ResNetV2)", "none"),
    "whisper_encoder": HFEntry(_whisper, "audio encoder, pre-LN, conv stem", "pre"),
    "wav2vec2": HFEntry(_wav2vec2, "audio, conv feature extractor, stable-LN encoder", "pre"),
}


def names() -> list[str]:
    """The names of the set, in table order."""
    return list(HF_MODELS)


def build(name: str, seed: int = 0) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """Builds model ``name`` with random weights (seeded) and its example inputs.

    Raises:
        KeyError: ``name`` is not in :data:`HF_MODELS`.
    """
    if name not in HF_MODELS:
        raise KeyError(f"unknown transformer set model {name!r} (known: {', '.join(HF_MODELS)})")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    return HF_MODELS[name].make(transformers)


def export(name: str, seed: int = 0) -> ir.Model:
    """Builds ``name`` and exports it in eval form, then runs ``to-inference`` (no Dropout left).

    Graph inputs are named after the forward's arguments (``input_ids``, ``attention_mask``,
    ``pixel_values``, …); the output is ``output``.
    """
    return export_case(name, seed)[0]


def export_case(name: str, seed: int = 0) -> tuple[ir.Model, dict[str, np.ndarray]]:
    """:func:`export` and realistic inputs for it (another draw than the traced example).

    Token ids are drawn from the vocabulary (not the small integers of
    :func:`otoir.runtime.random_feeds`), attention masks are ones with the last position of
    the second sequence padded, images and audio are standard normal.
    """
    from otoir.frontends.torch_export import export_torch
    from otoir.infra.pass_manager import PassManager

    module, inputs = build(name, seed)
    names_ = list(module.input_names)
    model = export_torch(module, inputs, training=False, input_names=names_, output_names=["output"])
    PassManager.from_text("to-inference").run(model)
    rng = np.random.default_rng(seed + 1)
    feeds = {}
    for n, x in zip(names_, inputs):
        shape = tuple(x.shape)
        if n == "attention_mask":
            m = np.ones(shape, np.int64)
            m[-1, -1] = 0
            feeds[n] = m
        elif n.endswith("input_ids"):
            feeds[n] = rng.integers(3, _VOCAB, shape).astype(np.int64)
        else:
            feeds[n] = rng.standard_normal(shape).astype(np.float32)
    return model, feeds
