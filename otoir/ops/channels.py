"""Channel propagation: how the channel indices of an op's output map to its inputs.

Every data value gets a :class:`Track`: the axes that carry channel identities and an integer
array ``ids`` over those axes (``ids[p]`` names the channel atom at position ``p``). Ops map
tracks exactly: identity, concat offsets, slice ranges, transposition, reshape factorisation
(an axis of size C split into (g, C/g) becomes a 2-D id array, so channel shuffle is an exact
permutation), matmul contraction and broadcasting. Where two positions must be removed
together, the propagation records an equality edge; equivalence classes of atoms (computed
by union-find) are the zero-invariant groups.

Alongside ``ids``, ``zero`` says whether the position is exactly zero once the position's own
group is zeroed; a contraction (a consumer weight column) may only drop positions that are zero.
Anything the propagation cannot map exactly *poisons* the atoms involved, with a reason: their
groups are not prunable. Semantics are keyed by op type first and then by the rule's
:class:`~otoir.ops.rules.ChannelMap`.

Every value the surgery slices must be sliced alike wherever it meets another: a channel axis
that a MatMul contracts (or broadcasts) against an untracked operand, or that an initializer
shared with an untracked use carries, is poisoned, since the other side keeps its size.
Outer products of channels on different axes follow the larger side only; a
``ConstantOfShape`` whose shape is read at run time from tracked values follows their channels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from otoir.analyses.shapes import SENTINEL
from otoir.ops.rules import ChannelMap, VertexKind

if TYPE_CHECKING:
    import onnx_ir as ir

    from otoir.analyses.shapes import StaticShapes
    from otoir.analyses.vertices import VertexClasses

__all__ = [
    "Track",
    "ParamUse",
    "ChannelState",
    "propagate_node",
    "reshape_blocks",
    "components",
    "HANDLERS",
    "UNARY_VALUE_OPS",
    "is_pure_source",
]


@dataclass
class Track:
    """Channel identities of one value.

    Attributes:
        axes: Sorted axes of the value that carry channel atoms.
        ids: int64 array over ``axes`` (shape ``[shape[a] for a in axes]``).
        zero: bool array like ``ids``: exactly zero when the atom's group is zeroed.
    """

    axes: tuple[int, ...]
    ids: np.ndarray
    zero: np.ndarray


@dataclass(frozen=True)
class ParamUse:
    """Entries of an initializer that follow channel atoms.

    Attributes:
        tensor: Initializer name.
        axis: Axis of the initializer.
        ids: Atom of each entry along ``axis`` (1-D, length = size of the axis).
        trainable: True for entries the optimizer drives to zero (``Group.slices``), False
            for entries only removed at construction (``Group.dependent``).
        node: The node using the initializer.
        role: Short description (``weight-rows``, ``weight-columns``, ``scale``...).
        via: Constant nodes between the initializer and ``node`` (e.g. the Transpose of a
            torch Linear weight, the Gather of a position-embedding table).
    """

    tensor: str
    axis: int
    ids: np.ndarray
    trainable: bool
    node: ir.Node
    role: str
    via: tuple = ()


@dataclass
class ChannelState:
    """Mutable state of one propagation run (used by :class:`otoir.analyses.zig.ChannelGroups`).

    Attributes:
        shapes: Static shapes and folded constants.
        vc: Vertex classification.
        tracks: Value -> track (untracked values are absent).
        n: Number of atoms allocated.
        edges: Pairs of equal-shape id arrays whose atoms are equivalent.
        poison_ids: Reason -> its poison atom; a group containing it is not prunable.
        params: Parameter entries attached to atoms.
        constraints: Multi-axis id arrays (reshape factorisations) whose kept set must stay a
            product set: the analysis merges atoms until each depends on one axis only.
        inexact: ``(ids, reason)``: groups containing these atoms are not exactly zero-invariant.
        stems: ``(node, ids)`` of fresh atoms, in order (names groups).
        conv_groups: Conv node -> (G, out-ids) for grouped convolutions.
    """

    shapes: StaticShapes
    vc: VertexClasses
    trainable: frozenset[str]
    tracks: dict = field(default_factory=dict)
    n: int = 0
    edges: list = field(default_factory=list)
    poison_ids: dict = field(default_factory=dict)
    params: list = field(default_factory=list)
    constraints: list = field(default_factory=list)
    inexact: list = field(default_factory=list)
    stems: list = field(default_factory=list)
    conv_groups: dict = field(default_factory=dict)

    # -- atoms ----------------------------------------------------------------------------
    def fresh(self, shape, node: ir.Node | None = None) -> np.ndarray:
        """Allocates new atoms."""
        size = int(np.prod(shape)) if len(shape) else 1
        ids = np.arange(self.n, self.n + size, dtype=np.int64).reshape(shape)
        self.n += size
        if node is not None:
            self.stems.append((node, ids))
        return ids

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        """Records that atoms ``a`` and ``b`` (same shape, or broadcastable) are equivalent."""
        a, b = np.broadcast_arrays(a, b)
        a = a.ravel()
        b = b.ravel()
        if a.size:
            self.edges.append((a.copy(), b.copy()))

    def merge(self, ids: np.ndarray) -> None:
        """Makes all atoms of ``ids`` equivalent."""
        flat = ids.ravel()
        if flat.size > 1:
            self.edges.append((flat[:-1].copy(), flat[1:].copy()))

    def poison(self, ids: np.ndarray | None, reason: str) -> None:
        """Marks atoms as not prunable because of ``reason``."""
        if ids is None or ids.size == 0:
            return
        pid = self.poison_ids.get(reason)
        if pid is None:
            pid = self.poison_ids[reason] = self.n
            self.n += 1
        flat = ids.ravel()
        self.edges.append((flat.copy(), np.full(flat.size, pid, dtype=np.int64)))

    # -- values ---------------------------------------------------------------------------
    def shape(self, v: ir.Value | None) -> tuple[int, ...] | None:
        """Static shape of a value."""
        return self.shapes.shape(v)

    def track(self, v: ir.Value | None) -> Track | None:
        """Track of a value (None: untracked)."""
        return None if v is None else self.tracks.get(v)

    def is_data(self, v: ir.Value | None) -> bool:
        """Whether the value depends on graph inputs."""
        return self.vc.is_data(v)

    def set(self, v: ir.Value, t: Track | None) -> None:
        """Sets the track of ``v`` (drops empty tracks)."""
        if t is not None and t.axes:
            self.tracks[v] = t

    def poison_track(self, v: ir.Value | None, reason: str) -> None:
        """Poisons every atom of ``v``."""
        t = self.track(v)
        if t is not None:
            self.poison(t.ids, reason)

    def add_param(self, tensor: str, axis: int, ids: np.ndarray, node: ir.Node, role: str,
                  trainable: bool | None = None, via: tuple = ()) -> None:
        """Attaches entries of initializer ``tensor`` along ``axis`` to atoms ``ids``."""
        if trainable is None:
            trainable = tensor in self.trainable
        self.params.append(ParamUse(tensor, axis, np.asarray(ids, dtype=np.int64).ravel(), trainable, node, role,
                                    tuple(via)))

    def param_source(self, v: ir.Value | None, axis: int, *, values: bool = False) -> tuple[str, int, tuple] | None:
        """Follows a constant value back to the initializer entries along ``axis``.

        Handles initializers seen through Transpose, Gather (on another axis, constant
        indices), Unsqueeze/Squeeze, Expand, Cast and Identity; with ``values`` also through
        the element-wise unary ops of :data:`UNARY_VALUE_OPS` (Mamba's ``A = -exp(A_log)``),
        which commute with slicing but do not map zero to zero (see :func:`is_pure_source`).

        Returns:
            ``(initializer name, axis in it, via nodes)`` or None.
        """
        via: list = []
        for _ in range(16):
            if v is None:
                return None
            if v.is_initializer():
                if v.const_value is None:
                    return None
                return v.name, axis, tuple(via)
            node = v.producer()
            if node is None or self.vc.is_data(v) or len(v.uses()) != 1 and via:
                return None
            op = node.op_type
            src = node.inputs[0] if node.inputs else None
            ss, os_ = self.shape(src), self.shape(v)
            if ss is None or os_ is None:
                return None
            if op in ("Cast", "Identity") or (values and op in UNARY_VALUE_OPS and len(node.inputs) == 1):
                pass
            elif op == "Transpose":
                perm = _attr(node, "perm", None)
                perm = list(perm) if perm is not None else list(reversed(range(len(ss))))
                axis = perm[axis]
            elif op == "Gather":
                g = _norm_axis(int(_attr(node, "axis", 0)), len(ss))
                ri = len(self.shape(node.inputs[1]) or ())
                if self.shapes.const(node.inputs[1]) is None or g <= axis < g + ri:
                    return None
                axis = axis if axis < g else axis - ri + 1
            elif op in ("Unsqueeze", "Squeeze", "Expand", "Reshape"):
                # only size-1 axes may appear/disappear; map by position of non-1 axes
                if op == "Expand":
                    sh = len(os_) - len(ss)
                    if axis - sh < 0 or ss[axis - sh] != os_[axis]:
                        return None
                    axis = axis - sh
                else:
                    a_nz = [i for i, d in enumerate(ss) if d != 1]
                    b_nz = [i for i, d in enumerate(os_) if d != 1]
                    if [ss[i] for i in a_nz] != [os_[i] for i in b_nz] or axis not in b_nz:
                        return None
                    axis = a_nz[b_nz.index(axis)]
            else:
                return None
            via.append(node)
            v = src
        return None


#: Element-wise ops of one input that :meth:`ChannelState.param_source` may look through when
#: asked for ``values``: slicing their input slices their output alike.
UNARY_VALUE_OPS = frozenset({
    "Neg", "Exp", "Log", "Abs", "Sqrt", "Reciprocal", "Sigmoid", "Tanh", "Softplus", "Relu", "Sin", "Cos",
    "Erf", "Floor", "Ceil", "Round", "Sign", "Softsign", "Elu", "Selu", "LeakyRelu", "HardSigmoid", "Gelu",
})


def is_pure_source(via: tuple) -> bool:
    """Whether a parameter seen through ``via`` nodes keeps its values (zero stays zero)."""
    return not any(n.op_type in UNARY_VALUE_OPS for n in via)


# -- track helpers ----------------------------------------------------------------------------
def expand(t: Track, axes: tuple[int, ...], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Broadcasts a track to a superset of its axes (atoms repeat along new axes)."""
    if t.axes == axes:
        return t.ids, t.zero
    view = [shape[a] if a in t.axes else 1 for a in axes]
    full = [shape[a] for a in axes]
    ids = np.broadcast_to(t.ids.reshape(view), full)
    zero = np.broadcast_to(t.zero.reshape(view), full)
    return ids, zero


def _squeeze_static(ids: np.ndarray, zero: np.ndarray, axes: list):
    """Drops axes along which ``ids`` do not vary (a position is zero if zero along them all)."""
    zero = np.broadcast_to(zero, ids.shape)
    keep = [k for k in range(ids.ndim) if ids.shape[k] > 1 and np.any(ids != ids.take([0], axis=k))]
    if not keep and ids.size:
        big = [k for k in range(ids.ndim) if ids.shape[k] > 1]
        keep = big[:1] or [0]
    dropped = tuple(k for k in range(ids.ndim) if k not in keep)
    idx = tuple(slice(None) if k in keep else 0 for k in range(ids.ndim))
    new_ids = np.ascontiguousarray(ids[idx])
    new_zero = np.all(zero, axis=dropped) if dropped else np.array(zero)
    return new_ids, new_zero, [axes[k] for k in keep]


def reshape_blocks(sin: tuple[int, ...], sout: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Factorises a reshape into blocks of axes with equal products (size-1 axes ignored).

    Returns:
        ``[(in_axes, out_axes), ...]`` or None when the shapes do not factorise.
    """
    a = [i for i, d in enumerate(sin) if d != 1]
    b = [j for j, d in enumerate(sout) if d != 1]
    blocks = []
    i = j = 0
    while i < len(a) and j < len(b):
        bi, bo = [a[i]], [b[j]]
        pi, po = sin[a[i]], sout[b[j]]
        i += 1
        j += 1
        while pi != po:
            if pi < po:
                if i >= len(a):
                    return None
                bi.append(a[i])
                pi *= sin[a[i]]
                i += 1
            else:
                if j >= len(b):
                    return None
                bo.append(b[j])
                po *= sout[b[j]]
                j += 1
        blocks.append((bi, bo))
    if i != len(a) or j != len(b):
        return None
    return blocks


def reshape_track(st: ChannelState, t: Track, sin: tuple[int, ...], sout: tuple[int, ...], node: ir.Node) -> Track | None:
    """Maps a track through a reshape (exact factorisation; records product constraints)."""
    # Size-1 tracked axes: a single channel; it cannot be followed through a reshape that
    # drops the axis, so keep it only when it survives as a size-1 axis... poison instead.
    for a in t.axes:
        if sin[a] == 1:
            st.poison(t.ids, f"a size-1 channel axis is reshaped ({node.op_type} '{node.name}')")
            return None
    blocks = reshape_blocks(sin, sout)
    if blocks is None:
        st.poison(t.ids, f"reshape {sin} -> {sout} does not factorise ('{node.name}')")
        return None
    tb = [(bi, bo) for bi, bo in blocks if any(a in t.axes for a in bi)]
    if any(a not in {x for bi, _ in tb for x in bi} for a in t.axes):
        st.poison(t.ids, f"reshape of a channel axis not covered by a factor block ('{node.name}')")
        return None
    in_axes = tuple(x for bi, _ in tb for x in bi)
    out_axes = [x for _, bo in tb for x in bo]
    ids, zero = expand(t, in_axes, sin)
    # Product constraints on the input side: one per block with several axes.
    pos = 0
    in_blocks = []
    for bi, _ in tb:
        if len(bi) > 1:
            in_blocks.append(tuple(range(pos, pos + len(bi))))
        pos += len(bi)
    if in_blocks:
        st.constraints.append(np.ascontiguousarray(ids))
    oshape = [sout[x] for x in out_axes]
    ids = np.ascontiguousarray(ids).reshape(oshape)
    zero = np.ascontiguousarray(zero).reshape(oshape)
    pos = 0
    out_blocks = []
    for _, bo in tb:
        if len(bo) > 1:
            out_blocks.append(tuple(range(pos, pos + len(bo))))
        pos += len(bo)
    if out_blocks:
        st.constraints.append(ids)
    ids2, zero2, axes2 = _squeeze_static(ids, zero, out_axes)
    return Track(tuple(axes2), ids2, zero2)


def transpose_track(t: Track, perm: list[int]) -> Track:
    """Maps a track through a transposition."""
    out_axes = [i for i in range(len(perm)) if perm[i] in t.axes]
    order = [t.axes.index(perm[i]) for i in out_axes]
    return Track(tuple(out_axes), np.transpose(t.ids, order), np.transpose(t.zero, order))


def _norm_axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def _attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


def _consume(st: ChannelState, node: ir.Node, t: Track | None, axis: int, param: tuple | None) -> None:
    """A contraction over ``axis`` of a tracked input: removed positions must be zero.

    ``param``: ``(initializer, axis[, via])`` of the weight columns the positions meet.
    """
    if t is None:
        return
    if axis not in t.axes:
        return
    if len(t.axes) > 1:
        st.poison(t.ids, f"contracted by {node.op_type} '{node.name}' together with other channel axes")
        return
    bad = ~t.zero
    if np.any(bad):
        st.poison(t.ids[bad], f"channel is not zero when its group is zeroed (e.g. sigmoid(0)=0.5) and feeds the contraction of {node.op_type} '{node.name}'")
    if param is not None:
        st.add_param(param[0], param[1], t.ids, node, "weight-columns", trainable=False,
                     via=param[2] if len(param) > 2 else ())


def _rest_untracked(st: ChannelState, node: ir.Node, skip: int = 1) -> None:
    """Poisons tracked inputs that an op does not follow (e.g. data-dependent params)."""
    for v in node.inputs[skip:]:
        st.poison_track(v, f"channel feeds a non-data input of {node.op_type} '{node.name}'")


def barrier(st: ChannelState, node: ir.Node, reason: str) -> None:
    """Nothing propagates: poison tracked inputs; outputs are untracked."""
    for v in node.inputs:
        st.poison_track(v, reason)


# -- stems ----------------------------------------------------------------------------------------
def _conv(st: ChannelState, node: ir.Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 else None
    y = node.outputs[0]
    ys, ws = st.shape(y), st.shape(w)
    transpose = node.op_type == "ConvTranspose"
    out_axis = 1 if transpose else 0
    in_axis = 0 if transpose else 1
    # the weight itself, or an initializer seen through Squeeze/Unsqueeze (torch Conv1d exports)
    src_o = src_i = None
    if w is not None and w.is_initializer():
        src_o, src_i = (w.name, out_axis, ()), (w.name, in_axis, ())
    elif w is not None and not transpose:
        src_o, src_i = st.param_source(w, out_axis), st.param_source(w, in_axis)
    if ys is None or ws is None or src_o is None:
        barrier(st, node, f"Conv '{node.name}' with unknown shapes or a computed weight")
        return
    g = int(_attr(node, "group", 1))
    cout = ys[1]
    ids = st.fresh((cout,), node)
    t = st.track(x)
    if t is not None and (len(t.axes) != 1 or t.axes[0] != 1):
        st.poison(t.ids, f"{node.op_type} '{node.name}' input carries channels on an axis other than 1")
        t = None
    if g == 1:
        st.add_param(src_o[0], src_o[1], ids, node, "weight-rows", via=src_o[2])
        if t is not None and src_i is None:
            st.poison(t.ids, f"Conv '{node.name}' weight's input-channel axis cannot be followed to an initializer")
        else:
            _consume(st, node, t, 1, src_i)
    elif transpose:
        # Grouped transposed convolution: a whole conv group (inputs and outputs) is the unit.
        cin = ws[0]
        blocks = ids.reshape(g, cout // g)
        for k in range(g):
            st.merge(blocks[k])
        if t is not None:
            st.unify(t.ids.reshape(g, cin // g), blocks[:, :1])
        st.add_param(w.name, 0, np.repeat(blocks[:, 0], cin // g) if t is None else t.ids, node, "weight-input-rows",
                     trainable=True)
        st.conv_groups[node] = (g, ids)
        st.poison(ids, f"grouped ConvTranspose '{node.name}' (not supported by prune-channels)")
    else:
        cin = ws[1] * g
        blocks = ids.reshape(g, cout // g)
        for k in range(g):
            st.merge(blocks[k])
        if t is not None:
            st.unify(t.ids.reshape(g, cin // g), blocks[:, :1])
        else:
            xs = st.shape(x)
            if xs is not None and st.is_data(x):
                st.poison(ids, f"grouped Conv '{node.name}' reads untracked channels (graph input or barrier)")
        st.add_param(src_o[0], src_o[1], ids, node, "weight-rows", via=src_o[2])
        st.conv_groups[node] = (g, ids)
    if b is not None and b.is_initializer():
        st.add_param(b.name, 0, ids, node, "bias")
    st.set(y, Track((1,), ids, np.ones(cout, dtype=bool)))


def _gemm(st: ChannelState, node: ir.Node) -> None:
    kind = st.vc.info[node].kind
    if kind is not VertexKind.STEM:
        barrier(st, node, f"Gemm '{node.name}' of two data operands")
        return
    a, w = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    y = node.outputs[0]
    ys = st.shape(y)
    if _attr(node, "transA", 0) or ys is None or not w.is_initializer():
        barrier(st, node, f"Gemm '{node.name}' with transA or computed weight")
        return
    tb = int(_attr(node, "transB", 0))
    n = ys[1]
    ids = st.fresh((n,), node)
    st.add_param(w.name, 0 if tb else 1, ids, node, "weight-rows")
    _consume(st, node, st.track(a), 1, (w.name, 1 if tb else 0))
    if c is not None:
        cs = st.shape(c)
        if c.is_initializer() and cs is not None and len(cs) >= 1 and cs[-1] == n and n > 1:
            if len(cs) == 2 and cs[0] != 1:
                st.poison(ids, f"Gemm '{node.name}' with a 2-D bias")
            else:
                st.add_param(c.name, len(cs) - 1, ids, node, "bias")
        elif c is not None and not c.is_initializer() and n > 1:
            st.poison(ids, f"Gemm '{node.name}' bias is computed")
    st.set(y, Track((1,), ids, np.ones(n, dtype=bool)))


def _matmul(st: ChannelState, node: ir.Node) -> None:
    a, b = node.inputs[0], node.inputs[1]
    y = node.outputs[0]
    as_, bs, ys = st.shape(a), st.shape(b), st.shape(y)
    if as_ is None or bs is None or ys is None or len(as_) < 2 or len(bs) < 2:
        barrier(st, node, f"MatMul '{node.name}' with unknown or 1-D shapes")
        return
    r = len(ys)
    da, db = st.is_data(a), st.is_data(b)
    if da and not db:
        src_out = st.param_source(b, len(bs) - 1) if len(bs) == 2 else None
        src_in = st.param_source(b, len(bs) - 2) if len(bs) == 2 else None
        if src_out is None or src_in is None:
            barrier(st, node, f"MatMul '{node.name}' with a computed or batched constant operand")
            return
        ta = st.track(a)
        ra = len(as_)
        if ta is not None and ta.axes != (ra - 1,):
            st.poison(ta.ids, f"MatMul '{node.name}' input carries channels on an axis other than the last")
            ta = None
        n = ys[-1]
        ids = st.fresh((n,), node)
        st.add_param(src_out[0], src_out[1], ids, node, "weight-rows", via=src_out[2])
        if ta is not None and ra - 1 in ta.axes:
            _consume(st, node, ta, ra - 1, None)
            st.add_param(src_in[0], src_in[1], ta.ids, node, "weight-columns", trainable=False, via=src_in[2])
        st.set(y, Track((r - 1,), ids, np.ones(n, dtype=bool)))
        return
    if not da:
        if not db:
            return
        # W @ X with a constant 2-D W (Mamba's dt_proj): output rows (axis -2) are W's rows;
        # X's axis -2 is contracted with W's columns.
        src_out = st.param_source(a, 0) if len(as_) == 2 else None
        src_in = st.param_source(a, 1) if len(as_) == 2 else None
        if src_out is None or src_in is None:
            barrier(st, node, f"MatMul '{node.name}' with a computed or batched constant left operand")
            return
        tb_ = st.track(b)
        rb = len(bs)
        if tb_ is not None and tb_.axes != (rb - 2,):
            st.poison(tb_.ids, f"MatMul '{node.name}' right operand carries channels on an axis other than -2")
            tb_ = None
        m = ys[-2]
        ids = st.fresh((m,), node)
        st.add_param(src_out[0], src_out[1], ids, node, "weight-rows", via=src_out[2])
        if tb_ is not None:
            _consume(st, node, tb_, rb - 2, None)
            st.add_param(src_in[0], src_in[1], tb_.ids, node, "weight-columns", trainable=False, via=src_in[2])
        st.set(y, Track((r - 2,), ids, np.ones(m, dtype=bool)))
        return
    # Two data operands: batch axes broadcast, K contracted, M from a, N from b.
    ta, tb_ = st.track(a), st.track(b)
    ra, rb = len(as_), len(bs)
    if ta is None and tb_ is None:
        return
    # Positions in output coordinates.
    def to_out(t: Track | None, rank: int, is_a: bool):
        if t is None:
            return None
        m = {}
        for x in t.axes:
            if x == rank - 1:
                m[x] = "K" if is_a else r - 1
            elif x == rank - 2:
                m[x] = r - 2 if is_a else "K"
            else:
                m[x] = x + (r - rank)
        return m

    # A tracked axis both operands index (K, or a batch axis the other operand does not
    # broadcast) can be sliced only if the other operand is sliced alike, i.e. tracked there
    # too: an untracked data operand keeps its size (Mamba's scan: C contracted with the state).
    # Such an operand is poisoned (never sliced) and then followed as untracked.
    while True:
        ma, mb = to_out(ta, ra, True), to_out(tb_, rb, False)
        dropped = None
        for which, t, mp, other_mp, other_shape in ((0, ta, ma, mb, bs), (1, tb_, mb, ma, as_)):
            if t is None:
                continue
            shared = set(other_mp.values()) if other_mp else set()
            for x in t.axes:
                o = mp[x]
                if o in shared or (o != "K" and o >= r - 2):
                    continue
                if o == "K":
                    why = "contracts channels with an operand whose channels are not tracked"
                else:
                    k = o - (r - len(other_shape))
                    if k < 0 or other_shape[k] == 1:
                        continue
                    why = "broadcasts channels against an operand whose channels are not tracked"
                st.poison(t.ids, f"MatMul '{node.name}' {why}")
                dropped = which
                break
            if dropped is not None:
                break
        if dropped is None:
            break
        if dropped == 0:
            ta = None
        else:
            tb_ = None
    if ta is None and tb_ is None:
        return
    batch_axes = sorted({v for mp in (ma, mb) if mp for v in mp.values() if v != "K" and v < r - 2})
    k_size = as_[-1]
    # Build each operand's ids over (batch axes..., M or N, K) in a common layout:
    # layout axes = batch_axes + [r-2 (M)] + [r-1 (N)] + ["K"]
    lay = [*batch_axes, r - 2, r - 1, "K"]
    lsize = [ys[x] for x in batch_axes] + [ys[r - 2], ys[r - 1], k_size]

    def lay_ids(t: Track | None, mp):
        if t is None:
            return None
        src = [mp[x] for x in t.axes]
        view = [1] * len(lay)
        order = []
        for i, s in enumerate(src):
            li = lay.index(s)
            view[li] = t.ids.shape[i]
            order.append(li)
        perm = np.argsort(order)
        ids = np.transpose(t.ids, perm).reshape(view) if t.ids.ndim else t.ids.reshape(view)
        zero = np.transpose(t.zero, perm).reshape(view) if t.zero.ndim else t.zero.reshape(view)
        return ids, zero

    la, lb = lay_ids(ta, ma), lay_ids(tb_, mb)
    kdim = len(lay) - 1
    # Operands that carry no atoms on a broadcast axis but vary there (untracked data): fine,
    # matmul with an untracked operand is linear in the tracked one per batch index.
    # Unify along batch axes and K where both are tracked.
    if la is not None and lb is not None:
        ia = la[0]
        ib = lb[0]
        # Batch axes (and K): both operands index the same positions.
        sel_a = [slice(None) if i < len(batch_axes) or i == kdim else slice(0, 1) for i in range(len(lay))]
        sel_b = sel_a
        a_part = ia[tuple(sel_a)]
        b_part = ib[tuple(sel_b)]
        st.unify(a_part, b_part)
    contracted_tracked = (la is not None and la[0].shape[kdim] > 1) or (lb is not None and lb[0].shape[kdim] > 1)
    if contracted_tracked:
        tracked_batch_or_mn = any(
            lt is not None and any(lt[0].shape[i] > 1 for i in range(kdim)) for lt in (la, lb)
        )
        if tracked_batch_or_mn:
            # Merge K per output position: the K atoms of a position's batch/M/N index join it.
            for lt in (la, lb):
                if lt is None:
                    continue
                ids = lt[0]
                if ids.shape[kdim] > 1:
                    st.unify(ids, ids.take([0], axis=kdim))
        else:
            za = la[1] if la is not None else None
            zb = lb[1] if lb is not None else None
            zz = None
            if za is not None:
                zz = np.broadcast_to(za, za.shape)
            if zb is not None:
                zz = zb if zz is None else (np.broadcast_arrays(zz, zb)[0] | np.broadcast_arrays(zz, zb)[1])
            ids = (la or lb)[0]
            bad = ~np.broadcast_to(zz, ids.shape) if zz is not None else np.ones(ids.shape, bool)
            if np.any(bad):
                st.poison(ids[bad], f"contracted by MatMul '{node.name}' while not zero")
    if not any(o != "K" for mp in (ma, mb) if mp for o in mp.values()):
        return  # only the contracted axis carries channels (unified above): the product has none
    # Output ids over layout axes except K.
    parts = []
    for lt in (la, lb):
        if lt is None:
            continue
        ids, zero = lt
        ids = ids.take(0, axis=kdim)
        # zero over K: the product is zero if one operand is zero for all K of the position
        zall = np.all(zero, axis=kdim)
        parts.append((ids, zall))
    ids0, z0 = parts[0]
    shape_full = lsize[:-1]
    ids_full = np.broadcast_to(ids0, shape_full)
    z_full = np.broadcast_to(z0, shape_full)
    if len(parts) > 1:
        ids1, z1 = parts[1]
        ids1 = np.broadcast_to(ids1, shape_full)
        z_full = z_full | np.broadcast_to(z1, shape_full)
        vary0 = [i for i in range(len(shape_full)) if np.shape(ids0)[i] > 1]
        vary1 = [i for i in range(len(shape_full)) if np.shape(ids1)[i] > 1]
        if set(vary1) - set(vary0):
            st.unify(np.broadcast_to(ids0, shape_full), ids1)
            ids_full = ids1
        else:
            st.unify(ids_full, ids1)
    out_axes = [x for x in lay[:-1]]
    ids_c = np.ascontiguousarray(ids_full)
    z_c = np.ascontiguousarray(z_full)
    ids2, zero2, axes2 = _squeeze_static(ids_c, z_c, out_axes)
    st.set(y, Track(tuple(axes2), ids2, zero2))


def _only(t: Track, axis: int):
    k = t.axes.index(axis)
    if len(t.axes) == 1:
        return t.ids, t.zero
    ids = np.moveaxis(t.ids, k, -1).reshape(-1, t.ids.shape[k])[0]
    zero = np.all(np.moveaxis(t.zero, k, -1).reshape(-1, t.ids.shape[k]), axis=0)
    return ids, zero


def _gather(st: ChannelState, node: ir.Node) -> None:
    kind = st.vc.info[node].kind
    table, idx = node.inputs[0], node.inputs[1]
    y = node.outputs[0]
    ys = st.shape(y)
    if kind is VertexKind.STEM:
        ts = st.shape(table)
        if ts is None or ys is None or len(ts) != 2 or _norm_axis(int(_attr(node, "axis", 0)), 2) != 0 \
                or not table.is_initializer():
            barrier(st, node, f"Gather '{node.name}' on a table that is not a 2-D initializer")
            return
        d = ts[1]
        ids = st.fresh((d,), node)
        st.add_param(table.name, 1, ids, node, "embedding-columns")
        st.set(y, Track((len(ys) - 1,), ids, np.ones(d, bool)))
        return
    t = st.track(table)
    if t is None:
        return
    xs = st.shape(table)
    axis = _norm_axis(int(_attr(node, "axis", 0)), len(xs))
    if axis in t.axes:
        barrier(st, node, f"Gather '{node.name}' indexes a channel axis")
        return
    ir_ = len(st.shape(idx) or ())
    axes = tuple(a if a < axis else a - 1 + ir_ for a in t.axes)
    st.set(y, Track(axes, t.ids, t.zero))


# -- accessories with per-channel parameters ---------------------------------------------------
def _per_channel(st: ChannelState, node: ir.Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    t = st.track(x)
    xs = st.shape(x)
    op = node.op_type
    rule = st.vc.info[node].rule
    if t is None or xs is None:
        return
    if op == "LayerNormalization":
        axis = _norm_axis(int(_attr(node, "axis", -1)), len(xs))
        normed = tuple(range(axis, len(xs)))
        tracked_normed = [a for a in t.axes if a in normed]
        if tracked_normed:
            if len(normed) != 1:
                barrier(st, node, f"LayerNormalization '{node.name}' over several axes with channels")
                return
            st.inexact.append((t.ids, f"LayerNormalization '{node.name}' normalises over the pruned axis "
                                      "(mean/variance change): not exactly zero-invariant"))
            ids, _ = _only(t, normed[0])
            for i, role in ((1, "scale"), (2, "bias")):
                p = node.inputs[i] if len(node.inputs) > i else None
                if p is not None and p.is_initializer():
                    st.add_param(p.name, 0, ids, node, role)
                elif p is not None:
                    st.poison(ids, f"LayerNormalization '{node.name}' {role} is computed")
            zero = np.ones(t.ids.shape, bool) if len(node.inputs) > 2 and node.inputs[2] is not None \
                else t.zero
            st.set(y, Track(t.axes, t.ids, zero))
            return
        # Channels on other axes: per-position normalisation, exact.
        st.set(y, Track(t.axes, t.ids, np.zeros(t.ids.shape, bool)))
        return
    caxis = 1
    if t.axes != (caxis,):
        if caxis in t.axes:
            st.poison(t.ids, f"{op} '{node.name}' input carries channels on several axes")
            return
        # statistics over axes that carry channels: not followed
        barrier(st, node, f"{op} '{node.name}' normalises over an axis carrying channels")
        return
    ids = t.ids
    if op == "GroupNormalization":
        g = int(_attr(node, "num_groups"))
        c = xs[1]
        for row in ids.reshape(g, c // g):
            st.merge(row)
        st.conv_groups[node] = (g, ids)
        ver = st.vc.info[node].rule
        del ver
        for i, role in ((1, "scale"), (2, "bias")):
            p = node.inputs[i]
            ps = st.shape(p)
            if ps is not None and ps[0] == c:
                st.add_param(p.name, 0, ids, node, role)
            else:
                st.add_param(p.name, 0, ids.reshape(g, c // g)[:, 0], node, role)
        st.set(y, Track(t.axes, t.ids, np.ones(ids.shape, bool)))
        return
    zero_out = True
    for spec in rule.params:
        i = spec.input
        if i >= len(node.inputs) or node.inputs[i] is None:
            continue
        p = node.inputs[i]
        ps = st.shape(p)
        if ps is not None and (len(ps) == 0 or int(np.prod(ps)) == 1):
            continue  # one shared value (e.g. a scalar PRelu slope): nothing per channel
        if ps is None or ps[0] != len(ids):
            st.poison(ids, f"{op} '{node.name}' parameter {spec.role} does not follow the channels")
            continue
        # the initializer itself, or seen through Unsqueeze/Reshape/... (torch PReLU slope)
        src = (p.name, 0, ()) if p.is_initializer() else st.param_source(p, 0)
        if src is None:
            st.poison(ids, f"{op} '{node.name}' parameter {spec.role} is computed")
            continue
        st.add_param(src[0], src[1], ids, node, spec.role, trainable=None if spec.trainable else False, via=src[2])
    if op == "PRelu":
        zero_out = False
        st.set(y, Track(t.axes, t.ids, t.zero.copy()))
        return
    st.set(y, Track(t.axes, t.ids, np.full(ids.shape, zero_out)))


# -- elementwise and joints ---------------------------------------------------------------------
_ZERO_ANY = {"Mul", "And"}
_ZERO_ALL = {"Add", "Sub", "Max", "Min", "Sum", "Mean", "Where"}


def _outer_product(st: ChannelState, node: ir.Node, inputs: list, tracked: list, r: int) -> list:
    """Operands tracked on disjoint axes, each broadcast (size 1) along the others' (``u[:, None] * v[None]``).

    Unifying them position by position would merge every group of both sides into one. Only
    the side with the most atoms is followed; the others are poisoned (never sliced, so their
    sizes never change) and treated as untracked operands that do not vary along its axes.
    """
    sets = []
    for v, t in zip(inputs, tracked):
        if t is None:
            continue
        vs = st.shape(v)
        if vs is None:
            return tracked
        sets.append((frozenset(a + r - len(vs) for a in t.axes), v, t))
    distinct = {s for s, _, _ in sets}
    if len(distinct) < 2 or sum(len(s) for s in distinct) != len(frozenset().union(*distinct)):
        return tracked  # one layout, or overlapping layouts (unified as before)
    for s, v, _ in sets:
        vs = st.shape(v)
        sh = r - len(vs)
        if any(a not in s and a - sh >= 0 and vs[a - sh] != 1 for s2 in distinct for a in s2):
            return tracked  # an operand varies along another's channel axis: not an outer product
    keep = max(sets, key=lambda e: np.unique(e[2].ids).size)[0]  # ties: the first operand
    out = list(tracked)
    for i, (v, t) in enumerate(zip(inputs, tracked)):
        if t is None:
            continue
        vs = st.shape(v)
        if frozenset(a + r - len(vs) for a in t.axes) != keep:
            st.poison(t.ids, f"{node.op_type} '{node.name}' is an outer product of channels on different axes "
                             "(only the larger side is followed)")
            out[i] = None
    return out


def _elementwise(st: ChannelState, node: ir.Node) -> None:
    y = node.outputs[0]
    ys = st.shape(y)
    op = node.op_type
    inputs = list(node.inputs)
    first = 1 if op == "Where" else 0
    tracked = [st.track(v) for v in inputs]
    if not any(t is not None for t in tracked):
        return
    if ys is None:
        barrier(st, node, f"{op} '{node.name}' with unknown output shape")
        return
    r = len(ys)
    tracked = _outer_product(st, node, inputs, tracked, r)
    axes = tuple(sorted({a + (r - len(st.shape(v))) for v, t in zip(inputs, tracked) if t is not None for a in t.axes}))
    full = tuple(ys[a] for a in axes)
    ids_list, zeros = [], []
    out_ids = None
    for i, (v, t) in enumerate(zip(inputs, tracked)):
        if v is None:
            continue
        vs = st.shape(v)
        if vs is None:
            barrier(st, node, f"{op} '{node.name}' input with unknown shape")
            return
        sh = r - len(vs)
        varying = [a for a in axes if a - sh >= 0 and vs[a - sh] > 1]
        if t is not None:
            tt = Track(tuple(a + sh for a in t.axes), t.ids, t.zero)
            ids, zero = expand(tt, axes, ys)
            ids_list.append(ids)
            if i >= first:
                zeros.append(zero)
            continue
        if not varying:
            if i >= first:
                zeros.append(None if _is_zero_const(st, v) else False)
            continue
        # An untracked operand that varies along a channel axis.
        if st.is_data(v):
            ids_list.append(None)
            st.poison(np.concatenate([x.ravel() for x in ids_list if x is not None]) if any(
                x is not None for x in ids_list) else None,
                f"{op} '{node.name}' combines channels with an untracked data input")
            # poison the rest too (after the loop)
            for t2 in tracked:
                if t2 is not None:
                    st.poison(t2.ids, f"{op} '{node.name}' combines channels with an untracked data input")
            return
        if len(varying) > 1:
            for t2 in tracked:
                if t2 is not None:
                    st.poison(t2.ids, f"{op} '{node.name}' constant operand varies along several channel axes")
            return
        a = varying[0]
        ref = next(t2 for t2 in tracked if t2 is not None)
        rref = r - len(st.shape(inputs[tracked.index(ref)]))
        tt = Track(tuple(x + rref for x in ref.axes), ref.ids, ref.zero)
        ids_a, _ = expand(tt, axes, ys)
        k = axes.index(a)
        col = np.moveaxis(ids_a, k, -1).reshape(-1, ys[a])[0]
        src = st.param_source(v, a - sh, values=True)
        if src is not None:
            # entries seen through Exp/Neg/...: removed with the group, never claimed zero
            trainable = src[0] in st.trainable and is_pure_source(src[2])
            st.add_param(src[0], src[1], col, node, f"{op.lower()}-operand", trainable=trainable, via=src[2])
            if i >= first:
                if op in ("Add", "Sub"):
                    zeros.append(None if trainable or _is_zero_const(st, v) else False)
                elif op == "Mul":
                    zeros.append(True if trainable else None)
                elif op == "Div" and i == 1:
                    zeros.append(None)
                else:
                    zeros.append(False)
        else:
            st.poison(col, f"{op} '{node.name}' constant operand computed in the graph varies along a channel axis")
            if i >= first:
                zeros.append(False)
    for ids in ids_list[1:]:
        st.unify(ids_list[0], ids)
    out_ids = np.ascontiguousarray(np.broadcast_to(ids_list[0], full))
    zarrs = [z for z in zeros if z is not None and not isinstance(z, bool)]
    consts = [z for z in zeros if isinstance(z, bool)]
    if op in _ZERO_ANY:
        z = np.zeros(full, bool)
        for za in zarrs:
            z = z | np.broadcast_to(za, full)
        if any(consts):
            z[...] = True
    elif op == "Div":
        z0 = zeros[0] if zeros else False
        z = np.broadcast_to(z0, full).copy() if not isinstance(z0, bool) and z0 is not None else np.full(full, bool(z0))
    elif op in _ZERO_ALL:
        z = np.ones(full, bool)
        for za in zarrs:
            z = z & np.broadcast_to(za, full)
        if any(c is False for c in consts):
            z[...] = False
    else:
        z = np.zeros(full, bool)
    st.set(y, Track(axes, out_ids, z))


def _is_zero_const(st: ChannelState, v: ir.Value) -> bool:
    c = st.shapes.const(v)
    return c is not None and np.all(c == 0)


def _identity(st: ChannelState, node: ir.Node) -> None:
    t = st.track(node.inputs[0])
    if t is None:
        return
    rule = st.vc.info[node].rule
    keeps = rule.maps_zero if rule is not None else False
    if node.op_type == "Clip":
        lo = st.shapes.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
        hi = st.shapes.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        amin, amax = _attr(node, "min", None), _attr(node, "max", None)
        lo = amin if lo is None else float(lo)
        hi = amax if hi is None else float(hi)
        keeps = (lo is None or lo <= 0) and (hi is None or hi >= 0)
        _rest_untracked(st, node)
    if node.op_type == "Pad":
        mode = _attr(node, "mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        pads = st.shapes.const(node.inputs[1]) if len(node.inputs) > 1 else None
        xs = st.shape(node.inputs[0])
        if pads is None or xs is None:
            barrier(st, node, f"Pad '{node.name}' with computed pads")
            return
        axes_in = st.shapes.const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
        axes_l = [int(a) % len(xs) for a in axes_in] if axes_in is not None else list(range(len(xs)))
        n = len(axes_l)
        for k, a in enumerate(axes_l):
            if a in t.axes and (int(pads[k]) != 0 or int(pads[k + n]) != 0):
                barrier(st, node, f"Pad '{node.name}' pads a channel axis")
                return
        cval = st.shapes.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        keeps = mode in ("reflect", "edge") or (mode == "constant" and (cval is None or np.all(cval == 0)))
    if node.op_type == "Resize":
        xs, ys = st.shape(node.inputs[0]), st.shape(node.outputs[0])
        if xs is None or ys is None or any(xs[a] != ys[a] for a in t.axes):
            barrier(st, node, f"Resize '{node.name}' resizes a channel axis")
            return
    zero = t.zero if keeps else np.zeros(t.ids.shape, bool)
    st.set(node.outputs[0], Track(t.axes, t.ids, zero))


def _reduce(st: ChannelState, node: ir.Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    t = st.track(x)
    if t is None:
        return
    xs, ys = st.shape(x), st.shape(y)
    if xs is None or ys is None:
        barrier(st, node, f"{node.op_type} '{node.name}' with unknown shapes")
        return
    op = node.op_type
    r = len(xs)
    if op in ("Softmax", "LogSoftmax", "Hardmax", "CumSum", "ArgMax", "ArgMin"):
        if op == "CumSum":
            ax = st.shapes.const(node.inputs[1])
            axes = [] if ax is None else [int(ax) % r]
            if ax is None:
                barrier(st, node, f"CumSum '{node.name}' with a computed axis")
                return
        else:
            axes = [_norm_axis(int(_attr(node, "axis", -1)), r)]
        if any(a in t.axes for a in axes):
            barrier(st, node, f"{op} '{node.name}' normalises or reduces over a channel axis")
            return
        keep = op == "CumSum"
        if op in ("ArgMax", "ArgMin") and not _attr(node, "keepdims", 1):
            sh = {a: a - sum(1 for b in axes if b < a) for a in t.axes}
            st.set(y, Track(tuple(sh[a] for a in t.axes), t.ids, np.zeros(t.ids.shape, bool)))
            return
        st.set(y, Track(t.axes, t.ids, t.zero if keep else np.zeros(t.ids.shape, bool)))
        return
    # Reduce*: axes from the attribute or the second input.
    axes_v = None
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        c = st.shapes.const(node.inputs[1])
        if c is None:
            barrier(st, node, f"{op} '{node.name}' with computed axes")
            return
        axes_v = [int(a) % r for a in np.atleast_1d(c)]
    else:
        a = _attr(node, "axes", None)
        axes_v = [int(x) % r for x in a] if a is not None else None
    if axes_v is None or len(axes_v) == 0:
        if _attr(node, "noop_with_empty_axes", 0):
            st.set(y, t)
            return
        axes_v = list(range(r))
    if any(a in t.axes for a in axes_v):
        barrier(st, node, f"{op} '{node.name}' reduces over a channel axis")
        return
    keepdims = _attr(node, "keepdims", 1)
    rule = st.vc.info[node].rule
    zero = t.zero if (rule is not None and rule.maps_zero) else np.zeros(t.ids.shape, bool)
    if keepdims:
        st.set(y, Track(t.axes, t.ids, zero))
    else:
        st.set(y, Track(tuple(a - sum(1 for b in axes_v if b < a) for a in t.axes), t.ids, zero))


# -- data movement --------------------------------------------------------------------------------
def _concat(st: ChannelState, node: ir.Node) -> None:
    y = node.outputs[0]
    ys = st.shape(y)
    inputs = [v for v in node.inputs if v is not None]
    tracks = [st.track(v) for v in inputs]
    if not any(t is not None for t in tracks):
        return
    if ys is None:
        barrier(st, node, f"Concat '{node.name}' with unknown output shape")
        return
    r = len(ys)
    axis = _norm_axis(int(_attr(node, "axis", 0)), r)
    taxes = sorted({a for t in tracks if t is not None for a in t.axes})
    if axis in taxes:
        pieces, zpieces = [], []
        for v, t in zip(inputs, tracks):
            vs = st.shape(v)
            if vs is None:
                barrier(st, node, f"Concat '{node.name}' input with unknown shape")
                return
            if t is None or axis not in t.axes:
                fresh = st.fresh(tuple(vs[a] for a in taxes))
                st.poison(fresh, f"Concat '{node.name}' stacks channels with an untracked or constant input")
                if t is not None:
                    st.poison(t.ids, f"Concat '{node.name}' stacks channels with an untracked input")
                pieces.append(fresh)
                zpieces.append(np.zeros(fresh.shape, bool))
                continue
            ids, zero = expand(t, tuple(taxes), vs)
            pieces.append(ids)
            zpieces.append(zero)
        k = taxes.index(axis)
        st.set(y, Track(tuple(taxes), np.concatenate(pieces, axis=k), np.concatenate(zpieces, axis=k)))
        return
    # Concatenation along an axis without channels: all inputs share the channel atoms.
    ids0 = None
    zs = []
    for v, t in zip(inputs, tracks):
        vs = st.shape(v)
        if t is None:
            if vs is not None and any(vs[a] > 1 for a in taxes):
                src = st.param_source(v, taxes[0]) if len(taxes) == 1 and not st.is_data(v) else None
                if src is not None:
                    ref = next(tt for tt in tracks if tt is not None)
                    st.add_param(src[0], src[1], ref.ids, node, "concat-operand", via=src[2])
                    zs.append(np.ones(ref.ids.shape, bool) if src[0] in st.trainable else np.zeros(ref.ids.shape, bool))
                    continue
                for t2 in tracks:
                    if t2 is not None:
                        st.poison(t2.ids, f"Concat '{node.name}' joins channels with an untracked input along another axis")
                zs.append(np.zeros(1, bool))
            continue
        ids, zero = expand(t, tuple(taxes), vs)
        if ids0 is None:
            ids0 = ids
        else:
            st.unify(ids0, ids)
        zs.append(zero)
    z = np.ones(ids0.shape, bool)
    for za in zs:
        z = z & np.broadcast_to(za, ids0.shape)
    st.set(y, Track(tuple(taxes), np.ascontiguousarray(ids0), z))


def slice_bounds(node: ir.Node, st_shapes, xs: tuple[int, ...]) -> dict[int, tuple[int, int, int]] | None:
    """Normalised ``{axis: (start, stop, step)}`` of a Slice node (None if not constant)."""
    c = st_shapes.const
    starts, ends = c(node.inputs[1]), c(node.inputs[2])
    if starts is None or ends is None:
        return None
    axes = c(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else np.arange(len(starts))
    steps = c(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else np.ones(len(starts), np.int64)
    if axes is None or steps is None:
        return None
    out = {}
    for s, e, a, k in zip(starts, ends, axes, steps):
        a = int(a) % len(xs)
        out[a] = slice(int(s), int(e), int(k)).indices(xs[a])
    return out


def _slice(st: ChannelState, node: ir.Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    t = st.track(x)
    if t is None:
        return
    xs = st.shape(x)
    b = slice_bounds(node, st.shapes, xs) if xs is not None else None
    if b is None:
        barrier(st, node, f"Slice '{node.name}' with computed bounds")
        return
    idx = [slice(None)] * len(t.axes)
    for a, (s, e, k) in b.items():
        if a in t.axes:
            if k != 1:
                barrier(st, node, f"Slice '{node.name}' with a step on a channel axis")
                return
            idx[t.axes.index(a)] = slice(s, e, k)
    ids = t.ids[tuple(idx)]
    # positions outside the slice are dropped: nothing required (they do not reach y)
    st.set(y, Track(t.axes, ids, t.zero[tuple(idx)]))


def split_sizes(node: ir.Node, st_shapes, xs: tuple[int, ...]) -> list[int] | None:
    """Sizes of the pieces of a Split node (None if not constant)."""
    axis = _norm_axis(int(_attr(node, "axis", 0)), len(xs))
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        c = st_shapes.const(node.inputs[1])
        return None if c is None else [int(v) for v in c]
    a = _attr(node, "split", None)
    if a is not None:
        return [int(v) for v in a]
    n = _attr(node, "num_outputs", None) or len(node.outputs)
    d = xs[axis]
    per = -(-d // n)
    return [min(per, d - per * i) for i in range(n)]


def _split(st: ChannelState, node: ir.Node) -> None:
    x = node.inputs[0]
    t = st.track(x)
    if t is None:
        return
    xs = st.shape(x)
    axis = _norm_axis(int(_attr(node, "axis", 0)), len(xs))
    sizes = split_sizes(node, st.shapes, xs)
    if sizes is None:
        barrier(st, node, f"Split '{node.name}' with computed sizes")
        return
    if axis not in t.axes:
        for o in node.outputs:
            st.set(o, Track(t.axes, t.ids, t.zero))
        return
    k = t.axes.index(axis)
    start = 0
    for o, s in zip(node.outputs, sizes):
        sl = [slice(None)] * len(t.axes)
        sl[k] = slice(start, start + s)
        st.set(o, Track(t.axes, t.ids[tuple(sl)], t.zero[tuple(sl)]))
        start += s


def _reshape(st: ChannelState, node: ir.Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    t = st.track(x)
    if t is None:
        _rest_untracked(st, node)
        return
    xs, ys = st.shape(x), st.shape(y)
    if xs is None or ys is None:
        barrier(st, node, f"{node.op_type} '{node.name}' with unknown shapes")
        return
    _rest_untracked(st, node)
    t2 = reshape_track(st, t, xs, ys, node)
    if t2 is not None:
        st.set(y, t2)


def _transpose(st: ChannelState, node: ir.Node) -> None:
    t = st.track(node.inputs[0])
    if t is None:
        return
    xs = st.shape(node.inputs[0])
    perm = _attr(node, "perm", None)
    perm = list(perm) if perm is not None else list(reversed(range(len(xs))))
    st.set(node.outputs[0], transpose_track(t, perm))


def _expand(st: ChannelState, node: ir.Node) -> None:
    x, y = node.inputs[0], node.outputs[0]
    t = st.track(x)
    _rest_untracked(st, node)
    if t is None:
        return
    xs, ys = st.shape(x), st.shape(y)
    if xs is None or ys is None:
        barrier(st, node, f"Expand '{node.name}' with unknown shapes")
        return
    sh = len(ys) - len(xs)
    if any(d % SENTINEL == 0 and (j < sh or xs[j - sh] != d) for j, d in enumerate(ys)):
        # the target's symbolic size comes from a computed shape: no constant target is exact
        barrier(st, node, f"Expand '{node.name}' broadcasts channels to a symbolic size")
        return
    st.set(y, Track(tuple(a + sh for a in t.axes), t.ids, t.zero))


def shape_provenance(st: ChannelState, v: ir.Value | None, depth: int = 0) -> list | None:
    """Where the entries of a 1-D shape tensor come from.

    Follows ``Shape -> Gather -> Unsqueeze -> Concat`` chains (and Cast, Identity, Squeeze).

    Returns:
        One entry per element: ``(value, axis)`` when it is ``value.shape[axis]`` read at run
        time, None when it is a literal constant; or None when not known.
    """
    if v is None or depth > 32:
        return None
    node = v.producer()
    if node is None or node.op_type == "Constant":
        c = st.shapes.const(v)
        return None if c is None else [None] * int(np.asarray(c).size)
    op = node.op_type
    if op == "Shape":
        src = node.inputs[0]
        ss = st.shape(src)
        if ss is None:
            return None
        start, end = slice(int(_attr(node, "start", 0)), _attr(node, "end", None)).indices(len(ss))[:2]
        return [(src, a) for a in range(start, end)]
    if op in ("Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape"):
        return shape_provenance(st, node.inputs[0], depth + 1)
    if op == "Gather":
        idx = st.shapes.const(node.inputs[1])
        p = shape_provenance(st, node.inputs[0], depth + 1)
        if idx is None or p is None or int(_attr(node, "axis", 0)) != 0:
            return None
        return [p[int(i)] for i in np.atleast_1d(idx).ravel()]
    if op == "Concat":
        out: list = []
        for x in node.inputs:
            p = shape_provenance(st, x, depth + 1)
            if p is None:
                return None
            out += p
        return out
    return None


def _constant_of_shape(st: ChannelState, node: ir.Node) -> None:
    """A uniform tensor whose shape is read at run time from tracked values follows their channels.

    ``zeros(x.shape[0], x.shape[1], n)`` (Mamba's initial scan state) shrinks with ``x`` when
    ``x``'s channels go, since its shape is computed from ``x``. Axes with literal sizes, or
    read from values not tracked on a single axis there, are not followed.
    """
    y = node.outputs[0]
    prov = shape_provenance(st, node.inputs[0]) if node.inputs else None
    ys = st.shape(y)
    if prov is None or ys is None or len(prov) != len(ys):
        return
    axes, ids = [], []
    for k, p in enumerate(prov):
        if p is None:
            continue
        t = st.track(p[0])
        if t is None or p[1] not in t.axes:
            continue
        if len(t.axes) != 1:
            return  # several channel axes in the source: not followed
        axes.append(k)
        ids.append(t.ids)
    if len(axes) != 1:
        return
    a = node.attributes.get("value")
    fill = a.value.numpy().reshape(-1)[0] if a is not None else 0
    st.set(y, Track((axes[0],), ids[0], np.full(ids[0].shape, bool(fill == 0))))


def _dropout(st: ChannelState, node: ir.Node) -> None:
    t = st.track(node.inputs[0])
    if t is not None:
        st.set(node.outputs[0], Track(t.axes, t.ids, t.zero))


def _shape_only(st: ChannelState, node: ir.Node) -> None:
    """Shape/Size read metadata only: the channel counts they see are re-evaluated after pruning."""


Handler = Callable[[ChannelState, "ir.Node"], None]

#: Handlers by op type (checked before the rule's channel map).
HANDLERS: dict[str, Handler] = {
    "Conv": _conv,
    "ConvTranspose": _conv,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Gather": _gather,
    "BatchNormalization": _per_channel,
    "InstanceNormalization": _per_channel,
    "GroupNormalization": _per_channel,
    "LayerNormalization": _per_channel,
    "PRelu": _per_channel,
    "Concat": _concat,
    "Slice": _slice,
    "Split": _split,
    "Reshape": _reshape,
    "Flatten": _reshape,
    "Squeeze": _reshape,
    "Unsqueeze": _reshape,
    "Transpose": _transpose,
    "Expand": _expand,
    "Dropout": _dropout,
    "Shape": _shape_only,
    "Size": _shape_only,
}

#: Handlers by channel map.
MAP_HANDLERS: dict[ChannelMap, Handler] = {
    ChannelMap.IDENTITY: _identity,
    ChannelMap.BROADCAST: _elementwise,
    ChannelMap.REDUCE: _reduce,
}


def propagate_node(st: ChannelState, node: ir.Node) -> None:
    """Propagates channel atoms through one node."""
    info = st.vc.info.get(node)
    if info is not None and node.op_type == "ConstantOfShape":
        _constant_of_shape(st, node)
        return
    if info is None or info.kind is VertexKind.CONSTANT:
        return
    if info.kind is VertexKind.UNKNOWN or info.rule is None:
        barrier(st, node, f"{info.reason} ('{node.name}')")
        return
    fn = HANDLERS.get(node.op_type)
    if fn is None:
        fn = MAP_HANDLERS.get(info.rule.channel_map)
    if fn is None:
        barrier(st, node, f"{node.op_type} '{node.name}': channel map {info.rule.channel_map.value} is a barrier")
        return
    fn(st, node)


def components(n: int, edges: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Union-find over ``n`` atoms: returns the root (smallest atom) of each atom's class.

    Vectorised hooking and pointer jumping; linear in the number of edges per round.
    """
    parent = np.arange(n, dtype=np.int64)
    if not edges:
        return parent
    a = np.concatenate([e[0] for e in edges])
    b = np.concatenate([e[1] for e in edges])
    while True:
        pa, pb = parent[a], parent[b]
        diff = pa != pb
        if not np.any(diff):
            break
        a, b = a[diff], b[diff]
        pa, pb = pa[diff], pb[diff]
        lo, hi = np.minimum(pa, pb), np.maximum(pa, pb)
        np.minimum.at(parent, hi, lo)
        while True:
            pp = parent[parent]
            if np.array_equal(pp, parent):
                break
            parent = pp
    return parent
