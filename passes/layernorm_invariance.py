"""``layernorm-invariance``: make a pre-LN transformer's LayerNorms centring-free (RMSNorm form).

A LayerNorm over the hidden axis is not zero-invariant: removing hidden channels changes its
mean and variance, so the hidden (residual-stream) size of a LayerNorm model is never exactly
prunable. In a *pre-LN* transformer the residual stream is written only by linear maps
(embedding lookups, learned position embeddings, ViT's patch convolution and class token, the
output projections of the attention and MLP sub-layers) and read only by LayerNorms. Like SliceGPT's "computational invariance", this pass then

* centres every writer: the rows of each embedding table and the output features of each
  writer's weight and bias get their mean over the hidden axis subtracted, so the stream is
  always mean-zero and LayerNorm's centring is a no-op;
* replaces each LayerNorm by the RMSNorm it has become, ``x / sqrt(mean(x²) + eps)``, spelled
  out as ``Pow, ReduceMean, Add, Sqrt, Div`` (any opset), whose hidden-size groups are exact
  (the ZIG analysis and ``prune-channels`` fold the removed share into eps and the gain);
* absorbs the LayerNorm's scale and bias into its readers when every reader is a linear layer
  with its own weight (``W <- diag(γ) W``, ``b <- b + β W``); otherwise they stay as ``Mul``
  and ``Add`` after the normalisation.

A writer that is not linear (Whisper's ``GELU(conv)`` stem, CLIP's ``pre_layrnorm`` whose
``γ⊙n + β`` is not mean-zero), or whose weight is used elsewhere too (BART's embedding table
shared by the encoder and the decoder), cannot be centred by editing weights; with ``centre-nonlinear``
(default) its output ``v`` is replaced by ``v - (v @ u) @ w`` with ``u = 1/n`` (``[n, 1]``) and
``w = 1`` (``[1, n]``): two linear layers of their own weights (2n parameters), exact, and the
hidden channels stay exactly prunable (``u``'s rows and ``w``'s columns are sliced with them).
Spelling it ``v - ReduceMean(v)`` instead would leave a removed channel at ``-mean(v)``, not zero.
Selections along other axes (``Gather``/``Slice`` of a class token or of positions) are part of
the stream; a ``Gather``/``Slice`` of a position table is a writer (the table is centred).

With ``post-ln``, a LayerNorm whose stream is refused (BERT-style post-LN blocks, where the
stream feeds attention directly) gets that centring on its own input instead and becomes an
RMSNorm: the model computes the same, and a removed hidden channel is zero in the centred value,
so it drops out of the mean and the variance alike; the kept channels' statistics are then
exactly what pruning compensates (eps and gain folding), so the hidden-size groups are exact.

An embedding table that is also the output head (GPT-2's ``lm_head = wte``) stays tied: the
head's logits ``y·Eᵀ`` change by ``-(Σ_j y_j)·m`` when the rows of ``E`` lose their means
``m``, so a correction ``ReduceSum(y)·m`` (V extra entries) is added to the logits.

Outputs are unchanged up to float rounding. A stream with any other reader (a post-LN model,
where LayerNorm outputs are themselves the stream and feed attention directly; a classifier on
mean-pooled stream vectors), or that is itself a graph output (``CLIPVisionModel``'s
``last_hidden_state``: centring would change it), is left as it is, with a remark naming the op
or value; its hidden-size groups stay flagged inexact (unless ``post-ln`` centres its LayerNorms).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from otoir.analyses.groups import set_tensor_array
from otoir.analyses.shapes import SENTINEL, StaticShapes
from otoir.infra.passes import Pass, option
from otoir.infra.registry import register_pass
from otoir.surgery.common import new_initializer

__all__ = ["LayernormInvariance", "StreamRefused"]

_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)
_TRANSPARENT = ("Reshape", "Cast", "Identity", "Gather", "Slice")


class StreamRefused(Exception):
    """A residual stream the transform cannot make invariant (the message says which op)."""


def _label(node: ir.Node) -> str:
    return f"{node.op_type} '{node.name}'"


def _is_param(v: ir.Value | None) -> bool:
    """An initializer or a ``Constant`` node's output."""
    if v is None:
        return False
    if v.is_initializer():
        return True
    p = v.producer()
    return p is not None and p.op_type == "Constant"


