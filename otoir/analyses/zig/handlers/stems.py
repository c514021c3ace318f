"""Channel handlers of stems: convolutions, fully connected layers and embedding lookups.

A stem allocates fresh channel atoms for its output (its weight rows) and consumes the
channels of its data input (its weight columns, removed with the producer's groups).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from otoir.analyses.vertices import param_specs
from otoir.analyses.zig.handlers.common import barrier, consume
from otoir.analyses.zig.state import ChannelState, Track, attr
from otoir.infra.diagnostics import op_label
from otoir.ops.rules import ParamSpec, VertexKind, normalize_axis

if TYPE_CHECKING:
    import onnx_ir as ir

    from otoir.ops.rules import OpRule

__all__ = ["conv", "gemm", "gather", "constant_lookup"]


def _weight_specs(node: ir.Node, rule: OpRule) -> tuple[ParamSpec | None, ParamSpec | None]:
    """The weight and bias specs of a stem rule (role ``weight``/``bias``, else by position)."""
    specs = param_specs(node, rule)
    w = next((p for p in specs if p.role == "weight"), None)
    b = next((p for p in specs if p.role == "bias"), None)
    return w, b


def _input(node: ir.Node, index: int | None) -> ir.Value | None:
    return node.inputs[index] if index is not None and index < len(node.inputs) else None


def conv(st: ChannelState, node: ir.Node) -> None:
    """A convolution (``ChannelMap.PRODUCE``, default variant).

    The rule's weight :class:`~otoir.ops.rules.ParamSpec` says the layout: ``out_axis=0,
    in_axis=1`` (Conv: ``[C_out, C_in/group, k...]``) or ``out_axis=1, in_axis=0``
    (ConvTranspose: ``[C_in, C_out/group, k...]``); the data input is the first of
    ``data_inputs`` (default 0); the ``group`` attribute (default 1) groups channels; the
    output channels are on axis 1.
    """
    rule = st.vc.info[node].rule
    wspec, bspec = _weight_specs(node, rule)
    if wspec is None or (wspec.out_axis, wspec.in_axis) not in ((0, 1), (1, 0)):
        barrier(st, node, f"{op_label(node)} '{node.name}': a PRODUCE rule needs a weight ParamSpec with "
                          "out_axis=0, in_axis=1 (or 1, 0 for a transposed convolution)")
        return
    x = _input(node, rule.data_inputs[0] if rule.data_inputs else 0)
    w = _input(node, wspec.input)
    b = _input(node, bspec.input if bspec is not None else None)
    y = node.outputs[0]
    ys, ws = st.shape(y), st.shape(w)
    transpose = wspec.out_axis == 1
    out_axis, in_axis = wspec.out_axis, wspec.in_axis
    # the weight itself, or an initializer seen through Squeeze/Unsqueeze (torch Conv1d exports)
    src_o = src_i = None
    if w is not None and w.is_initializer():
        src_o, src_i = (w.name, out_axis, ()), (w.name, in_axis, ())
    elif w is not None and not transpose:
        src_o, src_i = st.param_source(w, out_axis), st.param_source(w, in_axis)
        if src_o is None:  # a weight computed row by row (weight standardization)
            wt = st.weight_transform_source(w)
            if wt is not None:
                src_o, src_i = (wt[0], out_axis, wt[1]), (wt[0], in_axis, wt[1])
    if ys is None or ws is None or src_o is None:
        barrier(st, node, f"Conv '{node.name}' with unknown shapes or a computed weight")
        return
    g = int(attr(node, "group", 1))
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
            consume(st, node, t, 1, src_i)
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
        st.add_param(b.name, bspec.out_axis or 0, ids, node, "bias")
    st.set(y, Track((1,), ids, np.ones(cout, dtype=bool)))


def gemm(st: ChannelState, node: ir.Node) -> None:
    """A fully connected layer with ONNX Gemm's signature (``ChannelMap.PRODUCE``, variant ``gemm``)."""
    kind = st.vc.info[node].kind
    if kind is not VertexKind.STEM:
        barrier(st, node, f"Gemm '{node.name}' of two data operands")
        return
    a, w = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    y = node.outputs[0]
    ys = st.shape(y)
    if attr(node, "transA", 0) or ys is None or not w.is_initializer():
        barrier(st, node, f"Gemm '{node.name}' with transA or computed weight")
        return
    tb = int(attr(node, "transB", 0))
    n = ys[1]
    ids = st.fresh((n,), node)
    st.add_param(w.name, 0 if tb else 1, ids, node, "weight-rows")
    consume(st, node, st.track(a), 1, (w.name, 1 if tb else 0))
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



def gather(st: ChannelState, node: ir.Node) -> None:
    """ONNX Gather (``ChannelMap.GATHER``): an embedding lookup (a stem) or indexing of a data tensor."""
    kind = st.vc.info[node].kind
    table, idx = node.inputs[0], node.inputs[1]
    y = node.outputs[0]
    ys = st.shape(y)
    if kind is VertexKind.STEM:
        ts = st.shape(table)
        if ts is None or ys is None or len(ts) != 2 or normalize_axis(int(attr(node, "axis", 0)), 2) != 0 \
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
    axis = normalize_axis(int(attr(node, "axis", 0)), len(xs))
    if axis in t.axes:
        barrier(st, node, f"Gather '{node.name}' indexes a channel axis")
        return
    ir_ = len(st.shape(idx) or ())
    axes = tuple(a if a < axis else a - 1 + ir_ for a in t.axes)
    st.set(y, Track(axes, t.ids, t.zero))



def constant_lookup(st: ChannelState, node: ir.Node) -> bool:
    """A Gather of a trainable 2-D table (axis 0) by indices computed from shapes or constants.

    T5's relative position bias: ``table[bucket(i - j)]`` is a constant of the graph (no data
    input) whose last axis (the table's columns: attention heads) meets the attention scores.
    Its columns are fresh atoms with the table's columns attached, like an embedding lookup,
    so the heads that use them can take them along. Returns False when ``node`` is not one.
    """
    table, idx = node.inputs[0], node.inputs[1]
    ts, ys = st.shape(table), st.shape(node.outputs[0])
    if table is None or not table.is_initializer() or table.name not in st.trainable or ts is None \
            or len(ts) != 2 or ys is None or normalize_axis(int(attr(node, "axis", 0)), 2) != 0 \
            or idx is None or st.is_data(idx) or st.track(idx) is not None:
        return False
    ids = st.fresh((ts[1],), node)
    st.add_param(table.name, 1, ids, node, "embedding-columns")
    st.set(node.outputs[0], Track((len(ys) - 1,), ids, np.ones(ts[1], bool)))
    return True
