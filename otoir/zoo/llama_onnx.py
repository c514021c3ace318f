"""LLaMA-architecture ONNX graphs built directly (no torch), with external data.

:func:`build_llama` writes ``<path>`` and ``<path>.data`` for a decoder-only LLaMA: token
embedding, ``layers`` × (RMSNorm, attention with rotary embeddings, grouped-query K/V heads
repeated by ``Expand``, causal mask, output projection, residual; RMSNorm, SwiGLU MLP,
residual), final RMSNorm and ``lm_head``. RMSNorm is the decomposition torch exports
(``Pow, ReduceMean, Add eps, Sqrt, Div, Mul weight``); linear weights are stored ``(in, out)``
as the exporter stores them for ``MatMul``. Input: ``input_ids`` (batch, ``seq``) int64 with a
symbolic batch and a fixed sequence length, as the torch exporter traces it (the position and
mask tables are sliced to it by a shape sub-graph); output: ``logits`` (batch, seq, vocab).

The weights go to one external data file, written tensor by tensor through ``np.memmap``:
``weights="random"`` (normal, std 0.02, seeded), ``"constant"`` (every entry 0.02: cheap to
write at any size, all channels non-zero) or ``"sparse"`` (a file of holes made by ``truncate``:
zeros that take no disk and no time, for analyses that never read weight values). Shapes of the
presets: :data:`SHAPES` (TinyLlama-1.1B and LLaMA-7B). The 7B model is 27 GB of fp32.

Example:
    >>> from otoir.zoo.llama_onnx import build_llama, SHAPES
    >>> build_llama("/tmp/tiny.onnx", **SHAPES["tiny"], weights="random")   # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

__all__ = ["SHAPES", "LlamaShape", "build_llama", "weight_names"]

OPSET = 17


@dataclass(frozen=True)
class LlamaShape:
    """The size of a LLaMA model."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int = 32000
    max_positions: int = 2048

    @property
    def head_dim(self) -> int:
        """Width of one head."""
        return self.hidden // self.heads

    def params(self) -> int:
        """Trainable parameters (norm gains, projections, embedding and lm_head; not the rotary/mask tables)."""
        h, f, kvw = self.hidden, self.ffn, self.kv_heads * self.head_dim
        per_layer = 2 * h + h * h * 2 + 2 * h * kvw + 3 * h * f
        return self.layers * per_layer + 2 * self.vocab * h + h


#: Presets: TinyLlama-1.1B, LLaMA-7B, and a tiny one for tests.
SHAPES: dict[str, dict] = {
    "tinyllama-1.1b": dict(layers=22, hidden=2048, ffn=5632, heads=32, kv_heads=4, vocab=32000, max_positions=2048),
    "llama-7b": dict(layers=32, hidden=4096, ffn=11008, heads=32, kv_heads=32, vocab=32000, max_positions=2048),
    "tiny": dict(layers=2, hidden=32, ffn=64, heads=4, kv_heads=2, vocab=64, max_positions=16),
}


def weight_names(layer: int) -> dict[str, str]:
    """The initializer names of one layer's weights, by role."""
    p = f"model.layers.{layer}."
    return {r: p + n for r, n in (
        ("input_norm", "input_layernorm.weight"), ("q", "self_attn.q_proj.weight"), ("k", "self_attn.k_proj.weight"),
        ("v", "self_attn.v_proj.weight"), ("o", "self_attn.o_proj.weight"),
        ("post_norm", "post_attention_layernorm.weight"), ("gate", "mlp.gate_proj.weight"),
        ("up", "mlp.up_proj.weight"), ("down", "mlp.down_proj.weight"))}


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.tensors: list[tuple[str, tuple[int, ...], str]] = []  # name, shape, kind
        self.consts: list[onnx.TensorProto] = []
        self._n = 0

    def op(self, op_type: str, inputs: Sequence[str], name: str, n_out: int = 1, **attrs) -> list[str]:
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs

    def const(self, name: str, value: np.ndarray) -> str:
        self.consts.append(onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], kind: str = "weight") -> str:
        self.tensors.append((name, shape, kind))
        return name


