"""Channel handlers of the ZIG analysis, selected by the op's rule and nothing else.

:func:`handler_for` maps a rule's ``(channel_map, channel_variant)`` to the function that
propagates channel atoms through a node (an IDENTITY rule with ``params`` gets the per-channel
handler). There is no table keyed by op type: an op is known only through its rule in
:mod:`otoir.ops.rules` (user rules first), so a custom-domain op behaves as its rule declares
and an op without a rule is a barrier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from otoir.analyses.zig.handlers.common import barrier
from otoir.analyses.zig.handlers.elementwise import clip, elementwise, identity, pad, resize
from otoir.analyses.zig.handlers.fill import constant_of_shape
from otoir.analyses.zig.handlers.matmul import matmul
from otoir.analyses.zig.handlers.movement import concat, expand_op, reshape, slice_op, split, transpose
from otoir.analyses.zig.handlers.norms import group_norm, layer_norm, per_channel, rms_norm
from otoir.analyses.zig.handlers.reduce import reduce_axes, reduce_axis, reduce_axis_input
from otoir.analyses.zig.handlers.stems import constant_lookup, conv, gather, gemm
from otoir.analyses.zig.state import ChannelState
from otoir.infra.diagnostics import op_label
from otoir.ops.rules import ChannelMap, OpRule, VertexKind

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["Handler", "CHANNEL_HANDLERS", "handler_for", "propagate_node", "barrier"]

#: ``handler(state, node)``: propagates channel atoms from a node's inputs to its outputs.
Handler = Callable[[ChannelState, "ir.Node"], None]


def _barrier_map(st: ChannelState, node: ir.Node) -> None:
    barrier(st, node, f"{node.op_type} '{node.name}': channel map barrier is a barrier")


_M = ChannelMap

#: Handler by ``(channel_map, channel_variant)``; covers every pair of
#: :data:`otoir.ops.rules.CHANNEL_VARIANTS` (a test checks it).
CHANNEL_HANDLERS: dict[tuple[ChannelMap, str], Handler] = {
    (_M.PRODUCE, ""): conv,
    (_M.PRODUCE, "gemm"): gemm,
    (_M.IDENTITY, ""): identity,
    (_M.IDENTITY, "layer-norm"): layer_norm,
    (_M.IDENTITY, "rms-norm"): rms_norm,
    (_M.IDENTITY, "group-norm"): group_norm,
    (_M.IDENTITY, "clip"): clip,
    (_M.IDENTITY, "pad"): pad,
    (_M.IDENTITY, "resize"): resize,
    (_M.BROADCAST, ""): elementwise,
    (_M.BROADCAST, "expand"): expand_op,
    (_M.CONCAT, ""): concat,
    (_M.SPLIT, ""): split,
    (_M.SLICE, ""): slice_op,
    (_M.FLATTEN, ""): reshape,
    (_M.RESHAPE, ""): reshape,
    (_M.RESHAPE, "target"): reshape,
    (_M.TRANSPOSE, ""): transpose,
    (_M.MATMUL, ""): matmul,
    (_M.GATHER, ""): gather,
    (_M.REDUCE, ""): reduce_axes,
    (_M.REDUCE, "axis"): reduce_axis,
    (_M.REDUCE, "axis-input"): reduce_axis_input,
    (_M.FILL, ""): constant_of_shape,
    (_M.BARRIER, ""): _barrier_map,
}


#: Channel maps followed through constant sub-graphs that start at a :func:`constant_lookup`.
_CONSTANT_FLOW = frozenset({_M.TRANSPOSE, _M.RESHAPE, _M.FLATTEN, _M.BROADCAST, _M.SLICE, _M.IDENTITY})


def handler_for(rule: OpRule) -> Handler | None:
    """The handler a rule selects (None: the pair is unknown)."""
    cmap = ChannelMap(rule.channel_map)
    if cmap is ChannelMap.IDENTITY and rule.channel_variant == "" and rule.params:
        return per_channel
    return CHANNEL_HANDLERS.get((cmap, rule.channel_variant))


def propagate_node(st: ChannelState, node: ir.Node) -> None:
    """Propagates channel atoms through one node, as its rule says."""
    info = st.vc.info.get(node)
    if info is None:
        return
    rule = info.rule
    if rule is not None and rule.channel_map is ChannelMap.FILL:
        constant_of_shape(st, node)  # a constant whose shape follows tracked values
        return
    if info.kind is VertexKind.CONSTANT:
        if rule is not None and rule.channel_map is ChannelMap.GATHER and constant_lookup(st, node):
            return  # a parameter table looked up by computed indices (T5's relative position bias)
        if not any(st.track(v) is not None for v in node.inputs) or (rule is not None and rule.data_inputs == ()):
            return  # (Shape, Size: metadata only, as for data values)
        # a constant computed from such a lookup: followed through re-layouts and element-wise
        # ops only; anything else would compute with channels it cannot slice
        if rule is None or rule.channel_map not in _CONSTANT_FLOW:
            barrier(st, node, f"{op_label(node)} '{node.name}' computes a constant from a looked-up parameter table")
            return
    if rule is None:
        barrier(st, node, f"no rule for op {op_label(node)} ('{node.name}'): barrier")
        return
    if info.kind is VertexKind.UNKNOWN:
        barrier(st, node, f"{info.reason} ('{node.name}')")
        return
    fn = handler_for(rule)
    if fn is None:
        barrier(st, node, f"{op_label(node)} '{node.name}': no channel handler for channel map "
                          f"{rule.channel_map.value} variant {rule.channel_variant!r}")
        return
    fn(st, node)
