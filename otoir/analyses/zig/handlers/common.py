"""Helpers shared by the channel handlers: contraction, barriers, one-axis views."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from otoir.analyses.zig.state import ChannelState, Track

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["consume", "rest_untracked", "barrier", "only_axis"]


def consume(st: ChannelState, node: ir.Node, t: Track | None, axis: int, param: tuple | None) -> None:
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


def rest_untracked(st: ChannelState, node: ir.Node, skip: int = 1) -> None:
    """Poisons tracked inputs that an op does not follow (e.g. data-dependent params)."""
    for v in node.inputs[skip:]:
        st.poison_track(v, f"channel feeds a non-data input of {node.op_type} '{node.name}'")


def barrier(st: ChannelState, node: ir.Node, reason: str) -> None:
    """Nothing propagates: poison tracked inputs; outputs are untracked."""
    for v in node.inputs:
        st.poison_track(v, reason)


def only_axis(t: Track, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids and zeros of ``t`` along ``axis`` alone (a position is zero if zero along the others)."""
    k = t.axes.index(axis)
    if len(t.axes) == 1:
        return t.ids, t.zero
    ids = np.moveaxis(t.ids, k, -1).reshape(-1, t.ids.shape[k])[0]
    zero = np.all(np.moveaxis(t.zero, k, -1).reshape(-1, t.ids.shape[k]), axis=0)
    return ids, zero