def _init(v: ir.Value | None) -> ir.Value | None:
    """``v`` when it is an initializer with a value."""
    return v if v is not None and v.is_initializer() and v.const_value is not None else None


def _used_once(v: ir.Value) -> bool:
    """One use (Shape/Size do not count: they read no values) and not a graph output."""
    return sum(1 for u, _ in v.uses() if u.op_type not in ("Shape", "Size")) == 1 and not v.is_graph_output()


@dataclass
class _Weight:
    """An initializer axis to centre (writers) or to scale (readers)."""

    tensor: ir.Value
    axis: int
    lookup: ir.Node | None = None  # the writer's Gather of an embedding table


@dataclass
class _Stream:
    values: set = field(default_factory=set)
    writers: list = field(default_factory=list)  # value produced by a writer
    readers: list = field(default_factory=list)  # LayerNormalization nodes


@register_pass
@dataclass(frozen=True)
class LayernormInvariance(Pass):
    """Centres the residual-stream writers of pre-LN transformers and turns their LayerNorms into RMSNorms."""

    name = "layernorm-invariance"
    summary = ("Pre-LN transformers: absorb LayerNorm centring into the residual-stream writers and its affine "
               "into the linear readers (RMSNorm form: hidden-size groups become exact)")
    statistics = {
        "layernorms-replaced": "LayerNormalization nodes replaced by their RMSNorm form",
        "writers-centred": "residual-stream writers whose output features were centred",
        "readers-absorbed": "LayerNorms whose scale and bias were folded into their linear readers",
        "centrings-inserted": "centrings v - (v @ 1/n) @ 1 inserted after writers that are not linear",
        "tied-heads-corrected": "output heads tied to a centred embedding table (logit correction added)",
        "layernorms-centred-locally": "LayerNorms of refused streams given their own centring (post-ln)",
        "streams-refused": "residual streams left unchanged (a writer or reader that is not linear / LayerNorm)",
    }
    absorb: bool = option(True, "fold each LayerNorm's scale and bias into its readers when all are linear layers")
    post_ln: bool = option(False, "a LayerNorm whose stream is refused (post-LN blocks) gets its own centring "
                                  "v - (v @ 1/n) @ 1 and becomes an RMSNorm: exact, and its hidden-size groups exact")
    centre_nonlinear: bool = option(True, "centre a writer that is not linear (a GELU conv stem, a LayerNorm) as "
                                          "v - (v @ 1/n) @ 1 (2n parameters) instead of refusing its stream")

    def run(self, model, ctx) -> bool:
        shapes = ctx.analyses.get(StaticShapes)
        graph = model.graph
        # last first: a LayerNorm whose output writes a later stream (CLIP's pre_layrnorm) is then
        # named as that stream's writer (and afterwards replaced in its own stream)
        lns = [n for n in graph if n.op_type == "LayerNormalization" and n.domain in ("", "ai.onnx")][::-1]
        seen: set = set()
        changed = False
        for ln in lns:
            if ln in seen:
                continue
            try:
                stream = self._stream(ln, shapes)
            except StreamRefused as exc:
                seen.add(ln)
                ctx.stat("streams-refused", 1, add=True)
                changed |= self._refused(model, [ln], exc, shapes, ctx)
                continue
            seen.update(stream.readers)
            try:
                plan, centring, tied = [], [], []
                for v in stream.writers:
                    try:
                        weights = self._writer(v, stream, shapes)
                        tied_v = self._tied_heads([weights], stream)
                    except StreamRefused as exc:  # not linear, or its weight is used elsewhere too
                        if not self.centre_nonlinear or _hidden_size(v, shapes) is None:
                            raise
                        centring.append((v, exc))
                        continue
                    plan.append(weights)
                    tied.extend(t for t in tied_v if all(t[0] is not h for h, _ in tied))  # a table looked up twice
            except StreamRefused as exc:
                ctx.stat("streams-refused", 1, add=True)
                changed |= self._refused(model, stream.readers, exc, shapes, ctx)
                continue
            for weights in plan:
                for w in weights:
                    _centre(model, w)
            ctx.stat("writers-centred", len(plan), add=True)
            for v, why in centring:
                _insert_centring(graph, v, _hidden_size(v, shapes), _stream_dtype(v, stream))
                ctx.remark(f"centring inserted after '{v.name}' ({why})", v.producer())
            ctx.stat("centrings-inserted", len(centring), add=True)
            for head, means in tied:
                _correct_tied_head(graph, head, means)
            ctx.stat("tied-heads-corrected", len(tied), add=True)
            for r in stream.readers:
                absorbed = self.absorb and _absorb_affine(model, r, shapes)
                _replace_layernorm(graph, r, keep_affine=not absorbed)
                ctx.stat("readers-absorbed", int(absorbed), add=True)
            ctx.stat("layernorms-replaced", len(stream.readers), add=True)
            changed = True
        return changed

    def _refused(self, model: ir.Model, lns: list[ir.Node], why: StreamRefused, shapes: StaticShapes, ctx) -> bool:
        """A refused stream's LayerNorms: left as they are, or (``post-ln``) each centred on its own."""
        changed = False
        for ln in lns:
            n = _hidden_size(ln.inputs[0], shapes) if _is_last_axis_ln(ln, shapes) else None
            exposed = any(o.uses() or o.is_graph_output() for o in ln.outputs[1:])
            if not self.post_ln or n is None or exposed:
                ctx.remark(f"residual stream read by {_label(ln)} left unchanged: {why}", ln)
                continue
            g = ln.inputs[1] if len(ln.inputs) > 1 else None
            dtype = g.dtype.numpy() if g is not None and g.dtype is not None else np.dtype(np.float32)
            _insert_centring(model.graph, ln.inputs[0], n, dtype, only=ln)
            absorbed = self.absorb and _absorb_affine(model, ln, shapes)
            _replace_layernorm(model.graph, ln, keep_affine=not absorbed)
            ctx.stat("layernorms-centred-locally", 1, add=True)
            ctx.stat("readers-absorbed", int(absorbed), add=True)
            ctx.remark(f"{_label(ln)} centred on its own (post-ln; its stream: {why})", ln)
            changed = True
        return changed

    # -- the stream -----------------------------------------------------------------------------
    @staticmethod
    def _stream(ln: ir.Node, shapes: StaticShapes) -> _Stream:
        """The values connected to ``ln``'s input through residual Adds and re-layouts."""
        st = _Stream()
        stack = [ln.inputs[0]]
        hidden = (shapes.shape(ln.inputs[0]) or (None,))[-1]
        while stack:
            v = stack.pop()
            if v is None or v in st.values:
                continue
            st.values.add(v)
            if v.is_graph_output() or v.is_graph_input():
                raise StreamRefused(f"the stream value '{v.name}' is a graph input or output")
            p = v.producer()
            if p is not None and p.op_type == "Add" and not any(_is_param(x) for x in p.inputs):
                stack.extend(p.inputs)
            elif p is not None and p.op_type in _TRANSPARENT and not _is_param(p.inputs[0]) and _keeps_last(p, shapes):
                stack.append(p.inputs[0])
            else:
                st.writers.append(v)
            for user, i in v.uses():
                if user.op_type == "LayerNormalization" and i == 0:
                    if not _is_last_axis_ln(user, shapes) or (shapes.shape(user.inputs[0]) or (None,))[-1] != hidden:
                        raise StreamRefused(f"{_label(user)} does not normalise the last (hidden) axis alone")
                    if any(o.uses() or o.is_graph_output() for o in user.outputs[1:]):
                        raise StreamRefused(f"{_label(user)} exposes its mean or inverse deviation")
                    if user not in st.readers:
                        st.readers.append(user)
                elif user.op_type == "Add" and not any(_is_param(x) for x in user.inputs):
                    stack.append(user.outputs[0])
                elif user.op_type in _TRANSPARENT and i == 0 and _keeps_last(user, shapes):
                    stack.append(user.outputs[0])
                elif user.op_type in ("Shape", "Size") or _shape_only(user):
                    continue  # metadata only: centring does not change it
                else:
                    raise StreamRefused(f"{_label(user)} reads the residual stream (only LayerNorms and residual "
                                        "Adds may: a post-LN model or an unusual block)")
        return st

    @staticmethod
    def _writer(v: ir.Value, st: _Stream, shapes: StaticShapes, axis: int = -1) -> list[_Weight]:
        """The initializer axes whose centring centres ``v`` along ``axis`` (the hidden features).

        Writers: an embedding lookup (Gather of a 2-D table), a linear layer (MatMul with a
        constant right operand, Gemm) or a convolution (ViT's patch embedding, channels on axis
        1, ``group=1``), each with its own initializers; through an Add of a constant (a bias,
        learned position embeddings), a Mul or Div by a constant that does not vary along the
        hidden axis (an embedding scale), Concat along another axis (ViT's class token), Expand of
        a constant, Transpose and Reshape that keep the hidden axis whole. Raises
        :class:`StreamRefused` otherwise.
        """
        vs = shapes.shape(v)
        p = v.producer()
        if p is None or vs is None:
            raise StreamRefused(f"'{v.name}' has no producer or no static shape")
        axis %= len(vs)
        last = axis == len(vs) - 1
        op = p.op_type
        rec = LayernormInvariance._writer
        if op == "Gather" and last and p.attributes.get_int("axis", 0) == 0 and _init(p.inputs[0]) is not None \
                and len(p.inputs[0].shape or ()) == 2:
            return [_Weight(p.inputs[0], 1, p)]
        if op == "Add":
            const = [x for x in p.inputs if _is_param(x)]
            data = [x for x in p.inputs if not _is_param(x)]
            if len(const) == 1 and len(data) == 1 and _init(const[0]) is not None and _used_once(const[0]) \
                    and _used_once(data[0]):
                c = const[0]
                ca = axis - (len(vs) - len(c.shape))
                if ca >= 0:
                    return [_Weight(c, ca), *rec(data[0], st, shapes, axis)]
        if op in ("Mul", "Div") and len(p.inputs) == 2 and _is_param(p.inputs[1]) and not _is_param(p.inputs[0]) \
                and _used_once(p.inputs[0]):
            k = shapes.const(p.inputs[1])
            ka = axis - (len(vs) - np.ndim(k)) if k is not None else -1
            if k is not None and (ka < 0 or np.shape(k)[ka] == 1):  # the same factor for every hidden feature
                return rec(p.inputs[0], st, shapes, axis)  # (an embedding scale: linear)
        if op == "Gemm" and last and not p.attributes.get_int("transA", 0):
            b = _init(p.inputs[1])
            if b is not None and _used_once(b):
                out = [_Weight(b, 0 if p.attributes.get_int("transB", 0) else 1)]
                c = _init(p.inputs[2]) if len(p.inputs) > 2 else None
                if len(p.inputs) > 2 and p.inputs[2] is not None:
                    if c is None or not _used_once(c):
                        raise StreamRefused(f"{_label(p)} has a computed or shared bias")
                    out.append(_Weight(c, len(c.shape) - 1))
                return out
        if op == "MatMul" and last and not _is_param(p.inputs[0]):
            w = _linear_weight(p.inputs[1])
            if w is not None:
                return [_Weight(w[0], 1 - w[1])]  # the output axis of the (in, out) weight
        if op == "Conv" and axis == 1 and p.attributes.get_int("group", 1) == 1:
            w = _init(p.inputs[1])
            b = _init(p.inputs[2]) if len(p.inputs) > 2 and p.inputs[2] is not None else None
            if w is not None and _used_once(w) and (len(p.inputs) < 3 or p.inputs[2] is None
                                                     or (b is not None and _used_once(b))):
                return [_Weight(w, 0)] + ([_Weight(b, 0)] if b is not None else [])
        if op == "Concat" and all(x is not None and _used_once(x) for x in p.inputs):
            if p.attributes.get_int("axis", 0) % len(vs) != axis:
                return [w for x in p.inputs for w in rec(x, st, shapes, axis)]
        if op in ("Gather", "Slice") and last and _init(p.inputs[0]) is not None and _used_once(p.inputs[0]) \
                and _keeps_last(p, shapes):
            return [_Weight(p.inputs[0], len(p.inputs[0].shape) - 1)]  # e.g. position embeddings [:seq]
        if op == "Expand" and _init(p.inputs[0]) is not None and _used_once(p.inputs[0]):
            c = p.inputs[0]
            ca = axis - (len(vs) - len(c.shape))
            if ca >= 0:
                return [_Weight(c, ca)]
        if op == "Transpose" and _used_once(p.inputs[0]):
            perm = list(p.attributes.get_ints("perm", list(reversed(range(len(vs))))))
            return rec(p.inputs[0], st, shapes, perm[axis])
        if op == "Reshape" and _used_once(p.inputs[0]):
            xs = shapes.shape(p.inputs[0])
            if xs is not None:
                before = int(np.prod(vs[:axis], dtype=np.int64))
                for b_ in range(len(xs)):
                    if xs[b_] == vs[axis] and int(np.prod(xs[:b_], dtype=np.int64)) == before:
                        return rec(p.inputs[0], st, shapes, b_)
        raise StreamRefused(f"{_label(p)} writes the residual stream and is not an embedding lookup, a linear layer "
                            "or a convolution with its own initializer weight")

    @staticmethod
    def _tied_heads(plan: list[list[_Weight]], st: _Stream) -> list[tuple[ir.Node, np.ndarray]]:
        """Writer weights used elsewhere: only an embedding table that is also a linear output head.

        Returns ``(head MatMul, row means of the table)`` for each tied head; raises otherwise.
        """
        tied = []
        for weights in plan:
            for w in weights:
                uses = [u for u, _ in w.tensor.uses()]
                if len(uses) == 1:
                    continue  # its writer alone (checked by _writer)
                writer_uses = [u for u in uses if u.op_type == "Gather" and (u.outputs[0] in st.values or u is w.lookup)]
                others = [u for u in uses if u not in writer_uses]
                if w.tensor.is_graph_output():
                    raise StreamRefused(f"writer weight '{w.tensor.name}' is a graph output")
                for u in others:
                    head = _tied_head(u)
                    if head is None:
                        raise StreamRefused(f"writer weight '{w.tensor.name}' is also used by {_label(u)}")
                    arr = np.asarray(w.tensor.const_value.numpy(), dtype=np.float64)
                    tied.append((head, arr.mean(axis=w.axis)))
        return tied