def _rms_norm(b: _Builder, x: str, weight: str, name: str, eps: str) -> str:
    sq = b.op("Pow", [x, "c.two"], f"{name}/Pow")[0]
    ms = b.op("ReduceMean", [sq], f"{name}/ReduceMean", axes=[-1], keepdims=1)[0]
    ms = b.op("Add", [ms, eps], f"{name}/Add")[0]
    rt = b.op("Sqrt", [ms], f"{name}/Sqrt")[0]
    y = b.op("Div", [x, rt], f"{name}/Div")[0]
    return b.op("Mul", [weight, y], f"{name}/Mul")[0]


def _rotary(b: _Builder, x: str, cos: str, sin: str, half: int, name: str) -> str:
    """x * cos + rotate_half(x) * sin over the last axis (head_dim)."""
    x1 = b.op("Slice", [x, "c.zero1", f"c.half{half}", "c.minus1"], f"{name}/Slice")[0]
    x2 = b.op("Slice", [x, f"c.half{half}", "c.big", "c.minus1"], f"{name}/Slice_1")[0]
    nx2 = b.op("Neg", [x2], f"{name}/Neg")[0]
    rot = b.op("Concat", [nx2, x1], f"{name}/Concat", axis=-1)[0]
    a = b.op("Mul", [x, cos], f"{name}/Mul")[0]
    c = b.op("Mul", [rot, sin], f"{name}/Mul_1")[0]
    return b.op("Add", [a, c], f"{name}/Add")[0]


