"""Channel handlers of reductions and one-axis normalisations (``ChannelMap.REDUCE``).

Channels survive a reduction over other axes. Variants: default (ONNX Reduce*: axes from the
``axes`` attribute or input 1, ``keepdims``, ``noop_with_empty_axes``), ``axis`` (one axis
named by the rule's ``axis_attribute``; Softmax, ArgMax; ``keepdims`` when present) and
``axis-input`` (one axis given by input 1; CumSum). Zero maps to zero where the rule says
``maps_zero``. A reduction over the channel axis itself is followed where the rule's
``channel_reduction`` allows it (:func:`reduce_channels`: RMSNorm's ``ReduceMean(x²)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from otoir.analyses.zig.handlers.common import barrier
from otoir.analyses.zig.state import ChannelState, Track, attr
from otoir.infra.diagnostics import op_label

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["reduce_axes", "reduce_axis", "reduce_axis_input", "reduce_channels"]


def reduce_channels(st: ChannelState, node: ir.Node, t: Track, kind: str) -> None:
    """A reduction over the (only) channel axis of its input: its output carries no channels.

    Removing positions that are exactly zero leaves a sum unchanged and scales a mean by
    n/(n-k) (``kind`` ``"mean"``; construction compensates). A position that is not zero when
    its group is zeroed would change the result: its group is refused, as for a contraction.
    The atoms are recorded in ``st.channel_reductions`` for construction.
    """
    bad = ~t.zero
    if np.any(bad):
        st.poison(t.ids[bad], f"channel is not zero when its group is zeroed and feeds the reduction of "
                              f"{node.op_type} '{node.name}' over the channel axis")
    st.channel_reductions[node] = (t.ids.ravel().copy(), kind)


def _shapes(st: ChannelState, node: ir.Node) -> tuple[Track, int] | None:
    t = st.track(node.inputs[0])
    if t is None:
        return None
    xs, ys = st.shape(node.inputs[0]), st.shape(node.outputs[0])
    if xs is None or ys is None:
        barrier(st, node, f"{node.op_type} '{node.name}' with unknown shapes")
        return None
    return t, len(xs)


def _one_axis(st: ChannelState, node: ir.Node, t: Track, axis: int) -> None:
    y = node.outputs[0]
    if axis in t.axes:
        barrier(st, node, f"{node.op_type} '{node.name}' normalises or reduces over a channel axis")
        return
    zero = t.zero if st.vc.info[node].rule.maps_zero else np.zeros(t.ids.shape, bool)
    if not attr(node, "keepdims", 1):
        st.set(y, Track(tuple(a - (1 if axis < a else 0) for a in t.axes), t.ids, zero))
        return
    st.set(y, Track(t.axes, t.ids, zero))


def reduce_axis(st: ChannelState, node: ir.Node) -> None:
    """One axis named by the rule's ``axis_attribute`` (default ``axis_default``)."""
    got = _shapes(st, node)
    if got is None:
        return
    t, r = got
    axis = st.vc.info[node].rule.node_axis(node, r)
    if axis is None:
        barrier(st, node, f"{op_label(node)} '{node.name}': a REDUCE rule of variant 'axis' needs axis_attribute")
        return
    _one_axis(st, node, t, axis)


def reduce_axis_input(st: ChannelState, node: ir.Node) -> None:
    """One axis given by the constant input 1 (CumSum)."""
    got = _shapes(st, node)
    if got is None:
        return
    t, r = got
    ax = st.shapes.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if ax is None:
        barrier(st, node, f"{node.op_type} '{node.name}' with a computed axis")
        return
    _one_axis(st, node, t, int(ax) % r)


def reduce_axes(st: ChannelState, node: ir.Node) -> None:
    """ONNX Reduce*: axes from the attribute or input 1."""
    got = _shapes(st, node)
    if got is None:
        return
    t, r = got
    op = node.op_type
    y = node.outputs[0]
    # Reduce*: axes from the attribute or the second input.
    axes_v = None
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        c = st.shapes.const(node.inputs[1])
        if c is None:
            barrier(st, node, f"{op} '{node.name}' with computed axes")
            return
        axes_v = [int(a) % r for a in np.atleast_1d(c)]
    else:
        a = attr(node, "axes", None)
        axes_v = [int(x) % r for x in a] if a is not None else None
    if axes_v is None or len(axes_v) == 0:
        if attr(node, "noop_with_empty_axes", 0):
            st.set(y, t)
            return
        axes_v = list(range(r))
    keepdims = attr(node, "keepdims", 1)
    rule = st.vc.info[node].rule
    if any(a in t.axes for a in axes_v):
        if not rule.channel_reduction or len(t.axes) != 1:
            barrier(st, node, f"{op} '{node.name}' reduces over a channel axis")
            return
        reduce_channels(st, node, t, rule.channel_reduction)
        return
    zero = t.zero if (rule is not None and rule.maps_zero) else np.zeros(t.ids.shape, bool)
    if keepdims:
        st.set(y, Track(t.axes, t.ids, zero))
    else:
        st.set(y, Track(tuple(a - sum(1 for b in axes_v if b < a) for a in t.axes), t.ids, zero))

