"""Channel handlers of element-wise ops: broadcasting joints and one-input ops that keep positions.

``ChannelMap.BROADCAST`` ops (Add, Mul, Where...) tie the channels of their inputs position by
position; ``ChannelMap.IDENTITY`` ops without parameters map output position p to input
position p (activations, pooling, Cast...), with the variants ``clip`` (zero maps to zero only
when the range contains 0), ``pad`` (no padding of a channel axis; zero kept for constant-0,
reflect and edge modes) and ``resize`` (no resizing of a channel axis).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from otoir.analyses.zig.handlers.common import barrier, rest_untracked
from otoir.analyses.zig.reshape import expand
from otoir.analyses.zig.state import ChannelState, Track, attr
from otoir.ops.rules import ZeroJoin

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["elementwise", "outer_product", "is_zero_const", "identity", "clip", "pad", "resize"]


def outer_product(st: ChannelState, node: ir.Node, inputs: list, tracked: list, r: int) -> list:
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


def elementwise(st: ChannelState, node: ir.Node) -> None:
    """Element-wise ops with numpy broadcasting (``ChannelMap.BROADCAST``): the inputs share channel atoms.

    Where the output is zero once a group is zeroed follows the rule's ``zero_join``
    (:class:`~otoir.ops.rules.ZeroJoin`); a constant operand drawn from a parameter counts
    as zero by the rule's zero semantics (:meth:`~otoir.ops.rules.OpRule.zero_output`).
    """
    y = node.outputs[0]
    ys = st.shape(y)
    op = node.op_type
    rule = st.vc.info[node].rule
    join = rule.zero_join
    inputs = list(node.inputs)
    first = 1 if join is ZeroJoin.SELECT else 0
    tracked = [st.track(v) for v in inputs]
    if not any(t is not None for t in tracked):
        return
    if ys is None:
        barrier(st, node, f"{op} '{node.name}' with unknown output shape")
        return
    r = len(ys)
    tracked = outer_product(st, node, inputs, tracked, r)
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
                zeros.append(None if is_zero_const(st, v) else False)
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
            trainable = src[0] in st.trainable and st.is_pure_source(src[2])
            st.add_param(src[0], src[1], col, node, f"{op.lower()}-operand", trainable=trainable, via=src[2])
            if i >= first:
                zeros.append(_operand_zero(st, node, v, join, trainable))
        elif len(axes) > 1:
            # A computed constant (rotary cos/sin over head_dim) that cannot be sliced along
            # ``a`` while another channel axis (the heads) can: the positions along ``a`` are
            # merged per index of the other axes, so ``a`` is only ever removed whole for those
            # indices (whole heads) and the operand, broadcast over them, keeps its size.
            st.unify(ids_a, ids_a.take([0], axis=k))
            if i >= first:
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
    if join is ZeroJoin.ANY:
        z = np.zeros(full, bool)
        for za in zarrs:
            z = z | np.broadcast_to(za, full)
        if any(consts):
            z[...] = True
    elif join is ZeroJoin.NUMERATOR:
        z0 = zeros[0] if zeros else False
        z = np.broadcast_to(z0, full).copy() if not isinstance(z0, bool) and z0 is not None else np.full(full, bool(z0))
        if rule.zero_output(node, st.is_data, lambda u: False):
            z[...] = False  # the node's zero semantics refuse (Pow with a non-positive exponent)
    elif join in (ZeroJoin.ALL, ZeroJoin.SELECT):
        z = np.ones(full, bool)
        for za in zarrs:
            z = z & np.broadcast_to(za, full)
        if any(c is False for c in consts):
            z[...] = False
    else:
        z = np.zeros(full, bool)
    st.set(y, Track(axes, out_ids, z))


def _operand_zero(st: ChannelState, node: ir.Node, v: ir.Value, join: ZeroJoin | None, trainable: bool):
    """What a constant operand drawn from a parameter contributes to the output's zero positions.

    True: it zeroes the output (``ANY``: a zeroed trainable factor); None: neutral (``ANY``
    otherwise; ``ALL``/``SELECT`` when the rule's zero semantics accept it as zero: a zeroed
    parameter or a zero constant); False: it keeps the output non-zero.
    """
    if join is ZeroJoin.ANY:
        return True if trainable else None
    if join in (ZeroJoin.ALL, ZeroJoin.SELECT):
        zeroed = trainable or is_zero_const(st, v)
        why = st.vc.info[node].rule.zero_output(node, lambda u: u is not None and u is not v,
                                                 lambda u: u is v and zeroed)
        return None if not why else False
    return False


def is_zero_const(st: ChannelState, v: ir.Value) -> bool:
    """Whether ``v`` is a constant that is zero everywhere."""
    c = st.shapes.const(v)
    return c is not None and np.all(c == 0)


def _keep(st: ChannelState, node: ir.Node, t: Track, keeps: bool) -> None:
    zero = t.zero if keeps else np.zeros(t.ids.shape, bool)
    st.set(node.outputs[0], Track(t.axes, t.ids, zero))


def identity(st: ChannelState, node: ir.Node) -> None:
    """Output position p comes from position p of input 0; zero stays zero if the rule ``maps_zero``."""
    t = st.track(node.inputs[0])
    if t is None:
        return
    _keep(st, node, t, st.vc.info[node].rule.maps_zero)


def clip(st: ChannelState, node: ir.Node) -> None:
    """ONNX Clip: identity; zero maps to zero when ``min <= 0 <= max``."""
    t = st.track(node.inputs[0])
    if t is None:
        return
    lo = st.shapes.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    hi = st.shapes.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    amin, amax = attr(node, "min", None), attr(node, "max", None)
    lo = amin if lo is None else float(lo)
    hi = amax if hi is None else float(hi)
    keeps = (lo is None or lo <= 0) and (hi is None or hi >= 0)
    rest_untracked(st, node)
    _keep(st, node, t, keeps)


def pad(st: ChannelState, node: ir.Node) -> None:
    """ONNX Pad (pads as input 1): a channel axis must not be padded."""
    t = st.track(node.inputs[0])
    if t is None:
        return
    mode = attr(node, "mode", "constant")
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
    _keep(st, node, t, mode in ("reflect", "edge") or (mode == "constant" and (cval is None or np.all(cval == 0))))


def resize(st: ChannelState, node: ir.Node) -> None:
    """Spatial resampling: a channel axis must keep its size."""
    t = st.track(node.inputs[0])
    if t is None:
        return
    xs, ys = st.shape(node.inputs[0]), st.shape(node.outputs[0])
    if xs is None or ys is None or any(xs[a] != ys[a] for a in t.axes):
        barrier(st, node, f"Resize '{node.name}' resizes a channel axis")
        return
    _keep(st, node, t, st.vc.info[node].rule.maps_zero)