def _shape_only(node: ir.Node) -> bool:
    """Whether only the shapes of ``node``'s outputs are used (BART's ``x[..., -1]`` fed to Shape)."""
    return all(not o.is_graph_output() and o.uses() and all(u.op_type in ("Shape", "Size") for u, _ in o.uses())
               for o in node.outputs)


def _keeps_last(node: ir.Node, shapes: StaticShapes) -> bool:
    """A re-layout, conversion or selection that keeps the last axis (the hidden features) as it is.

    ``Gather`` and ``Slice`` qualify when they select along other axes only (a class token, a
    range of positions): every selected vector is a whole vector of the stream.
    """
    if node.op_type == "Cast":
        dt = node.attributes.get_int("to", 0)
        return dt in _FLOATS
    xs, ys = shapes.shape(node.inputs[0]), shapes.shape(node.outputs[0])
    if not (xs and ys and xs[-1] == ys[-1]):
        return False
    if node.op_type == "Gather":
        return node.attributes.get_int("axis", 0) % len(xs) != len(xs) - 1
    if node.op_type == "Slice":
        starts = shapes.const(node.inputs[1]) if len(node.inputs) > 1 else None
        axes_v = node.inputs[3] if len(node.inputs) > 3 else None
        axes = shapes.const(axes_v) if axes_v is not None else (
            None if starts is None else np.arange(np.asarray(starts).size))
        return axes is not None and all(int(a) % len(xs) != len(xs) - 1 for a in np.asarray(axes).reshape(-1))
    return True


