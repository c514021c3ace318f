"""Sub-network construction for erasing (OTOv3 section 3.3): the rewrite.

The plans come from the analyses (:mod:`otoir.analyses.erasability`: what each joint allows,
from its rule's ``drop_input``, and which channels go downstream of a Concat); this module
carries them out: a joint loses its zero inputs (one left with a single input is replaced by
it), planned channel entries are sliced out of their tensors. Every joint is planned before
anything changes. Afterwards :func:`~otoir.surgery.common.remove_dead_nodes` removes whatever
no longer reaches an output and :func:`remove_unused_initializers` drops unused initializers.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from otoir.analyses.erasability import ChannelPlan, JointDrop, plan_joint_drop
from otoir.analyses.groups import set_tensor_array, tensor_array
from otoir.analyses.shapes import Dims
from otoir.analyses.vertices import VertexClasses

__all__ = [
    "EraseResult",
    "apply_channel_plan",
    "erase_segment_outputs",
    "remove_unused_initializers",
]


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


@dataclass
class EraseResult:
    """What :func:`erase_segment_outputs` did."""

    joints_rewired: int = 0
    joints_removed: int = 0
    params_sliced: int = 0
    errors: list[tuple[str, ir.Node | None]] = field(default_factory=list)


def erase_segment_outputs(model: ir.Model, zero_values: Iterable[ir.Value], vc: VertexClasses,
                          shapes: Mapping[str, Dims], dead_nodes: Collection[ir.Node] = ()) -> EraseResult:
    """Disconnects zero values from the joints they feed and fixes the joints.

    The producers of ``zero_values`` are left without consumers; call
    :func:`~otoir.surgery.common.remove_dead_nodes` afterwards.

    Args:
        model: The model (modified in place).
        zero_values: Values that are identically zero (outputs of zero segments).
        vc: Vertex classification of the model before the change.
        shapes: :attr:`StaticShapes.value_dims` before the change.
        dead_nodes: Nodes that go away anyway (erased too): their uses are left alone.
    """
    res = EraseResult()
    graph = model.graph
    drops: dict[ir.Node, set[int]] = {}
    dead = set(dead_nodes)
    for v in zero_values:
        for use in v.uses():
            if use.node not in dead:
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


def remove_unused_initializers(model: ir.Model) -> list[str]:
    """Drops initializers that nothing uses (and that are not graph inputs); returns their names."""
    graph = model.graph
    inputs = set(graph.inputs)
    outputs = set(graph.outputs)
    gone = [name for name, v in graph.initializers.items() if not v.uses() and v not in inputs and v not in outputs]
    for name in gone:
        graph.initializers.pop(name)
    return gone