def _graph(s: LlamaShape) -> _Builder:
    b = _Builder()
    h, hd, nh, nkv = s.hidden, s.head_dim, s.heads, s.kv_heads
    rep = nh // nkv
    b.const("c.two", np.array(2.0, np.float32))
    b.const("c.eps", np.array(1e-5, np.float32))
    b.const("c.scale", np.array(1.0 / math.sqrt(hd), np.float32))
    b.const("c.zero1", np.array([0], np.int64))
    b.const("c.one1", np.array([1], np.int64))
    b.const("c.minus1", np.array([-1], np.int64))
    b.const("c.big", np.array([2**62], np.int64))
    b.const(f"c.half{hd // 2}", np.array([hd // 2], np.int64))
    b.const("c.q_shape", np.array([0, 0, nh, hd], np.int64))
    b.const("c.kv_shape", np.array([0, 0, nkv, hd], np.int64))
    b.const("c.rep", np.array([1, 1, rep, 1, 1], np.int64))
    b.const("c.kv_rep_shape", np.array([0, nh, -1, hd], np.int64))
    b.const("c.ctx_shape", np.array([0, 0, h], np.int64))
    b.const("c.unsq2", np.array([2], np.int64))
    b.const("c.axes01", np.array([0, 1], np.int64))
    # position tables (max_positions, head_dim) and the additive causal mask (max, max)
    b.weight("rotary.cos", (s.max_positions, hd), "cos")
    b.weight("rotary.sin", (s.max_positions, hd), "sin")
    b.weight("causal_mask", (s.max_positions, s.max_positions), "mask")
    ids_shape = b.op("Shape", ["input_ids"], "Shape")[0]
    seq = b.op("Slice", [ids_shape, "c.one1", "c.big"], "Shape/Slice")[0]  # [T]
    seq2 = b.op("Concat", [seq, seq], "Shape/Concat", axis=0)[0]
    cos = b.op("Slice", ["rotary.cos", "c.zero1", seq], "rotary/Slice_cos")[0]  # (T, hd)
    sin = b.op("Slice", ["rotary.sin", "c.zero1", seq], "rotary/Slice_sin")[0]
    mask = b.op("Slice", ["causal_mask", b.const("c.zero2", np.array([0, 0], np.int64)), seq2, "c.axes01"],
                "mask/Slice")[0]  # (T, T)
    x = b.op("Gather", [b.weight("model.embed_tokens.weight", (s.vocab, h)), "input_ids"], "embed_tokens/Gather")[0]
    for i in range(s.layers):
        w = weight_names(i)
        for role, shape in (("input_norm", (h,)), ("q", (h, h)), ("k", (h, nkv * hd)), ("v", (h, nkv * hd)),
                            ("o", (h, h)), ("post_norm", (h,)), ("gate", (h, s.ffn)), ("up", (h, s.ffn)),
                            ("down", (s.ffn, h))):
            b.weight(w[role], shape, "norm" if "norm" in role else "weight")
        L = f"layers.{i}"
        hn = _rms_norm(b, x, w["input_norm"], f"{L}/input_layernorm", "c.eps")
        q = b.op("MatMul", [hn, w["q"]], f"{L}/self_attn/q_proj/MatMul")[0]
        k = b.op("MatMul", [hn, w["k"]], f"{L}/self_attn/k_proj/MatMul")[0]
        v = b.op("MatMul", [hn, w["v"]], f"{L}/self_attn/v_proj/MatMul")[0]
        q = b.op("Reshape", [q, "c.q_shape"], f"{L}/self_attn/Reshape_q")[0]
        k = b.op("Reshape", [k, "c.kv_shape"], f"{L}/self_attn/Reshape_k")[0]
        v = b.op("Reshape", [v, "c.kv_shape"], f"{L}/self_attn/Reshape_v")[0]
        q = b.op("Transpose", [q], f"{L}/self_attn/Transpose_q", perm=[0, 2, 1, 3])[0]  # (B, nh, T, hd)
        k = b.op("Transpose", [k], f"{L}/self_attn/Transpose_k", perm=[0, 2, 1, 3])[0]  # (B, nkv, T, hd)
        v = b.op("Transpose", [v], f"{L}/self_attn/Transpose_v", perm=[0, 2, 1, 3])[0]
        q = _rotary(b, q, cos, sin, hd // 2, f"{L}/self_attn/rotary_q")
        k = _rotary(b, k, cos, sin, hd // 2, f"{L}/self_attn/rotary_k")
        if rep > 1:  # grouped-query attention: each K/V head serves `rep` query heads
            ks, vs = [], []
            for t, name in ((k, "k"), (v, "v")):
                u = b.op("Unsqueeze", [t, "c.unsq2"], f"{L}/self_attn/Unsqueeze_{name}")[0]
                e = b.op("Expand", [u, "c.rep"], f"{L}/self_attn/Expand_{name}")[0]
                (ks if name == "k" else vs).append(
                    b.op("Reshape", [e, "c.kv_rep_shape"], f"{L}/self_attn/Reshape_rep_{name}")[0])
            k, v = ks[0], vs[0]
        kt = b.op("Transpose", [k], f"{L}/self_attn/Transpose_kt", perm=[0, 1, 3, 2])[0]
        sc = b.op("MatMul", [q, kt], f"{L}/self_attn/MatMul_qk")[0]
        sc = b.op("Mul", [sc, "c.scale"], f"{L}/self_attn/Mul_scale")[0]
        sc = b.op("Add", [sc, mask], f"{L}/self_attn/Add_mask")[0]
        p = b.op("Softmax", [sc], f"{L}/self_attn/Softmax", axis=-1)[0]
        ctx = b.op("MatMul", [p, v], f"{L}/self_attn/MatMul_pv")[0]
        ctx = b.op("Transpose", [ctx], f"{L}/self_attn/Transpose_ctx", perm=[0, 2, 1, 3])[0]
        ctx = b.op("Reshape", [ctx, "c.ctx_shape"], f"{L}/self_attn/Reshape_ctx")[0]
        o = b.op("MatMul", [ctx, w["o"]], f"{L}/self_attn/o_proj/MatMul")[0]
        x = b.op("Add", [x, o], f"{L}/Add")[0]
        hn = _rms_norm(b, x, w["post_norm"], f"{L}/post_attention_layernorm", "c.eps")
        g = b.op("MatMul", [hn, w["gate"]], f"{L}/mlp/gate_proj/MatMul")[0]
        u = b.op("MatMul", [hn, w["up"]], f"{L}/mlp/up_proj/MatMul")[0]
        sg = b.op("Sigmoid", [g], f"{L}/mlp/act/Sigmoid")[0]
        a = b.op("Mul", [g, sg], f"{L}/mlp/act/Mul")[0]
        m = b.op("Mul", [a, u], f"{L}/mlp/Mul")[0]
        d = b.op("MatMul", [m, w["down"]], f"{L}/mlp/down_proj/MatMul")[0]
        x = b.op("Add", [x, d], f"{L}/Add_1")[0]
    x = _rms_norm(b, x, b.weight("model.norm.weight", (h,), "norm"), "norm", "c.eps")
    b.nodes.append(helper.make_node("MatMul", [x, b.weight("lm_head.weight", (h, s.vocab))], ["logits"],
                                    name="lm_head/MatMul"))
    return b


def _fill(kind: str, shape: tuple[int, ...], weights: str, rng: np.random.Generator, max_positions: int,
          head_dim: int) -> np.ndarray | None:
    """The values of one tensor, or None to leave the file's zeros (holes) in place."""
    if kind in ("cos", "sin"):
        if weights == "sparse":
            return None
        inv = 1.0 / (10000 ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
        ang = np.outer(np.arange(max_positions), inv)
        ang = np.concatenate([ang, ang], axis=-1)
        return (np.cos(ang) if kind == "cos" else np.sin(ang)).astype(np.float32)
    if kind == "mask":
        if weights == "sparse":
            return None
        return np.triu(np.full(shape, -1e9, np.float32), k=1)
    if weights == "sparse":
        return None
    if kind == "norm":
        return np.ones(shape, np.float32) if weights == "constant" else \
            (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if weights == "constant":
        return np.full(shape, 0.02, np.float32)
    return (0.02 * rng.standard_normal(shape)).astype(np.float32)


def build_llama(path: str | os.PathLike, *, layers: int, hidden: int, ffn: int, heads: int, kv_heads: int,
                vocab: int = 32000, max_positions: int = 2048, seq: int = 16, weights: str = "sparse",
                seed: int = 0) -> LlamaShape:
    """Writes a LLaMA-architecture model to ``path`` with its weights in ``<path>.data``.

    Args:
        path: The ``.onnx`` file to write (its directory must exist).
        layers, hidden, ffn, heads, kv_heads, vocab, max_positions: The model's size
            (:data:`SHAPES` has presets); ``heads`` must divide ``hidden`` and ``kv_heads`` divide ``heads``.
        seq: The sequence length of ``input_ids`` (at most ``max_positions``).
        weights: ``random``, ``constant`` or ``sparse`` (see the module docstring).
        seed: Seed of ``random`` weights.

    Returns:
        The :class:`LlamaShape` written.

    Raises:
        ValueError: Sizes that do not divide, or an unknown ``weights``.
    """
    if weights not in ("random", "constant", "sparse"):
        raise ValueError(f"weights must be random, constant or sparse, got {weights!r}")
    if not 1 <= seq <= max_positions:
        raise ValueError(f"seq={seq} must be in 1..max_positions={max_positions}")
    if hidden % heads or heads % kv_heads or (hidden // heads) % 2:
        raise ValueError(f"heads={heads} must divide hidden={hidden} into an even head_dim, kv_heads={kv_heads} "
                         "must divide heads")
    s = LlamaShape(layers, hidden, ffn, heads, kv_heads, vocab, max_positions)
    b = _graph(s)
    path = os.fspath(path)
    data_name = os.path.basename(path) + ".data"
    data_path = os.path.join(os.path.dirname(os.path.abspath(path)), data_name)
    offsets, off = [], 0
    for _, shape, _ in b.tensors:
        offsets.append(off)
        off += int(np.prod(shape)) * 4
        off = (off + 4095) // 4096 * 4096  # page-aligned tensors: each one can be memory-mapped
    with open(data_path, "wb") as f:
        f.truncate(off)  # a sparse file: holes read as zeros
    rng = np.random.default_rng(seed)
    inits = []
    for (name, shape, kind), start in zip(b.tensors, offsets):
        values = _fill(kind, shape, weights, rng, max_positions, s.head_dim)
        if values is not None:
            mm = np.memmap(data_path, dtype=np.float32, mode="r+", offset=start, shape=shape)
            mm[...] = values
            mm.flush()
            del mm
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", data_name), ("offset", str(start)), ("length", str(int(np.prod(shape)) * 4))):
            e = t.external_data.add()
            e.key, e.value = k, v
        inits.append(t)
    graph = helper.make_graph(
        b.nodes, "llama",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", seq])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", seq, vocab])],
        initializer=[*b.consts, *inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10,
                              producer_name="otoir.zoo.llama_onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return s