def _is_last_axis_ln(node: ir.Node, shapes: StaticShapes) -> bool:
    xs = shapes.shape(node.inputs[0])
    if not xs:
        return False
    axis = node.attributes.get_int("axis", -1)
    return axis in (-1, len(xs) - 1)


def _linear_weight(v: ir.Value | None) -> tuple[ir.Value, int] | None:
    """``(initializer, its input axis)`` of a MatMul's constant right operand used only there.

    The operand is the initializer (``[in, out]``: input axis 0) or ``Transpose(W)`` of a 2-D
    initializer ``[out, in]`` (a torch Linear: input axis 1).
    """
    if v is None:
        return None
    w = _init(v)
    if w is not None and len(w.shape) == 2 and _used_once(w):
        return w, 0
    p = v.producer()
    if p is not None and p.op_type == "Transpose" and _used_once(v):
        w = _init(p.inputs[0])
        perm = p.attributes.get_ints("perm", [1, 0])
        if w is not None and len(w.shape) == 2 and list(perm) == [1, 0] and _used_once(w):
            return w, 1
    return None


def _tied_head(use: ir.Node) -> ir.Node | None:
    """The MatMul ``y @ Transpose(E)`` that ``use`` (a Transpose of the table) feeds, or None."""
    if use.op_type != "Transpose" or list(use.attributes.get_ints("perm", [1, 0])) != [1, 0]:
        return None
    out = use.outputs[0]
    users = list(out.uses())
    if len(users) != 1 or out.is_graph_output():
        return None
    head, i = users[0]
    return head if head.op_type == "MatMul" and i == 1 else None


