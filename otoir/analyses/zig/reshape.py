"""Index algebra of the ZIG analysis: broadcasting, reshape factorisation and transposition of tracks.

A reshape is exact when its axes factorise into blocks of equal products (an axis of size C
split into (g, C/g) becomes a 2-D id array, so a channel shuffle is an exact permutation);
multi-axis id arrays are recorded as product constraints on the state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from otoir.analyses.zig.state import ChannelState, Track

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["expand", "squeeze_static", "reshape_blocks", "reshape_track", "transpose_track"]


def expand(t: Track, axes: tuple[int, ...], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Broadcasts a track to a superset of its axes (atoms repeat along new axes)."""
    if t.axes == axes:
        return t.ids, t.zero
    view = [shape[a] if a in t.axes else 1 for a in axes]
    full = [shape[a] for a in axes]
    ids = np.broadcast_to(t.ids.reshape(view), full)
    zero = np.broadcast_to(t.zero.reshape(view), full)
    return ids, zero


def squeeze_static(ids: np.ndarray, zero: np.ndarray, axes: list) -> tuple[np.ndarray, np.ndarray, list]:
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


def _has_multi_axis_block(blocks) -> bool:
    """Whether any factor block spans several axes (its entries are then tied as a product)."""
    return any(len(b) > 1 for b in blocks)


def reshape_track(st: ChannelState, t: Track, sin: tuple[int, ...], sout: tuple[int, ...], node: ir.Node) -> Track | None:
    """Maps a track through a reshape (exact factorisation; records product constraints)."""
    # Size-1 tracked axes carry no variation: beside other tracked axes they are dropped from
    # the track (q, k and v split off a fused projection's (3, heads, dim) rows and squeezed,
    # timm's and SAM's attention); a lone one is a single channel with no axis left to follow.
    single = [k for k, a in enumerate(t.axes) if sin[a] == 1]
    if single:
        if len(single) == len(t.axes):
            st.poison(t.ids, f"a size-1 channel axis is reshaped ({node.op_type} '{node.name}')")
            return None
        ids, zero = t.ids, np.broadcast_to(t.zero, t.ids.shape)
        for k in reversed(single):
            ids, zero = ids.take(0, axis=k), zero.take(0, axis=k)
        t = Track(tuple(a for k, a in enumerate(t.axes) if k not in single), ids, zero)
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
    # Product constraints: one per block with several axes, on the input and the output side.
    if _has_multi_axis_block(bi for bi, _ in tb):
        st.constraints.append(np.ascontiguousarray(ids))
    oshape = [sout[x] for x in out_axes]
    ids = np.ascontiguousarray(ids).reshape(oshape)
    zero = np.ascontiguousarray(zero).reshape(oshape)
    if _has_multi_axis_block(bo for _, bo in tb):
        st.constraints.append(ids)
    ids2, zero2, axes2 = squeeze_static(ids, zero, out_axes)
    return Track(tuple(axes2), ids2, zero2)


def transpose_track(t: Track, perm: list[int]) -> Track:
    """Maps a track through a transposition."""
    out_axes = [i for i in range(len(perm)) if perm[i] in t.axes]
    order = [t.axes.index(perm[i]) for i in out_axes]
    return Track(tuple(out_axes), np.transpose(t.ids, order), np.transpose(t.zero, order))

