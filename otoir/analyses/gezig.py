"""GeZIG partition (OTOv3 Algorithm 2, lines 11-15).

A segment of the :class:`~otoir.analyses.segments.SegmentGraph` is a *minimal removal
structure* when it has trainable variables, its output is not a graph output, and every consumer
is a joint an input can be dropped from (the rule's ``drop_input``: ``Add``/``Sum``, the subtrahend
of ``Sub``, a ``Concat`` along the channel axis — never along height, width or batch, where the
zeros are part of the output's shape).
Its trainable variables form one GeZIG. Beyond the paper, otoir checks that all-zero parameters
really make the segment output identically zero (zero-ness starts at an op whose trainable
parameters are all in the group and whose rule has ``zero_params_zero_output``, and survives only
ops that map zero to zero), that the joint can lose the input without changing shapes, and, for
a Concat, that the removed channels can be sliced out downstream. Segments failing a check are
recorded with the reason; their variables go to the complement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx_ir as ir

from otoir.analyses.erasability import maps_zero, plan_joint_drop
from otoir.analyses.groups import Group, TensorSlice
from otoir.analyses.segments import OUTPUT, Segment, SegmentGraph
from otoir.analyses.shapes import StaticShapes
from otoir.analyses.validity import GroupSet, ValidityChecker
from otoir.analyses.vertices import VertexClasses, param_specs
from otoir.infra.analysis import Analysis
from otoir.ops.rules import DropInput, VertexKind, node_flops

if TYPE_CHECKING:
    from otoir.infra.analysis import AnalysisManager

__all__ = ["GeZIGPartition", "SegmentVerdict"]


@dataclass(frozen=True)
class SegmentVerdict:
    """Why a segment is or is not a GeZIG.

    Attributes:
        segment: Segment id.
        gezig: Whether it forms a GeZIG.
        reason: Why not (empty when it is one).
        params: Trainable parameter names of the segment.
    """

    segment: int
    gezig: bool
    reason: str
    params: tuple[str, ...]


class GeZIGPartition(Analysis):
    """Partition of the trainable variables into GeZIGs and their complement.

    Attributes:
        groups: GeZIG groups (``kind="gezig"``, ``id="gezig:<segment>"``), in segment order, as
            a :class:`~otoir.analyses.validity.GroupSet` whose ``checker`` is :attr:`checker`
            (so ``select_redundant(p.groups, ...)`` and ``build_optimizer(..., groups=p.groups)``
            check validity). ``meta``: ``segment`` (id), ``label``, ``params``, ``joints``
            (names of the joint nodes fed), ``concat`` (True when a Concat is fed). ``flops``:
            forward FLOPs per sample of the segment's nodes (:func:`otoir.ops.rules.node_flops`).
        complement: Trainable parameter names outside every GeZIG.
        verdicts: Segment id -> :class:`SegmentVerdict` for every segment with trainable variables.
        segments: The segment graph used.
        checker: The :class:`~otoir.analyses.validity.ValidityChecker` of these groups.
        shapes: The :class:`~otoir.analyses.shapes.StaticShapes` used.
    """

    name = "gezig"

    def __init__(self, model: ir.Model, am: AnalysisManager | None = None) -> None:
        vc = am.get(VertexClasses) if am is not None else VertexClasses(model)
        sg = am.get(SegmentGraph) if am is not None else SegmentGraph(model)
        static = am.get(StaticShapes) if am is not None else StaticShapes(model)
        shapes = static.value_dims
        graph = model.graph
        trainable = vc.trainable
        users: dict[str, set[int]] = {}
        for s in sg.segments:
            for n in s.nodes:
                for v in n.inputs:
                    if v is not None and v.name in trainable:
                        users.setdefault(v.name, set()).add(s.id)
        groups: list[Group] = []
        verdicts: dict[int, SegmentVerdict] = {}
        in_group: set[str] = set()
        for s in sg.segments:
            params = _segment_params(s, trainable)
            if not params:
                continue
            reason, extra_slices, dependent, joints = self._check(model, s, sg, vc, shapes, params, users)
            verdicts[s.id] = SegmentVerdict(s.id, not reason, reason, params)
            if reason:
                continue
            buffers = _segment_buffers(s, vc)
            slices = tuple(TensorSlice(p) for p in params) + extra_slices
            dep = tuple(TensorSlice(b) for b in buffers) + dependent
            n_params = sum(_numel(graph, t) for t in (*slices, *dep))
            flops = sum(node_flops(n, static.sample_shape) for n in s.nodes)
            in_group.update(params)
            groups.append(Group(
                id=f"gezig:{s.id}", kind="gezig", slices=slices, dependent=dep, num_params=n_params,
                flops=flops, prunable=True, reason="",
                meta={"segment": s.id, "label": s.label, "params": params, "joints": joints,
                      "concat": any(_stacks(sg.segments[t].first, vc) for t in s.succs if t >= 0)},
            ))
        self.checker = ValidityChecker(sg, groups, vc)
        self.groups: GroupSet = GroupSet(groups, self.checker)
        self.complement: tuple[str, ...] = tuple(p for p in trainable if p not in in_group)
        self.verdicts = verdicts
        self.segments = sg
        self.shapes = static
        self._by_segment = {g.meta["segment"]: g for g in groups}

    def group_of_segment(self, segment: int) -> Group | None:
        """The GeZIG of a segment, if any."""
        return self._by_segment.get(segment)

    def complement_group(self, model: ir.Model) -> Group:
        """The complement as one non-prunable group (``id="gezig:complement"``)."""
        sl = tuple(TensorSlice(p) for p in self.complement)
        return Group("gezig:complement", "gezig", sl, num_params=sum(_numel(model.graph, t) for t in sl),
                     prunable=False, reason="complement of the GeZIGs")

    @staticmethod
    def _check(model, s: Segment, sg: SegmentGraph, vc: VertexClasses, shapes, params, users):
        none = ((), (), ())
        if s.is_joint:
            return ("a joint vertex", *none)
        if s.feeds_output:
            return ("its output is a graph output", *none)
        if not s.succs:
            return ("its output is unused", *none)
        for p in params:
            if users[p] != {s.id}:
                return (f"parameter '{p}' is shared with another segment", *none)
        for n in s.nodes:
            if vc.info[n].kind is VertexKind.UNKNOWN:
                return (f"contains unknown op {n.op_type}", *none)
        # Zero-ness.
        pset = set(params)
        zero = False
        breaker = "no op whose zero parameters zero its output"
        for n in s.nodes:
            r = vc.info[n].rule
            own = [v.name for v in n.inputs if v is not None and v.name in vc.trainable]
            if r is not None and r.zero_params_zero_output and own and all(p in pset for p in own) \
                    and _has_zeroing_params(n, r, pset):
                zero = True
                continue
            if zero:
                ok, why = maps_zero(n, vc, pset)
                if not ok:
                    zero = False
                    breaker = f"{n.name or n.op_type}: {why}"
        if not zero:
            return (f"all-zero parameters do not zero its output ({breaker})", *none)
        # Joints.
        out_values = [o for o in s.last.outputs if o.uses()]
        extra: list[TensorSlice] = []
        dependent: list[TensorSlice] = []
        joints: list[str] = []
        for o in out_values:
            per_joint: dict[ir.Node, set[int]] = {}
            for use in o.uses():
                per_joint.setdefault(use.node, set()).add(use.idx)
            for j, pos in per_joint.items():
                if j not in sg.segment_of or not sg.segments[sg.segment_of[j]].is_joint:
                    return (f"consumer {j.name or j.op_type} is not a joint", *none)
                drop = plan_joint_drop(model, j, pos, shapes, vc)
                if isinstance(drop, str):
                    return (drop, *none)
                joints.append(j.name or j.op_type)
                if drop.plan is not None:
                    for name, axis, idx, is_tr in drop.plan.slices:
                        (extra if is_tr else dependent).append(TensorSlice(name, axis, idx))
        if OUTPUT in s.succs:
            return ("its output is a graph output", *none)
        return "", tuple(extra), tuple(dependent), tuple(dict.fromkeys(joints))

    def annotations(self) -> dict:
        out: dict = {}
        for sid, v in self.verdicts.items():
            seg = self.segments.segments[sid]
            a = {"gezig": f"g{sid}" if v.gezig else "none"}
            if not v.gezig:
                a["why"] = v.reason
            out[seg.last] = a
        return out

    def to_text(self) -> str:
        """One line per group and per rejected segment."""
        lines = []
        for g in self.groups:
            lines.append(f"{g.id} [{g.meta['label']}] params={','.join(g.meta['params'])} "
                         f"numel={g.num_params} flops={g.flops} joints={','.join(g.meta['joints'])}")
        for sid, v in self.verdicts.items():
            if not v.gezig:
                lines.append(f"not-gezig seg {sid} [{self.segments.segments[sid].label}]: {v.reason}")
        lines.append(f"complement: {','.join(self.complement) or '-'}")
        return "\n".join(lines)


def _stacks(node: ir.Node, vc: VertexClasses) -> bool:
    r = vc.info[node].rule
    return r is not None and r.drop_input is DropInput.STACK


def _has_zeroing_params(n: ir.Node, r, pset: set[str]) -> bool:
    specs = [sp for sp in param_specs(n, r) if sp.trainable]
    names = [n.inputs[sp.input].name for sp in specs if sp.input < len(n.inputs) and n.inputs[sp.input] is not None]
    return bool(names) and all(x in pset for x in names)


def _segment_params(s: Segment, trainable) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for n in s.nodes:
        for v in n.inputs:
            if v is not None and v.name in trainable:
                out[v.name] = None
    return tuple(out)


def _segment_buffers(s: Segment, vc: VertexClasses) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for n in s.nodes:
        for v in n.inputs:
            if v is not None and v.name in vc.buffers:
                out[v.name] = None
    return tuple(out)


def _numel(graph: ir.Graph, sl: TensorSlice) -> int:
    v = graph.initializers.get(sl.tensor)
    if v is None or v.shape is None:
        return 0
    dims = [int(d) for d in v.shape.dims]
    n = math.prod(dims)  # TensorSlice.numel, without numpy's per-call overhead
    if sl.axis is None:
        return n
    return n // max(dims[sl.axis], 1) * len(sl.indices or ())