def _hidden_size(v: ir.Value, shapes: StaticShapes) -> int | None:
    """The static size of ``v``'s last axis when ``v`` is a floating-point tensor (None otherwise)."""
    vs = shapes.shape(v)
    if not vs or v.dtype not in (None, *_FLOATS):
        return None
    n = int(vs[-1])
    return n if 1 < n < SENTINEL and v.producer() is not None else None


def _stream_dtype(v: ir.Value, st: _Stream) -> np.dtype:
    """``v``'s element type, else that of a reader's scale (exported values may be untyped), else float32."""
    if v.dtype is not None:
        return v.dtype.numpy()
    for r in st.readers:
        g = r.inputs[1] if len(r.inputs) > 1 else None
        if g is not None and g.dtype is not None:
            return g.dtype.numpy()
    return np.dtype(np.float32)


def _insert_centring(graph: ir.Graph, v: ir.Value, n: int, dtype: np.dtype, *, only: ir.Node | None = None) -> None:
    """``v - (v @ u) @ w`` in place of ``v`` for all its uses, or for ``only`` (``u = 1/n``, ``w = 1``).

    Two linear layers of their own weights (``[n, 1]`` and ``[1, n]``: 2n parameters): ``u``'s
    rows and ``w``'s columns join the channel groups of ``v``, so a removed channel ``j`` stays
    zero (``v_j - m·w_j = 0``) and the mean over the kept channels is the same sum over n. The
    one-wide mean is a group of its own (zeroing it turns the centring off; still exact).
    A centring spelled ``v - ReduceMean(v)`` would leave a removed channel at ``-mean(v)``.
    """
    base = f"{v.name if only is None else only.outputs[0].name}__centring"
    u = new_initializer(graph, f"{base}_u", np.full((n, 1), 1.0 / n, dtype=dtype))
    w = new_initializer(graph, f"{base}_w", np.ones((1, n), dtype=dtype))
    mean = ir.node("MatMul", inputs=[v, u], name=f"{base}_mean")
    spread = ir.node("MatMul", inputs=[mean.outputs[0], w], name=f"{base}_spread")
    sub = ir.node("Sub", inputs=[v, spread.outputs[0]], name=f"{base}_sub")
    mean.outputs[0].name, spread.outputs[0].name = f"{base}_mean", f"{base}_spread"
    if only is None:
        graph.insert_after(v.producer(), [mean, spread, sub])
    else:
        graph.insert_before(only, [mean, spread, sub])
    new = sub.outputs[0]
    new.name = f"{base}_out" if only is not None else f"{v.name}__centred"
    new.type, new.shape = v.type, v.shape
    for user, k in list(v.uses()):
        if user is not sub and user is not mean and (only is None or user is only):
            user.replace_input_with(k, new)  # (a stream value is never a graph output)


