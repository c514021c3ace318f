"""Channel handlers of per-channel accessories (``ChannelMap.IDENTITY`` rules with parameters).

BatchNormalization, InstanceNormalization and PRelu carry one parameter entry per channel of
axis 1 (the rule's :class:`~otoir.ops.rules.ParamSpec` entries); GroupNormalization ties each
norm group of channels together (variant ``group-norm``), and so does an InstanceNormalization
over rows that are norm groups (torch's GroupNorm export); LayerNormalization normalises the
trailing axes (variant ``layer-norm``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from otoir.analyses.zig.handlers.common import barrier, only_axis
from otoir.analyses.zig.state import ChannelState, Track, attr
from otoir.ops.rules import normalize_axis

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["per_channel", "layer_norm", "rms_norm", "group_norm"]


def _normalised_axes(st: ChannelState, node: ir.Node):
    """``(track, shape, axis, normalised axes)`` of a normalisation over the axes from the
    attribute ``axis`` (default -1) on, or None when its input is untracked or of unknown shape."""
    x = node.inputs[0]
    t = st.track(x)
    xs = st.shape(x)
    if t is None or xs is None:
        return None
    axis = normalize_axis(int(attr(node, "axis", -1)), len(xs))
    return t, xs, axis, tuple(range(axis, len(xs)))


def rms_norm(st: ChannelState, node: ir.Node) -> None:
    """ONNX RMSNormalization (variant ``rms-norm``): exact over the pruned axis.

    ``y = x / sqrt(mean(x²) + eps) * scale`` over the axes from ``axis`` on. Removing k
    positions of n that are exactly zero scales ``mean(x²)`` by n/(n-k); construction
    multiplies ``epsilon`` by n/(n-k) and the scale by its square root, which gives the same
    outputs (recorded in ``st.channel_reductions``). A position that is not zero when its
    group is zeroed would change the statistics: its group is refused.
    """
    got = _normalised_axes(st, node)
    if got is None:
        return
    t, xs, axis, normed = got
    y = node.outputs[0]
    if not any(a in normed for a in t.axes):
        st.set(y, Track(t.axes, t.ids, t.zero.copy()))  # per-position statistics: exact
        return
    if len(normed) != 1 or t.axes != normed:
        barrier(st, node, f"RMSNormalization '{node.name}' over several axes, or with channels on other axes too")
        return
    bad = ~t.zero
    if np.any(bad):
        st.poison(t.ids[bad], f"channel is not zero when its group is zeroed and feeds the statistics of "
                              f"RMSNormalization '{node.name}'")
    p = node.inputs[1] if len(node.inputs) > 1 else None
    zero = t.zero.copy()
    if p is not None and p.is_initializer() and st.shape(p) == (xs[axis],):
        st.add_param(p.name, 0, t.ids, node, "scale")
        zero[...] = True  # a zeroed scale zeroes the output
    elif p is not None and (st.shape(p) or (1,))[-1] != 1:
        st.poison(t.ids, f"RMSNormalization '{node.name}' scale is computed or broadcast")
    st.channel_reductions[node] = (t.ids.ravel().copy(), "rms-norm")
    st.set(y, Track(t.axes, t.ids, zero))


def layer_norm(st: ChannelState, node: ir.Node) -> None:
    """Normalisation over the axes from ``axis`` (default -1) on, scale and bias inputs 1 and 2."""
    got = _normalised_axes(st, node)
    if got is None:
        return
    t, xs, axis, normed = got
    y = node.outputs[0]
    tracked_normed = [a for a in t.axes if a in normed]
    if tracked_normed:
        if len(normed) != 1:
            barrier(st, node, f"LayerNormalization '{node.name}' over several axes with channels")
            return
        st.inexact.append((t.ids, f"LayerNormalization '{node.name}' normalises over the pruned axis "
                                  "(mean/variance change): not exactly zero-invariant; layernorm-invariance makes a "
                                  "pre-LN model exact, prune-channels{allow-inexact=true} removes such groups anyway"))
        ids, _ = only_axis(t, normed[0])
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


def _channel_ids(st: ChannelState, node: ir.Node, t: Track) -> np.ndarray | None:
    """The ids of ``t`` when it carries channels on axis 1 only (else poisons or barriers)."""
    op = node.op_type
    caxis = 1
    if t.axes != (caxis,):
        if caxis in t.axes:
            st.poison(t.ids, f"{op} '{node.name}' input carries channels on several axes")
            return None
        # statistics over axes that carry channels: not followed
        barrier(st, node, f"{op} '{node.name}' normalises over an axis carrying channels")
        return None
    return t.ids


def group_norm(st: ChannelState, node: ir.Node) -> None:
    """Statistics per group of ``num_groups`` channels of axis 1: a norm group is one unit."""
    x, y = node.inputs[0], node.outputs[0]
    t = st.track(x)
    xs = st.shape(x)
    if t is None or xs is None:
        return
    ids = _channel_ids(st, node, t)
    if ids is None:
        return
    g = int(attr(node, "num_groups"))
    c = xs[1]
    for row in ids.reshape(g, c // g):
        st.merge(row)
    st.conv_groups[node] = (g, ids)
    for i, role in ((1, "scale"), (2, "bias")):
        p = node.inputs[i]
        ps = st.shape(p)
        if ps is not None and ps[0] == c:
            st.add_param(p.name, 0, ids, node, role)
        else:
            st.add_param(p.name, 0, ids.reshape(g, c // g)[:, 0], node, role)
    st.set(y, Track(t.axes, t.ids, np.ones(ids.shape, bool)))


def _row_norm(st: ChannelState, node: ir.Node, t: Track) -> None:
    """InstanceNormalization over rows of channel atoms: GroupNorm(G > 1) as torch exports it.

    ``Reshape (N, C, ...) -> (N, G, C/G*...)`` puts norm group g's channels on row g (axis 1),
    the statistics are per row, and a ``Reshape`` back and the affine ``Mul``/``Add`` follow.
    Each row's atoms become one group, so a removed group takes whole rows with it and the
    other rows' statistics do not change: exact (whole norm groups, as ``GroupNormalization``).
    The per-row ``scale`` and ``bias`` (constants of size G) are sliced at construction
    (``st.row_norms``). A zeroed row normalises to ``bias[g]``: zero where that is a constant 0
    that is not trained (torch's export), else the following affine ``Mul`` by the zeroed gamma
    zeroes it.
    """
    y = node.outputs[0]
    ids = t.ids  # [G, L]: every row a norm group
    per_row = []
    for i in (1, 2):
        v = node.inputs[i] if len(node.inputs) > i else None
        a = st.shapes.const(v)
        if a is None or a.shape != (ids.shape[0],):
            barrier(st, node, f"InstanceNormalization '{node.name}' (GroupNorm as torch exports it) has a computed "
                              f"or broadcast {('scale', 'bias')[i - 1]}")
            return
        per_row.append(a)
    for row in ids:
        st.merge(np.unique(row))
    st.row_norms[node] = ids
    zero = np.zeros(ids.shape, bool)
    bias = node.inputs[2]
    if not (bias.is_initializer() and bias.name in st.trainable):  # a trained bias may leave 0
        zero[np.all(t.zero, axis=1) & (per_row[1] == 0)] = True
    st.set(y, Track(t.axes, ids, zero))


def per_channel(st: ChannelState, node: ir.Node) -> None:
    """One entry of each parameter (axis 0) per channel of axis 1 (a scalar parameter is shared).

    The output is zero when the group is zeroed if the rule says ``zero_params_zero_output``
    (BatchNorm with gamma = beta = 0), else where the input is zero if ``maps_zero`` (PRelu).
    """
    x, y = node.inputs[0], node.outputs[0]
    t = st.track(x)
    xs = st.shape(x)
    op = node.op_type
    rule = st.vc.info[node].rule
    if t is None or xs is None:
        return
    if op == "InstanceNormalization" and len(xs) == 3 and t.axes == (1, 2):
        _row_norm(st, node, t)
        return
    if op == "InstanceNormalization" and len(xs) == 3 and t.axes == (2,):
        # torch's GroupNorm export: Reshape (N, C, ...) -> (N, G, C/G*...), InstanceNormalization,
        # Reshape back, affine Mul/Add. Channels merged into axis 2 are normalised together (G = 1:
        # PoolFormer). Zero channels still count in the mean and variance, and removing k of n
        # shifts the mean by a data-dependent amount (unlike RMSNorm, no gain/eps folding makes
        # it exact): flagged inexact like LayerNormalization over the pruned axis.
        st.inexact.append((t.ids, f"InstanceNormalization '{node.name}' (GroupNorm as torch exports it) normalises "
                                  "over the pruned channels (mean/variance change): not exactly zero-invariant"))
        st.set(y, Track(t.axes, t.ids, np.zeros(t.ids.shape, bool)))
        return
    ids = _channel_ids(st, node, t)
    if ids is None:
        return
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
    if rule.zero_params_zero_output:
        zero = np.ones(ids.shape, bool)
    elif rule.maps_zero:
        zero = t.zero.copy()
    else:
        zero = np.zeros(ids.shape, bool)
    st.set(y, Track(t.axes, t.ids, zero))
