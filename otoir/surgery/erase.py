"""Sub-network construction for erasing (OTOv3 section 3.3).

Removing a zero segment means rewiring the joints it feeds:

What a joint allows is the rule table's ``OpRule.drop_input``
(:class:`~otoir.ops.rules.DropInput`):

* ``SUM`` (``Add``/``Sum``): drop the input; a joint left with one input is replaced by it.
* ``SUBTRAHEND`` (``Sub``): a zero subtrahend is dropped (``x - 0 = x``); a zero minuend is refused.
* ``STACK`` (``Concat``) along the rule's channel axis: drop the input **and** the matching
  channels downstream: walk through channel-wise ops after the Concat (ReLU, pooling, Resize,
  BatchNorm, ...) slicing their per-channel parameters, until the stems whose input columns are
  sliced (Conv weight axis 1, Gemm/MatMul rows after a ``Flatten``). Every op on the walk must
  work on the removed axis (its rule's ``channel_axis``); a walk that meets anything else is
  refused. Along any other axis (height, width, batch) the zero input is part of the output's
  shape and is never dropped.
* ``NEVER``: a zero input does not vanish; refused.

Then every node whose outputs are no longer used is removed (reverse topological order, one
pass), and unused initializers are dropped. :func:`plan_channel_removal` is also used by the
GeZIG analysis to decide whether a segment feeding a Concat is erasable and which weight entries
depend on it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from otoir.analyses.groups import set_tensor_array, tensor_array
from otoir.analyses.vertices import VertexClasses, param_specs
from otoir.infra.diagnostics import node_label
from otoir.ops.rules import DropInput, VertexKind

__all__ = [
    "ChannelPlan",
    "JointDrop",
    "EraseResult",
    "value_shapes",
    "stack_ranges",
    "plan_channel_removal",
    "apply_channel_plan",
    "plan_joint_drop",
    "erase_segment_outputs",
    "remove_dead_nodes",
    "remove_unused_initializers",
    "maps_zero",
]

Shape = tuple  # of int | str | None


def value_shapes(model: ir.Model, *, probe: bool = True) -> dict[str, Shape]:
    """Static shapes of named values.

    ONNX shape inference first. When it leaves a dimension unknown (a ``Resize`` whose scales
    come from a shape sub-graph, say) and ``probe`` is set, the model is run once with
    onnxruntime on random inputs whose symbolic dimensions are 3, and every value gets its
    concrete shape (all shapes then come from the probe, so they are mutually consistent).

    Returns:
        Value name -> dims (ints; strings or None where unknown).
    """
    shapes: dict[str, Shape] = {}

    def put(name: str, dims) -> None:
        shapes[name] = tuple(d if isinstance(d, int) else (str(d) if d is not None else None) for d in dims)

    for v in (*model.graph.inputs, *model.graph.outputs, *model.graph.initializers.values()):
        if v.shape is not None:
            put(v.name, v.shape.dims)
    inferred = None
    try:
        import onnx

        inferred = onnx.shape_inference.infer_shapes(_inference_proto(model), check_type=False, strict_mode=False,
                                                     data_prop=True)
    except Exception:  # noqa: BLE001 - shape inference is best effort
        inferred = None
    unknown = False
    if inferred is not None:
        for vi in (*inferred.graph.value_info, *inferred.graph.output):
            t = vi.type.tensor_type
            if not t.HasField("shape"):
                unknown = True
                continue
            dims = [int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
            if any(isinstance(d, str) and d.startswith("unk__") or d is None for d in dims):
                unknown = True
            put(vi.name, dims)
    if unknown and probe and inferred is not None:
        probed = _probe_shapes(model, inferred.graph.value_info)
        if probed is not None:
            return probed
    return shapes


#: Initializers up to this many elements keep their data for shape inference (Reshape targets,
#: Resize scales, Slice bounds); larger ones are passed as typed graph inputs, without payload.
_SMALL_INIT = 64


def _inference_proto(model: ir.Model):
    """A ModelProto for ONNX shape inference only: no large tensor payloads are copied.

    ``ir.to_proto`` copies every weight into protobuf (a second copy of the model, and most of
    the cost of shape inference on large models); here large initializers become typed graph
    inputs and only small ones (which may be shape data) are serialized.
    """
    import onnx
    from onnx_ir import serde

    mp = onnx.ModelProto()
    mp.ir_version = model.ir_version
    for domain, version in model.opset_imports.items():
        op = mp.opset_import.add()
        op.domain = domain
        op.version = version
    for fn in model.functions.values():
        serde.serialize_function_into(mp.functions.add(), fn)
    graph = model.graph
    g = mp.graph
    g.name = graph.name or "g"
    input_names = set()
    for v in graph.inputs:
        serde.serialize_value_into(g.input.add(), v)
        input_names.add(v.name)
    for name, v in graph.initializers.items():
        if name in input_names:
            continue
        cv = v.const_value
        # The value's own shape first: a proto-backed tensor rebuilds its Shape on every access.
        shape = v.shape if v.shape is not None else (cv.shape if cv is not None else None)
        dtype = v.dtype if v.dtype is not None else (cv.dtype if cv is not None else None)
        small = shape is not None and all(isinstance(d, int) for d in shape.dims) \
            and math.prod(shape.dims) <= _SMALL_INIT
        if cv is not None and small:
            serde.serialize_tensor_into(g.initializer.add(), cv)
            g.initializer[len(g.initializer) - 1].name = name
            continue
        vi = g.input.add()
        vi.name = name
        tt = vi.type.tensor_type
        if dtype is not None:
            tt.elem_type = int(dtype)
        if shape is not None:
            dims = tt.shape
            for d in shape.dims:
                dd = dims.dim.add()
                if isinstance(d, int):
                    dd.dim_value = d
                elif isinstance(getattr(d, "value", None), str):
                    dd.dim_param = d.value
    for node in graph:
        serde.serialize_node_into(g.node.add(), from_=node)
        for o in node.outputs:
            if not o.is_graph_output() and o.name and (o.type is not None or o.shape is not None):
                serde.serialize_value_into(g.value_info.add(), o)
    for v in graph.outputs:
        serde.serialize_value_into(g.output.add(), v)
    return mp


def _probe_shapes(model: ir.Model, value_info) -> dict[str, Shape] | None:
    try:
        import onnxruntime as ort

        from otoir.testing import random_feeds

        proto = ir.to_proto(model)
        have = {o.name for o in proto.graph.output}
        for vi in value_info:
            if vi.name not in have and vi.type.tensor_type.elem_type:
                proto.graph.output.append(vi)
                have.add(vi.name)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 4
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feeds = random_feeds(model, 0, batch=3)
        names = [o.name for o in sess.get_outputs()]
        arrays = sess.run(names, feeds)
    except Exception:  # noqa: BLE001 - probing is best effort
        return None
    out: dict[str, Shape] = {}
    for v in (*model.graph.inputs, *model.graph.initializers.values()):
        if v.name in feeds:
            out[v.name] = tuple(feeds[v.name].shape)
        elif v.const_value is not None:
            out[v.name] = tuple(v.const_value.shape.dims)
    for name, arr in zip(names, arrays, strict=True):
        out[name] = tuple(np.shape(arr))
    return out


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


# Channel-wise ops a removed channel passes through unchanged (a zero channel stays zero).
_PASS_OPS = frozenset({
    "Relu", "LeakyRelu", "HardSwish", "Tanh", "Gelu", "Elu", "Selu", "Celu", "Mish", "Softsign", "Neg",
    "Abs", "Sign", "Erf", "Sin", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
    "GlobalLpPool", "Resize", "Upsample", "Identity", "Cast", "Dropout",
})
_NORM_OPS = frozenset({"BatchNormalization", "InstanceNormalization"})


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
        shapes: From :func:`value_shapes`.
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
            if op in _PASS_OPS | _NORM_OPS | {"Clip", "Conv", "Gemm", "MatMul"} and pos == 0:
                why = _axis_mismatch(node, vc, ax, rank)
                if why:
                    return why
            if op in _PASS_OPS | _NORM_OPS | {"Clip"} and pos == 0:
                s_in, s_out = shapes.get(v.name), shapes.get(node.outputs[0].name)
                if s_in is None or s_out is None or len(s_out) <= ax or s_out[ax] != s_in[ax]:
                    return f"{node_label(node)}: {op} may change the size of axis {ax}"
            if op in _PASS_OPS and pos == 0:
                if others_used:
                    return f"{node_label(node)}: {op} has other used outputs"
                stack.append((node.outputs[0], ax, idx))
            elif op == "Clip" and pos == 0:
                if not _clip_contains_zero(node):
                    return f"{node_label(node)}: Clip range excludes 0"
                stack.append((node.outputs[0], ax, idx))
            elif op in _NORM_OPS and pos == 0:
                if others_used:
                    return f"{node_label(node)}: {op} running statistics outputs are used"
                r = vc.info[node].rule
                for spec in param_specs(node, r):
                    p = node.inputs[spec.input] if spec.input < len(node.inputs) else None
                    if p is None:
                        continue
                    if not p.is_initializer():
                        return f"{node_label(node)}: {op} {spec.role} is not an initializer"
                    plan.slices.append((p.name, 0, idx, p.name in vc.trainable))
                    owned.setdefault(p.name, node)
                stack.append((node.outputs[0], ax, idx))
            elif op == "Flatten" and pos == 0:
                s = shapes.get(v.name)
                if node.attributes.get_int("axis", 1) != 1 or ax != 1 or s is None or len(s) < 2:
                    return f"{node_label(node)}: Flatten with unknown input shape, axis != 1 or entries removed from axis {ax}"
                rest = s[2:]
                if not all(isinstance(d, int) for d in rest):
                    return f"{node_label(node)}: Flatten of a value with symbolic spatial dims"
                inner = int(np.prod(rest)) if rest else 1
                flat = tuple(c * inner + k for c in idx for k in range(inner))
                stack.append((node.outputs[0], 1, flat))
            elif op == "Conv" and pos == 0:
                if node.attributes.get_int("group", 1) != 1:
                    return f"{node_label(node)}: grouped Conv after the Concat"
                w = node.inputs[1]
                if not w.is_initializer():
                    return f"{node_label(node)}: Conv weight is not an initializer"
                plan.slices.append((w.name, 1, idx, False))
                owned.setdefault(w.name, node)
            elif op in ("Gemm", "MatMul") and pos == 0:
                w = node.inputs[1]
                if w is None or not w.is_initializer() or w.const_value is None or len(w.shape) != 2:
                    return f"{node_label(node)}: {op} weight is not a 2-D initializer"
                if op == "Gemm":
                    if node.attributes.get_int("transA", 0):
                        return f"{node_label(node)}: Gemm with transA"
                    waxis = 1 if node.attributes.get_int("transB", 0) else 0
                else:
                    waxis = 0
                plan.slices.append((w.name, waxis, idx, False))
                owned.setdefault(w.name, node)
            else:
                return f"{node_label(node)}: {op} (input {pos}) after the Concat cannot drop channels"
    for name, node in owned.items():
        users = {u.node for u in model.graph.initializers[name].uses()}
        if users != {node}:
            return f"parameter '{name}' is shared by several nodes"
    return plan


def apply_channel_plan(model: ir.Model, plan: ChannelPlan) -> int:
    """Deletes the planned entries; returns the number of parameters removed."""
    removed = 0
    by_tensor: dict[tuple[str, int], set[int]] = {}
    for name, axis, idx, _ in plan.slices:
        by_tensor.setdefault((name, axis), set()).update(idx)
    for (name, axis), idx in by_tensor.items():
        arr = tensor_array(model, name)
        new = np.delete(arr, sorted(idx), axis=axis)
        removed += arr.size - new.size
        set_tensor_array(model, name, new)
    for v in plan.values:
        if not v.is_graph_output():
            v.shape = None
    return removed


def _clip_contains_zero(node: ir.Node) -> bool:
    lo, hi = -np.inf, np.inf
    if len(node.inputs) > 1 or node.attributes.get("min") is None:
        vals = []
        for i in (1, 2):
            v = node.inputs[i] if i < len(node.inputs) else None
            if v is None:
                vals.append(None)
                continue
            if v.const_value is None:
                return False
            vals.append(float(np.asarray(v.const_value.numpy()).reshape(-1)[0]))
        lo = vals[0] if vals[0] is not None else lo
        hi = vals[1] if len(vals) > 1 and vals[1] is not None else hi
    else:
        lo = node.attributes.get_float("min", -np.inf)
        hi = node.attributes.get_float("max", np.inf)
    return lo <= 0 <= hi


def _pad_maps_zero(node: ir.Node) -> bool:
    mode = node.attributes.get_string("mode", "constant")
    if mode in ("reflect", "edge", "wrap"):
        return True
    if mode != "constant":
        return False
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        cv = node.inputs[2].const_value
        if cv is None:
            return False
        return bool(np.all(cv.numpy() == 0))
    return node.attributes.get_float("value", 0.0) == 0.0


def maps_zero(node: ir.Node, vc: VertexClasses, group_params: set[str]) -> tuple[bool, str]:
    """Whether ``node`` maps an all-zero data input to an all-zero output.

    Parameters in ``group_params`` are zero as well. Returns ``(answer, reason when False)``.
    """
    info = vc.info[node]
    r = info.rule
    op = node.op_type
    if r is None:
        return False, f"{op} has no rule"
    if op == "Clip":
        return (_clip_contains_zero(node), "Clip range excludes 0")
    if op == "Pad":
        return (_pad_maps_zero(node), "Pad with a non-zero constant")
    if op in ("Add", "Sub") and info.kind is VertexKind.ACCESSORY:
        consts = [v for v in node.inputs if v is not None and not vc.is_data(v)]
        ok = all(v.name in group_params for v in consts)
        return ok, f"{op} of a constant that is not a zeroed parameter"
    if op == "Div" and info.kind is VertexKind.ACCESSORY:
        return vc.is_data(node.inputs[0]), "Div by data"
    if info.kind is VertexKind.STEM:
        specs = param_specs(node, r)
        for spec in specs:
            p = node.inputs[spec.input] if spec.input < len(node.inputs) else None
            if spec.role == "bias" and p is not None and p.name not in group_params:
                return False, f"{op} has a bias outside the group"
        return True, ""
    if r.data_inputs is None and info.kind is VertexKind.JOINT:
        return False, f"{op} joint inside a segment"
    return r.maps_zero, f"{op} does not map zero to zero"


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


@dataclass
class EraseResult:
    """What :func:`erase_segment_outputs` did."""

    joints_rewired: int = 0
    joints_removed: int = 0
    params_sliced: int = 0
    errors: list[tuple[str, ir.Node | None]] = field(default_factory=list)


def erase_segment_outputs(model: ir.Model, zero_values: Iterable[ir.Value], vc: VertexClasses,
                          shapes: Mapping[str, Shape]) -> EraseResult:
    """Disconnects zero values from the joints they feed and fixes the joints.

    The producers of ``zero_values`` are left without consumers; call
    :func:`remove_dead_nodes` afterwards.

    Args:
        model: The model (modified in place).
        zero_values: Values that are identically zero (outputs of zero segments).
        vc: Vertex classification of the model before the change.
        shapes: From :func:`value_shapes` before the change.
    """
    res = EraseResult()
    graph = model.graph
    drops: dict[ir.Node, set[int]] = {}
    for v in zero_values:
        for use in v.uses():
            drops.setdefault(use.node, set()).add(use.idx)
    order = {n: i for i, n in enumerate(graph)}
    # Plan every joint before changing anything (plans read shapes and uses of the original).
    plans: list[tuple[ir.Node, JointDrop]] = []
    for joint in sorted(drops, key=lambda n: order.get(n, 0)):
        d = plan_joint_drop(model, joint, drops[joint], shapes, vc)
        if isinstance(d, str):
            res.errors.append((d, joint))
        elif not d.keep:
            res.errors.append(("joint left without inputs", joint))
        else:
            plans.append((joint, d))
    if res.errors:
        return res
    for joint, d in plans:
        keep = [joint.inputs[i] for i in d.keep]
        if d.plan is not None:
            res.params_sliced += apply_channel_plan(model, d.plan)
        res.joints_rewired += 1
        if len(keep) == 1:
            _replace_by(graph, joint, keep[0])
            res.joints_removed += 1
        else:
            for i, v in enumerate(keep):
                joint.replace_input_with(i, v)
            joint.resize_inputs(len(keep))
    return res


def _replace_by(graph: ir.Graph, joint: ir.Node, kept: ir.Value) -> None:
    out = joint.outputs[0]
    if out.is_graph_output():
        ident = ir.Node("", "Identity", [kept], name=(joint.name or "joint") + "_identity")
        graph.insert_before(joint, ident)
        name = out.name
        out.replace_all_uses_with(ident.outputs[0], replace_graph_outputs=True)
        ident.outputs[0].name = None
        out.name = None
        ident.outputs[0].name = name
        ident.outputs[0].shape = out.shape
        ident.outputs[0].type = out.type
    else:
        out.replace_all_uses_with(kept)
    for i in range(len(joint.inputs)):
        joint.replace_input_with(i, None)


def remove_dead_nodes(model: ir.Model) -> int:
    """Removes nodes none of whose outputs is used or a graph output (to a fixpoint).

    One pass in reverse topological order suffices for a DAG. Returns the number removed.
    """
    graph = model.graph
    outputs = set(graph.outputs)
    removed = 0
    for node in reversed(list(graph)):
        if any(o in outputs or o.uses() for o in node.outputs):
            continue
        graph.remove(node, safe=True)
        removed += 1
    return removed


def remove_unused_initializers(model: ir.Model) -> list[str]:
    """Drops initializers that nothing uses (and that are not graph inputs); returns their names."""
    graph = model.graph
    inputs = set(graph.inputs)
    outputs = set(graph.outputs)
    gone = [name for name, v in graph.initializers.items() if not v.uses() and v not in inputs and v not in outputs]
    for name in gone:
        graph.initializers.pop(name)
    return gone

