"""Channel handler of ``ChannelMap.FILL`` ops: a uniform tensor whose shape is read at run time.

``ConstantOfShape(Shape(x)...)`` follows the channels of the values whose sizes it reads, so it
shrinks with them (:func:`shape_provenance` follows the ``Shape -> Gather -> Unsqueeze ->
Concat`` chains torch exports write).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from otoir.analyses.zig.state import ChannelState, Track, attr
from otoir.ops.rules import ConstFlow

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["shape_provenance", "constant_of_shape"]


def shape_provenance(st: ChannelState, v: ir.Value | None, depth: int = 0) -> list | None:
    """Where the entries of a 1-D shape tensor come from.

    Follows ``Shape -> Gather -> Unsqueeze -> Concat`` chains (and Cast, Identity, Squeeze):
    the producers' rules say how (``const_flow``: ``CONSTANT``, ``SHAPE``, ``SAME``,
    ``RELAYOUT``, ``GATHER`` on axis 0, ``CONCAT``; :class:`~otoir.ops.rules.ConstFlow`).

    Returns:
        One entry per element: ``(value, axis)`` when it is ``value.shape[axis]`` read at run
        time, None when it is a literal constant; or None when not known.
    """
    if v is None or depth > 32:
        return None
    node = v.producer()
    r = st.vc.info[node].rule if node is not None and node in st.vc.info else None
    flow = r.const_flow if r is not None else None
    if node is None or flow is ConstFlow.CONSTANT:
        c = st.shapes.const(v)
        return None if c is None else [None] * int(np.asarray(c).size)
    if flow is ConstFlow.SHAPE:
        src = node.inputs[0]
        ss = st.shape(src)
        if ss is None:
            return None
        start, end = slice(int(attr(node, "start", 0)), attr(node, "end", None)).indices(len(ss))[:2]
        return [(src, a) for a in range(start, end)]
    if flow in (ConstFlow.SAME, ConstFlow.RELAYOUT):
        return shape_provenance(st, node.inputs[0], depth + 1)
    if flow is ConstFlow.GATHER:
        idx = st.shapes.const(node.inputs[1])
        p = shape_provenance(st, node.inputs[0], depth + 1)
        if idx is None or p is None or int(attr(node, "axis", 0)) != 0:
            return None
        return [p[int(i)] for i in np.atleast_1d(idx).ravel()]
    if flow is ConstFlow.CONCAT:
        out: list = []
        for x in node.inputs:
            p = shape_provenance(st, x, depth + 1)
            if p is None:
                return None
            out += p
        return out
    return None


def constant_of_shape(st: ChannelState, node: ir.Node) -> None:
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

