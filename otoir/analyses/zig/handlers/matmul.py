"""Channel handler of ONNX MatMul (``ChannelMap.MATMUL``): linear layers and products of data.

With one constant operand it is a stem (``X @ W``: the columns of W set the output features;
``W @ X``: the rows of W set the rows of the output). With two data operands, batch axes
broadcast, K is contracted, M comes from the left and N from the right operand; a tracked axis
both operands index can be sliced only if the other operand is sliced alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from otoir.analyses.zig.handlers.common import barrier, consume
from otoir.analyses.zig.reshape import squeeze_static
from otoir.analyses.zig.state import ChannelState, Track, attr
from otoir.ops.rules import normalize_axis

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["matmul"]


def matmul(st: ChannelState, node: ir.Node) -> None:
    """ONNX MatMul (numpy matmul semantics)."""
    a, b = node.inputs[0], node.inputs[1]
    y = node.outputs[0]
    as_, bs, ys = st.shape(a), st.shape(b), st.shape(y)
    # Mixture-of-experts weights picked per token (Gather of a stacked (E, out, in) parameter by
    # the router's expert ids): a batched linear layer whose rows are the experts' units. Only
    # the output's and the parameter's shapes are needed (the token operand is often computed
    # by Tile/Flatten of unknown static shape).
    if ys is not None and len(ys) == 3:
        for left, w, x in ((True, a, b), (False, b, a)):
            g = _routed_gather(st, w)
            if g is not None and st.track(w) is None:
                _routed_linear(st, node, g, data=x, left=left)
                return
    if as_ is None or bs is None or ys is None or len(as_) < 2 or len(bs) < 2:
        barrier(st, node, f"MatMul '{node.name}' with unknown or 1-D shapes")
        return
    r = len(ys)
    da, db = st.is_data(a), st.is_data(b)
    if da and not db:  # X @ W: W's columns (axis 1) set the output features; X's last axis meets W's rows
        _linear(st, node, data=a, weight=b, out_axis=1, in_axis=0, data_axis=-1, y_axis=-1, what="operand")
        return
    if not da:
        if not db:
            return
        # W @ X with a constant 2-D W (Mamba's dt_proj): output rows (axis -2) are W's rows;
        # X's axis -2 is contracted with W's columns.
        _linear(st, node, data=b, weight=a, out_axis=0, in_axis=1, data_axis=-2, y_axis=-2, what="left operand")
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
    ids2, zero2, axes2 = squeeze_static(ids_c, z_c, out_axes)
    st.set(y, Track(tuple(axes2), ids2, zero2))


def _linear(st: ChannelState, node: ir.Node, *, data: ir.Value, weight: ir.Value, out_axis: int, in_axis: int,
            data_axis: int, y_axis: int, what: str) -> None:
    """A MatMul with one constant 2-D operand: a stem.

    The weight's ``out_axis`` makes the output's ``y_axis`` (fresh channels); its ``in_axis`` is
    contracted with the data operand's ``data_axis`` (the data's channels, when tracked there,
    remove the weight's entries along ``in_axis`` with them).
    """
    ws, xs, ys = st.shape(weight), st.shape(data), st.shape(node.outputs[0])
    src_out = st.param_source(weight, out_axis) if len(ws) == 2 else None
    src_in = st.param_source(weight, in_axis) if len(ws) == 2 else None
    if src_out is None or src_in is None:
        barrier(st, node, f"MatMul '{node.name}' with a computed or batched constant {what}")
        return
    rx, r = len(xs), len(ys)
    t = st.track(data)
    if t is not None and t.axes != (rx + data_axis,):
        st.poison(t.ids, f"MatMul '{node.name}' {'input' if data_axis == -1 else 'right operand'} carries channels on an "
                         f"axis other than {'the last' if data_axis == -1 else data_axis}")
        t = None
    n = ys[y_axis]
    ids = st.fresh((n,), node)
    st.add_param(src_out[0], src_out[1], ids, node, "weight-rows", via=src_out[2])
    if t is not None:
        consume(st, node, t, rx + data_axis, None)
        st.add_param(src_in[0], src_in[1], t.ids, node, "weight-columns", trainable=False, via=src_in[2])
    st.set(node.outputs[0], Track((r + y_axis,), ids, np.ones(n, dtype=bool)))


def _routed_gather(st: ChannelState, v: ir.Value) -> ir.Node | None:
    """The ``Gather`` node when ``v = Gather(W, ids, axis=0)`` with 1-D data ``ids`` and a parameter ``W``.

    This is how a mixture-of-experts layer exported in batched form (``transformers``'
    ``batched_mm`` experts: ``gate_up_proj[expert_ids]``) picks each token's expert weights:
    axis 0 of the result is the token(-expert pair), the other axes are the parameter's.
    """
    n = v.producer()
    if n is None or n.op_type != "Gather" or n.domain not in ("", "ai.onnx") or len(n.inputs) < 2:
        return None
    w, ids = n.inputs[0], n.inputs[1]
    ws, is_ = st.shape(w), st.shape(ids)
    if ws is None or is_ is None or len(is_) != 1 or len(ws) != 3:
        return None
    if normalize_axis(int(attr(n, "axis", 0)), len(ws)) != 0 or st.shapes.const(ids) is not None:
        return None
    return n


def _routed_linear(st: ChannelState, node: ir.Node, gather: ir.Node, *, data: ir.Value, left: bool) -> None:
    """``W[ids] @ X`` (``left``: W (E, out, in), X (S, in, 1)) or ``X @ W[ids]`` (W (E, in, out), X (S, 1, in)).

    Unit ``j`` of the output is row ``j`` of *every* expert (the stacked parameter keeps one
    width for all experts), so a group is "unit j of all experts": zeroing it zeroes output
    ``j`` for every token whatever the routing, and slicing axis ``out`` of the stacked
    parameter removes it. The router (Softmax over experts, TopK, the gathers of token ids)
    only selects which expert's rows a token sees and scales the result per token: it never
    touches the unit axis. A tracked data axis is contracted with axis ``in``.
    """
    w = gather.inputs[0]
    out_axis, in_axis = (1, 2) if left else (2, 1)
    src_out, src_in = st.param_source(w, out_axis), st.param_source(w, in_axis)
    if src_out is None or src_in is None:
        barrier(st, node, f"MatMul '{node.name}' with experts' weights gathered from a computed tensor")
        return
    ys = st.shape(node.outputs[0])
    data_axis, y_axis = (1, 1) if left else (2, 2)
    t = st.track(data)
    if t is not None and t.axes != (data_axis,):
        st.poison(t.ids, f"MatMul '{node.name}' (experts' weights) data carries channels on an axis other than "
                         f"the contracted one")
        t = None
    n = ys[y_axis]
    ids = st.fresh((n,), node)
    st.add_param(src_out[0], src_out[1], ids, node, "expert-weight-rows", via=(*src_out[2], gather))
    if t is not None:
        consume(st, node, t, data_axis, None)
        st.add_param(src_in[0], src_in[1], t.ids, node, "expert-weight-columns", trainable=False,
                     via=(*src_in[2], gather))
    st.set(node.outputs[0], Track((y_axis,), ids, np.ones(n, dtype=bool)))