def _centre(model: ir.Model, w: _Weight) -> None:
    arr = np.asarray(w.tensor.const_value.numpy())
    a64 = arr.astype(np.float64)
    set_tensor_array(model, w.tensor.name, (a64 - a64.mean(axis=w.axis, keepdims=True)).astype(arr.dtype))


def _readers(v: ir.Value, shapes: StaticShapes) -> list[tuple[ir.Node, int]] | None:
    """The final consumers of ``v`` through re-layouts keeping the last axis (None: a graph output)."""
    out = []
    for user, i in v.uses():
        if user.op_type in _TRANSPARENT and _keeps_last(user, shapes) and i == 0:
            sub = _readers(user.outputs[0], shapes)
            if sub is None:
                return None
            out.extend(sub)
        elif user.op_type not in ("Shape", "Size"):  # metadata readers do not see the values
            out.append((user, i))
    return None if v.is_graph_output() else out


def _absorb_affine(model: ir.Model, ln: ir.Node, shapes: StaticShapes) -> bool:
    """Folds ``ln``'s scale and bias into its readers when every one is a linear layer of its own weight."""
    gamma = _init(ln.inputs[1]) if len(ln.inputs) > 1 else None
    beta_v = ln.inputs[2] if len(ln.inputs) > 2 else None
    beta = _init(beta_v) if beta_v is not None else None
    if gamma is None or (beta_v is not None and beta is None):
        return False
    readers = _readers(ln.outputs[0], shapes)
    if not readers:
        return False
    plans = []
    for node, i in readers:
        if i != 0:
            return False
        if node.op_type == "Gemm" and not node.attributes.get_int("transA", 0):
            b = _init(node.inputs[1])
            if b is None or not _used_once(b):
                return False
            c = node.inputs[2] if len(node.inputs) > 2 else None
            if c is not None and (_init(c) is None or not _used_once(c) or len(c.shape) != 1):
                return False
            plans.append((node, b, 1 if node.attributes.get_int("transB", 0) else 0, c))
        elif node.op_type == "MatMul":
            w = _linear_weight(node.inputs[1])
            if w is None:
                return False
            plans.append((node, w[0], w[1], None))
        else:
            return False
    g = np.asarray(gamma.const_value.numpy(), dtype=np.float64)
    bt = np.asarray(beta.const_value.numpy(), dtype=np.float64) if beta is not None else np.zeros_like(g)
    graph = model.graph
    for node, w, in_axis, c in plans:
        arr = np.asarray(w.const_value.numpy())
        a64 = arr.astype(np.float64)
        shape = [1, 1]
        shape[in_axis] = -1
        bias = np.tensordot(bt, a64, axes=([0], [in_axis]))  # β W: one entry per output feature
        set_tensor_array(model, w.name, (a64 * g.reshape(shape)).astype(arr.dtype))
        if not np.any(bias):
            continue
        if node.op_type == "Gemm":
            alpha = node.attributes.get_float("alpha", 1.0)
            beta_g = node.attributes.get_float("beta", 1.0)
            if c is not None and beta_g != 0:
                cv = np.asarray(c.const_value.numpy())
                set_tensor_array(model, c.name, (cv.astype(np.float64) + alpha / beta_g * bias).astype(cv.dtype))
            else:
                nb = new_initializer(graph, f"{w.name}__ln_bias", (alpha * bias).astype(arr.dtype))
                node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
                if len(node.inputs) > 2:
                    node.replace_input_with(2, nb)
                else:
                    node.resize_inputs(3)
                    node.replace_input_with(2, nb)
        else:
            _add_after(graph, node, new_initializer(graph, f"{w.name}__ln_bias", bias.astype(arr.dtype)))
    return True


