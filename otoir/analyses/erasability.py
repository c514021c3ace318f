"""Erasability: which zero segment outputs a joint can lose, and what else goes with them.

The analyses' side of erasing (OTOv3 section 3.3); :mod:`otoir.surgery.erase` only carries out
the plans made here. What a joint allows is the rule table's ``OpRule.drop_input``
(:class:`~otoir.ops.rules.DropInput`):

* ``SUM`` (``Add``/``Sum``): drop the input, when the remaining inputs keep the output's
  broadcast shape.
* ``SUBTRAHEND`` (``Sub``): a zero subtrahend is dropped (``x - 0 = x``); a zero minuend is refused.
* ``STACK`` (``Concat``) along the rule's channel axis: drop the input **and** the matching
  channels downstream: walk through channel-wise ops after the Concat that map zero to zero
  (ReLU, pooling, Resize, Clip with 0 in range, ...), and BatchNorm-like ops whose per-channel
  parameters are sliced, until the stems whose input columns are sliced (Conv weight axis 1,
  Gemm/MatMul rows after a ``Flatten``). What each op does on the walk is its rule's
  ``channel_walk`` (:class:`~otoir.ops.rules.ChannelWalk`). Every op on the walk must work on the removed axis
  (its rule's ``channel_axis``); a walk that meets anything else is refused. Along any other
  axis (height, width, batch) the zero input is part of the output's shape and is never dropped.
* ``NEVER``: a zero input does not vanish; refused.

:func:`maps_zero` answers whether a node inside a segment keeps an all-zero input zero, from the
rule's typed zero semantics (:meth:`~otoir.ops.rules.OpRule.zero_output`).
:func:`region_zero_values` generalises it to a removal *region* (a DAG of segments, e.g. a whole
attention sub-layer): which values are identically zero once a set of parameters is zero, by
forward propagation of a per-tensor "all zero" fact through the region in graph order, each node
answered by :func:`node_output_zero` from its rule (``zero_join`` for ops of several inputs —
``Mul``/``MatMul`` of two activations are zero when *either* factor is, ``Add`` only when *all*
terms are —, ``zero_params_zero_output`` for stems and normalisations, ``maps_zero``/``zero_out``
for the rest). Shapes are
:attr:`StaticShapes.value_dims <otoir.analyses.shapes.StaticShapes.value_dims>`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from otoir.analyses.shapes import Dims
from otoir.analyses.vertices import VertexClasses, param_specs
from otoir.infra.diagnostics import node_label
from otoir.ops.rules import ChannelMap, ChannelWalk, DropInput, OpRule, VertexKind, ZeroJoin

__all__ = [
    "ChannelPlan",
    "JointDrop",
    "stack_ranges",
    "plan_channel_removal",
    "plan_joint_drop",
    "maps_zero",
    "node_output_zero",
    "param_views",
    "region_zero_values",
]

Shape = Dims


def stack_ranges(node: ir.Node, axis: int, shapes: Mapping[str, Shape]) -> list[tuple[int, int]] | None:
    """``[start, stop)`` of each input of a stacking joint (Concat) along ``axis``, or None if unknown."""
    out = []
    start = 0
    for v in node.inputs:
        s = shapes.get(v.name) if v is not None else None
        if s is None or axis >= len(s) or not isinstance(s[axis], int):
            return None
        out.append((start, start + s[axis]))
        start += s[axis]
    return out


@dataclass
class ChannelPlan:
    """Entries to delete when channels of a value go away.

    Attributes:
        slices: ``(tensor, axis, indices, trainable)``: trainable per-channel parameters of
            accessories after the Concat (BatchNorm gamma/beta: must be zero for exactness, so
            they belong to the group), and dependent entries (running statistics, stem columns).
        values: Values whose channel count changes (their declared shapes are cleared).
    """

    slices: list[tuple[str, int, tuple[int, ...], bool]] = field(default_factory=list)
    values: list[ir.Value] = field(default_factory=list)


def _rank(v: ir.Value, shapes: Mapping[str, Shape]) -> int | None:
    s = shapes.get(v.name)
    return len(s) if s is not None else None


def _axis_mismatch(node: ir.Node, vc: VertexClasses, axis: int, rank: int | None) -> str:
    """Why ``node`` (reading a value of ``rank``) cannot lose entries along ``axis`` ('' if it can).

    The node's rule says which axis it treats channel-wise (``channel_axis``; None: every axis,
    an element-wise op).
    """
    r = vc.info[node].rule
    if r is None:
        return f"{node_label(node)}: {node.op_type} has no rule"
    if r.channel_axis is None:
        return ""
    ch = r.node_channel_axis(rank)
    if ch != axis:
        where = "unknown" if ch is None else str(ch)
        return (f"{node_label(node)}: {node.op_type} works on axis {where}, "
                f"not on the removed axis {axis}")
    return ""


def plan_channel_removal(model: ir.Model, value: ir.Value, axis: int, channels: Sequence[int],
                         shapes: Mapping[str, Shape], vc: VertexClasses) -> ChannelPlan | str:
    """Plans removing entries ``channels`` along ``axis`` of ``value`` from everything downstream.

    Every op on the way must treat ``axis`` as its channel axis (its rule's ``channel_axis``, or
    an element-wise op) and keep its size; the walk ends at stems whose input columns are sliced.

    Args:
        model: The model.
        value: Output of the Concat whose inputs are dropped.
        axis: The axis of ``value`` the entries are removed from (normalised).
        channels: Indices along ``axis`` that disappear.
        shapes: :attr:`StaticShapes.value_dims`.
        vc: Vertex classification.

    Returns:
        A :class:`ChannelPlan`, or a string saying why it cannot be done exactly.
    """
    plan = ChannelPlan()
    graph_outputs = set(model.graph.outputs)
    owned: dict[str, ir.Node] = {}
    stack: list[tuple[ir.Value, int, tuple[int, ...]]] = [(value, axis, tuple(sorted(set(channels))))]
    seen: set[ir.Value] = set()
    while stack:
        v, ax, idx = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        plan.values.append(v)
        if v in graph_outputs:
            return f"the channels reach graph output '{v.name}'"
        rank = _rank(v, shapes)
        for use in v.uses():
            node, pos = use.node, use.idx
            op = node.op_type
            others_used = any(o.uses() or o in graph_outputs for o in node.outputs[1:])
            r = vc.info[node].rule
            walk = r.channel_walk if r is not None and pos == 0 else None
            if walk in (ChannelWalk.PASS, ChannelWalk.NORM, ChannelWalk.CONSUME):
                why = _axis_mismatch(node, vc, ax, rank)
                if why:
                    return why
            if walk in (ChannelWalk.PASS, ChannelWalk.NORM):
                s_in, s_out = shapes.get(v.name), shapes.get(node.outputs[0].name)
                if s_in is None or s_out is None or len(s_out) <= ax or s_out[ax] != s_in[ax]:
                    return f"{node_label(node)}: {op} may change the size of axis {ax}"
            if walk is ChannelWalk.PASS:
                if others_used:
                    return f"{node_label(node)}: {op} has other used outputs"
                why = r.zero_output(node, vc.is_data, _never_zero)
                if why:
                    return f"{node_label(node)}: {why}"
                stack.append((node.outputs[0], ax, idx))
            elif walk is ChannelWalk.NORM:
                if others_used:
                    return f"{node_label(node)}: {op} running statistics outputs are used"
                for spec in param_specs(node, r):
                    p = node.inputs[spec.input] if spec.input < len(node.inputs) else None
                    if p is None:
                        continue
                    if not p.is_initializer():
                        return f"{node_label(node)}: {op} {spec.role} is not an initializer"
                    plan.slices.append((p.name, 0, idx, p.name in vc.trainable))
                    owned.setdefault(p.name, node)
                stack.append((node.outputs[0], ax, idx))
            elif walk is ChannelWalk.FLATTEN:
                s = shapes.get(v.name)
                if node.attributes.get_int("axis", 1) != 1 or ax != 1 or s is None or len(s) < 2:
                    return f"{node_label(node)}: {op} with unknown input shape, axis != 1 or entries removed from axis {ax}"
                rest = s[2:]
                if not all(isinstance(d, int) for d in rest):
                    return f"{node_label(node)}: {op} of a value with symbolic spatial dims"
                inner = int(np.prod(rest)) if rest else 1
                flat = tuple(c * inner + k for c in idx for k in range(inner))
                stack.append((node.outputs[0], 1, flat))
            elif walk is ChannelWalk.CONSUME:
                why = _consume(node, r, idx, plan, owned)
                if why:
                    return why
            else:
                return f"{node_label(node)}: {op} (input {pos}) after the Concat cannot drop channels"
    for name, node in owned.items():
        users = {u.node for u in model.graph.initializers[name].uses()}
        if users != {node}:
            return f"parameter '{name}' is shared by several nodes"
    return plan


def _consume(node: ir.Node, r: OpRule, idx: tuple[int, ...], plan: ChannelPlan, owned: dict[str, ir.Node]) -> str:
    """Slices the input columns ``idx`` of the weight of a stem ending the walk ('' or why not).

    The weight follows the rule's channel signature: a convolution (``PRODUCE``: the parameter
    with an ``in_axis``, ungrouped), ONNX Gemm (variant ``gemm``: ``transB`` picks the axis) or
    MatMul (``MATMUL``: rows of a 2-D constant right operand).
    """
    op = node.op_type
    if r.channel_map is ChannelMap.PRODUCE and r.channel_variant == "":
        spec = next((p for p in param_specs(node, r) if p.in_axis is not None), None)
        if spec is None:
            return f"{node_label(node)}: {op} declares no weight input axis"
        if node.attributes.get_int("group", 1) != 1:
            return f"{node_label(node)}: grouped {op} after the Concat"
        w = node.inputs[spec.input] if spec.input < len(node.inputs) else None
        if w is None or not w.is_initializer():
            return f"{node_label(node)}: {op} weight is not an initializer"
        plan.slices.append((w.name, spec.in_axis, idx, False))
        owned.setdefault(w.name, node)
        return ""
    if r.channel_map is ChannelMap.MATMUL or (r.channel_map is ChannelMap.PRODUCE and r.channel_variant == "gemm"):
        w = node.inputs[1] if len(node.inputs) > 1 else None
        if w is None or not w.is_initializer() or w.const_value is None or len(w.shape) != 2:
            return f"{node_label(node)}: {op} weight is not a 2-D initializer"
        waxis = 0
        if r.channel_map is ChannelMap.PRODUCE:
            if node.attributes.get_int("transA", 0):
                return f"{node_label(node)}: {op} with transA"
            waxis = 1 if node.attributes.get_int("transB", 0) else 0
        plan.slices.append((w.name, waxis, idx, False))
        owned.setdefault(w.name, node)
        return ""
    return (f"{node_label(node)}: {op} is declared to consume channels but its channel map "
            f"{r.channel_map.value} names no weight to slice")


def _never_zero(v: ir.Value | None) -> bool:
    return False


def maps_zero(node: ir.Node, vc: VertexClasses, group_params: set[str]) -> tuple[bool, str]:
    """Whether ``node`` (inside a segment) maps an all-zero data input to an all-zero output.

    Parameters in ``group_params`` are zero as well. A stem does unless it adds a bias outside
    the group; a joint with unrestricted data inputs never does; otherwise the rule's zero
    semantics decide (:meth:`~otoir.ops.rules.OpRule.zero_output`).

    Returns:
        ``(answer, reason when False)``.
    """
    info = vc.info[node]
    r = info.rule
    op = node.op_type
    if r is None:
        return False, f"{op} has no rule"
    if info.kind is VertexKind.STEM:
        for spec in param_specs(node, r):
            p = node.inputs[spec.input] if spec.input < len(node.inputs) else None
            if spec.role == "bias" and p is not None and p.name not in group_params:
                return False, f"{op} has a bias outside the group"
        return True, ""
    if r.data_inputs is None and info.kind is VertexKind.JOINT:
        return False, f"{op} joint inside a segment"
    why = r.zero_output(node, vc.is_data, lambda v: v is not None and v.name in group_params)
    return not why, why


@dataclass
class JointDrop:
    """How a joint loses some of its inputs.

    Attributes:
        keep: Input positions that remain, in order (may be empty: the joint is left without
            inputs, which the validity check refuses).
        plan: For a stacking joint (Concat), the entries removed downstream; else None.
    """

    keep: list[int]
    plan: ChannelPlan | None = None


def plan_joint_drop(model: ir.Model, joint: ir.Node, positions: Iterable[int], shapes: Mapping[str, Shape],
                    vc: VertexClasses) -> JointDrop | str:
    """Plans dropping the (all-zero) inputs ``positions`` of ``joint``, or says why it cannot be done.

    What the joint allows comes from its rule's ``drop_input``. Element-wise sums must keep
    their broadcast output shape without the dropped inputs; a stacking joint (Concat) must
    stack along its rule's channel axis, and the removed channels must be removable downstream
    (:func:`plan_channel_removal`).

    Returns:
        A :class:`JointDrop`, or a one-line reason.
    """
    op = joint.op_type
    name = node_label(joint)
    pos = set(positions)
    r = vc.info[joint].rule
    mode = r.drop_input if r is not None else DropInput.NEVER
    keep = [i for i in range(len(joint.inputs)) if i not in pos]
    if mode is DropInput.NEVER:
        return f"feeds a {op} joint (a zero input does not vanish)"
    if mode is DropInput.SUBTRAHEND:
        if 0 in pos:
            return f"feeds the minuend of {op} {name} (0 - x != x)"
        return JointDrop(keep)
    out = joint.outputs[0]
    if mode is DropInput.STACK:
        rank = _rank(out, shapes)
        axis = r.node_axis(joint, rank)
        ch = r.node_channel_axis(rank)
        if axis is None or ch is None:
            return f"{name}: {op} axis unknown (negative axis, output rank unknown)"
        if axis != ch:
            return (f"{name}: {op} stacks along axis {axis}, not the channel axis {ch}: a zero input is part "
                    f"of its output shape and cannot be removed")
        ranges = stack_ranges(joint, axis, shapes)
        if ranges is None:
            return f"{name}: {op} input sizes along axis {axis} unknown"
        chans = [c for i in sorted(pos) for c in range(*ranges[i])]
        plan = plan_channel_removal(model, out, axis, chans, shapes, vc)
        if isinstance(plan, str):
            return plan
        return JointDrop(keep, plan)
    # DropInput.SUM: the remaining inputs must broadcast to the same output shape.
    o = shapes.get(out.name)
    kept = [shapes.get(joint.inputs[i].name) if joint.inputs[i] is not None else None for i in keep]
    if not kept:
        return JointDrop(keep)
    if o is None or any(k is None for k in kept):
        return f"shapes around {name} unknown"
    if _broadcast(kept) != tuple(o):
        return f"dropping inputs of {name} would change its broadcast output shape"
    return JointDrop(keep)


def _broadcast(shapes: Sequence[Shape]) -> Shape | None:
    rank = max(len(s) for s in shapes)
    out: list = []
    for k in range(rank):
        dims = {s[len(s) - rank + k] for s in shapes if len(s) - rank + k >= 0}
        dims.discard(1)
        if len(dims) > 1:
            return None
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def node_output_zero(node: ir.Node, vc: VertexClasses, is_zero) -> str:
    """Whether ``node``'s output is identically zero, given which of its inputs are.

    ``is_zero(value)`` says whether an input (data or parameter) is known to be all zero. The
    answer comes from the node's rule only (so a user ``@rule`` takes part):

    * ``zero_join`` (ops of several inputs, :class:`~otoir.ops.rules.ZeroJoin`): ``ANY`` — zero
      when any input is (``Mul``; ``MatMul`` of two activations: ``P @ V`` is zero when the V
      projection's parameters are, not when Q's or K's are, since ``Softmax(0)`` is uniform);
      ``ALL`` — zero when every input is (``Add``: a bias ``Add`` is zero only with the bias
      zeroed too); ``NUMERATOR`` (``Div``); ``SELECT`` (``Where``).
    * a stem or a normalisation with ``zero_params_zero_output``: zero when all its trainable
      parameters are (``Conv``/``Gemm`` weight and bias, ``LayerNormalization`` scale and bias),
      or when its data input is zero, it ``maps_zero`` and its bias (if any) is zero;
    * any other op with a data input: zero when that input is and the rule's zero semantics
      (:meth:`~otoir.ops.rules.OpRule.zero_output`) map zero to zero.

    Returns:
        ``""`` when the output is zero, else a one-line reason why not (naming the op).
    """
    info = vc.info[node]
    r = info.rule
    op = node.op_type
    if r is None:
        return f"{op} has no rule"
    if info.kind is VertexKind.UNKNOWN:
        return f"{op}: {info.reason}"
    present = [v for v in node.inputs if v is not None]
    join = r.zero_join
    if join is not None and len(present) > 1:
        if join is ZeroJoin.ANY:
            return "" if any(is_zero(v) for v in present) else f"{op} has no all-zero factor"
        if join is ZeroJoin.ALL:
            return "" if all(is_zero(v) for v in present) else f"{op} has an operand that is not zero"
        if join is ZeroJoin.NUMERATOR:
            return "" if is_zero(node.inputs[0]) else f"{op} numerator is not zero"
        if join is ZeroJoin.SELECT:
            return "" if all(is_zero(v) for v in present[1:]) else f"{op} selects a value that is not zero"
    specs = [sp for sp in param_specs(node, r) if sp.input < len(node.inputs) and node.inputs[sp.input] is not None]
    own = [node.inputs[sp.input] for sp in specs if sp.trainable]
    if r.zero_params_zero_output and own and all(is_zero(v) for v in own):
        return ""
    data = [v for i, v in enumerate(node.inputs)
            if v is not None and vc.is_data(v) and not any(sp.input == i for sp in specs)]
    if not data:
        return f"{op} has no zero input"
    if info.kind is VertexKind.STEM:
        if not all(is_zero(v) for v in data):
            return f"{op} input is not zero"
        if not r.maps_zero:
            return f"{op} does not map zero to zero"
        bias = [node.inputs[sp.input] for sp in specs if sp.role == "bias"]
        return "" if all(is_zero(v) for v in bias) else f"{op} adds a bias that is not zeroed"
    if info.kind is VertexKind.JOINT or len(data) > 1:
        if not all(is_zero(v) for v in data):
            return f"{op} has a data input that is not zero"
        others = [v for v in present if v not in data]
        if r.maps_zero and all(is_zero(v) for v in others):
            return ""
        return f"{op} does not map zero inputs to zero"
    if not is_zero(data[0]):
        return f"{op} input is not zero"
    return r.zero_output(node, vc.is_data, is_zero)


def param_views(model: ir.Model, vc: VertexClasses) -> dict[ir.Value, str]:
    """Values that are a trainable parameter seen through constant re-layouts, -> its name.

    A torch ``Linear`` exports ``MatMul(x, Transpose(W))``: the ``Transpose`` is a constant node
    (no data input), and ``W`` is zero exactly when its view is. Followed through constant nodes
    whose rule's ``const_flow`` keeps the entries (``SAME``, ``RELAYOUT``, ``TRANSPOSE``: Cast,
    Identity, Reshape, Squeeze, Unsqueeze, Transpose) of input 0; one pass in graph order.
    """
    from otoir.ops.rules import ConstFlow

    keep = (ConstFlow.SAME, ConstFlow.RELAYOUT, ConstFlow.TRANSPOSE)
    views: dict[ir.Value, str] = {}
    for n in model.graph:
        info = vc.info.get(n)
        if info is None or info.kind is not VertexKind.CONSTANT or info.rule is None or not n.inputs:
            continue
        if info.rule.const_flow not in keep or len(n.outputs) != 1:
            continue
        src = n.inputs[0]
        if src is None:
            continue
        name = src.name if src.name in vc.trainable and src.is_initializer() else views.get(src)
        if name is not None:
            views[n.outputs[0]] = name
    return views


def region_zero_values(nodes: Iterable[ir.Node], vc: VertexClasses, zero_params: set[str],
                       views: Mapping[ir.Value, str] | None = None) -> tuple[set[ir.Value], dict[ir.Node, str]]:
    """The values of a region that are identically zero when the parameters ``zero_params`` are.

    Args:
        nodes: The region's nodes in graph (topological) order; values produced outside it are
            taken as non-zero.
        vc: Vertex classification.
        zero_params: Names of the parameters assumed zero.
        views: :func:`param_views`: a constant view of a zero parameter is zero too.

    Returns:
        ``(zero values, breakers)``: ``breakers`` maps each node that has an all-zero input but
        a non-zero output to the reason (:func:`node_output_zero`).
    """
    zero: set[ir.Value] = set()
    breakers: dict[ir.Node, str] = {}

    views = views or {}

    def is_zero(v: ir.Value | None) -> bool:
        return v is not None and (v in zero or v.name in zero_params or views.get(v) in zero_params)

    for n in nodes:
        why = node_output_zero(n, vc, is_zero)
        if not why:
            zero.update(o for o in n.outputs)
        elif any(is_zero(v) for v in n.inputs):
            breakers[n] = why
    return zero, breakers
