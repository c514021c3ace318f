"""Channel handlers of data movement: concat, slice, split, reshape, transpose, expand.

These ops move entries without arithmetic: channel atoms are offset (concat), cut (slice,
split), refactorised (reshape, see :mod:`otoir.analyses.zig.reshape`), permuted (transpose)
or realigned (expand). :func:`slice_bounds` and :func:`split_sizes` are also used by the
channel surgery to rewrite those nodes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from otoir.analyses.shapes import SENTINEL
from otoir.analyses.zig.handlers.common import barrier, rest_untracked
from otoir.analyses.zig.reshape import expand, reshape_track, transpose_track
from otoir.analyses.zig.state import ChannelState, Track, attr
from otoir.infra.diagnostics import op_label
from otoir.ops.rules import normalize_axis

if TYPE_CHECKING:
    import onnx_ir as ir

    from otoir.analyses.shapes import StaticShapes

__all__ = ["concat", "slice_op", "split", "reshape", "transpose", "expand_op", "slice_bounds", "split_sizes"]


def concat(st: ChannelState, node: ir.Node) -> None:
    """Stacking along the axis named by the rule's ``axis_attribute`` (``ChannelMap.CONCAT``)."""
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
    axis = st.vc.info[node].rule.node_axis(node, r)
    if axis is None:
        barrier(st, node, f"{op_label(node)} '{node.name}': a CONCAT rule needs axis_attribute")
        return
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


def slice_bounds(node: ir.Node, st_shapes: StaticShapes, xs: tuple[int, ...]) -> dict[int, tuple[int, int, int]] | None:
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


def slice_op(st: ChannelState, node: ir.Node) -> None:
    """ONNX Slice (starts, ends, axes, steps as inputs 1-4; ``ChannelMap.SLICE``)."""
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


def split_sizes(node: ir.Node, st_shapes: StaticShapes, xs: tuple[int, ...]) -> list[int] | None:
    """Sizes of the pieces of a Split node (None if not constant)."""
    axis = normalize_axis(int(attr(node, "axis", 0)), len(xs))
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        c = st_shapes.const(node.inputs[1])
        return None if c is None else [int(v) for v in c]
    a = attr(node, "split", None)
    if a is not None:
        return [int(v) for v in a]
    n = attr(node, "num_outputs", None) or len(node.outputs)
    d = xs[axis]
    per = -(-d // n)
    return [min(per, d - per * i) for i in range(n)]


def split(st: ChannelState, node: ir.Node) -> None:
    """ONNX Split (``axis``; sizes from input 1, ``split`` or ``num_outputs``; ``ChannelMap.SPLIT``)."""
    x = node.inputs[0]
    t = st.track(x)
    if t is None:
        return
    xs = st.shape(x)
    axis = normalize_axis(int(attr(node, "axis", 0)), len(xs))
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


def reshape(st: ChannelState, node: ir.Node) -> None:
    """Any re-layout of input 0 read from the static shapes (``ChannelMap.RESHAPE``/``FLATTEN``)."""
    x, y = node.inputs[0], node.outputs[0]
    t = st.track(x)
    if t is None:
        rest_untracked(st, node)
        return
    xs, ys = st.shape(x), st.shape(y)
    if xs is None or ys is None:
        barrier(st, node, f"{node.op_type} '{node.name}' with unknown shapes")
        return
    rest_untracked(st, node)
    t2 = reshape_track(st, t, xs, ys, node)
    if t2 is not None:
        st.set(y, t2)


def transpose(st: ChannelState, node: ir.Node) -> None:
    """Axis permutation by the ``perm`` attribute (``ChannelMap.TRANSPOSE``)."""
    t = st.track(node.inputs[0])
    if t is None:
        return
    xs = st.shape(node.inputs[0])
    perm = attr(node, "perm", None)
    perm = list(perm) if perm is not None else list(reversed(range(len(xs))))
    st.set(node.outputs[0], transpose_track(t, perm))


def expand_op(st: ChannelState, node: ir.Node) -> None:
    """ONNX Expand (``ChannelMap.BROADCAST``, variant ``expand``): channels move to the aligned axes."""
    x, y = node.inputs[0], node.outputs[0]
    t = st.track(x)
    rest_untracked(st, node)
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