def _add_after(graph: ir.Graph, node: ir.Node, operand: ir.Value) -> ir.Node:
    """Inserts ``Add(node's output, operand)`` and moves every use (and graph output) of the output to it."""
    out = node.outputs[0]
    add = ir.node("Add", inputs=[out, operand], name=f"{out.name}__plus")
    graph.insert_after(node, add)
    new = add.outputs[0]
    new.name = f"{out.name}__plus"
    new.type, new.shape = out.type, None
    _move_uses(graph, out, new, skip=add)
    return add


def _move_uses(graph: ir.Graph, old: ir.Value, new: ir.Value, *, skip: ir.Node) -> None:
    for user, i in list(old.uses()):
        if user is not skip:
            user.replace_input_with(i, new)
    for k, o in enumerate(graph.outputs):
        if o is old:
            name = old.name
            old.name = f"{name}__pre"
            new.name = name
            new.shape = old.shape
            graph.outputs[k] = new


def _constant(graph: ir.Graph, before: ir.Node, name: str, array: np.ndarray) -> ir.Value:
    c = ir.node("Constant", inputs=[], attributes={"value": ir.tensor(array, name=name)}, name=name)
    graph.insert_before(before, c)
    c.outputs[0].name = name
    return c.outputs[0]


def _replace_layernorm(graph: ir.Graph, ln: ir.Node, *, keep_affine: bool) -> None:
    """``x / sqrt(mean(x²) + eps)`` [``* γ + β``] in place of ``ln`` (its output value is kept)."""
    x = ln.inputs[0]
    dtype = (x.dtype or ir.DataType.FLOAT).numpy()
    eps = ln.attributes.get_float("epsilon", 1e-5)
    name = ln.outputs[0].name  # unique in the graph: the new names derive from it
    opset = graph.opset_imports.get("", 17)
    nodes = [ir.node("Pow", inputs=[x, _constant(graph, ln, f"{name}__two", np.array(2, dtype))], name=f"{name}__pow")]
    if opset >= 18:
        axes = _constant(graph, ln, f"{name}__axes", np.array([-1], np.int64))
        nodes.append(ir.node("ReduceMean", inputs=[nodes[-1].outputs[0], axes], attributes={"keepdims": 1},
                             name=f"{name}__mean"))
    else:
        nodes.append(ir.node("ReduceMean", inputs=[nodes[-1].outputs[0]], attributes={"axes": [-1], "keepdims": 1},
                             name=f"{name}__mean"))
    nodes.append(ir.node("Add", inputs=[nodes[-1].outputs[0], _constant(graph, ln, f"{name}__eps", np.array(eps, dtype))],
                         name=f"{name}__add_eps"))
    nodes.append(ir.node("Sqrt", inputs=[nodes[-1].outputs[0]], name=f"{name}__sqrt"))
    nodes.append(ir.node("Div", inputs=[x, nodes[-1].outputs[0]], name=f"{name}__div"))
    if keep_affine:
        if len(ln.inputs) > 1 and ln.inputs[1] is not None:
            nodes.append(ir.node("Mul", inputs=[nodes[-1].outputs[0], ln.inputs[1]], name=f"{name}__scale"))
        if len(ln.inputs) > 2 and ln.inputs[2] is not None:
            nodes.append(ir.node("Add", inputs=[nodes[-1].outputs[0], ln.inputs[2]], name=f"{name}__bias"))
    for k, n in enumerate(nodes):
        n.outputs[0].name = f"{name}__rms{k}"
    graph.insert_before(ln, nodes)
    y = ln.outputs[0]
    last = nodes[-1].outputs[0]
    last.type = y.type
    for user, i in list(y.uses()):
        user.replace_input_with(i, last)
    yname = y.name
    for k, o in enumerate(graph.outputs):
        if o is y:
            graph.outputs[k] = last
    params = list(ln.inputs[1:])
    graph.remove(ln, safe=True)
    last.name = yname
    last.shape = y.shape
    for p in params:  # a scale and bias absorbed into the readers are no longer used
        if p is not None and p.is_initializer() and not p.uses() and not p.is_graph_output():
            graph.initializers.pop(p.name, None)


def _correct_tied_head(graph: ir.Graph, head: ir.Node, means: np.ndarray) -> None:
    """``logits + ReduceSum(y, -1)·m``: the head ``y @ Eᵀ`` after E's rows lost their means ``m``."""
    y = head.inputs[0]
    dtype = (y.dtype or ir.DataType.FLOAT).numpy()
    name = head.outputs[0].name
    if graph.opset_imports.get("", 17) >= 13:
        axes = _constant(graph, head, f"{name}__sum_axes", np.array([-1], np.int64))
        s = ir.node("ReduceSum", inputs=[y, axes], attributes={"keepdims": 1}, name=f"{name}__tied_sum")
    else:
        s = ir.node("ReduceSum", inputs=[y], attributes={"axes": [-1], "keepdims": 1}, name=f"{name}__tied_sum")
    graph.insert_before(head, s)
    s.outputs[0].name = f"{name}__tied_sum"
    m = new_initializer(graph, f"{name}__tied_row_means", means.astype(dtype))
    corr = ir.node("Mul", inputs=[s.outputs[0], m], name=f"{name}__tied_correction")
    corr.outputs[0].name = f"{name}__tied_correction"
    graph.insert_before(head, corr)
    _add_after(graph, head, corr.outputs[0])
