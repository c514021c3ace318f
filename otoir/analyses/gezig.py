"""GeZIG partition (OTOv3 Algorithm 2, lines 11-15), generalised from segments to regions.

The paper's minimal removal structure is a segment of the
:class:`~otoir.analyses.segments.SegmentGraph` whose consumers are all joints an input can be
dropped from (the rule's ``drop_input``: ``Add``/``Sum``, the subtrahend of ``Sub``, a ``Concat``
along the channel axis — never along height, width or batch, where the zeros are part of the
output's shape). Such a segment is an *exit*. A transformer sub-layer is not one segment but a
DAG of them (q/k/v branches, the exported GELU/SiLU/RMSNorm decompositions, gated products), so
otoir grows each exit's *region*: every segment all of whose consumers lie in the region (it
exists only to feed the exit; one pass in reverse topological order, ``O(|V_d| + |E_d|)``). A chain
segment whose producer fans out is its own region, exactly the paper's structure. A segment whose
consumers lie in different regions nested in one enclosing region (the query feeding both halves
of a rotary embedding) belongs to the innermost common one when the regions between are exits
without variables of their own; a segment feeding several structures with variables stays
outside them (the paper's Conv1-BN1 in Figure 1c). Values entering
the region from outside (the residual stream, an attention mask, rotary tables) stay.

The region's trainable variables that nothing outside it reads form one GeZIG when zeroing them
zeroes the exit's output: :func:`~otoir.analyses.erasability.region_zero_values` propagates an
"all zero" fact through the region from the rule table (``zero_params_zero_output`` stems,
``zero_join``: ``Mul``/``MatMul`` zero when any factor is, ``Add`` when all terms are,
``maps_zero``). The proof assumes nothing about an op without a rule (its output counts as
non-zero; zero-ness cannot pass it), so such an op inside a region (a MoE router's ``TopK``, a
selective scan) does not block the region when zero is proved around it: it is removed only as
dead code with the rest of the region. Regions nest (an exit inside another region): nested ones are decided first;
a rejected nested region's variables are carried up to the enclosing one, an accepted one keeps
its own group and is erased with the enclosing region when that is. otoir also checks that the
joint can lose the input without changing shapes and, for a Concat, that the removed channels
can be sliced out downstream. Rejected exits are recorded with the reason; variables of no
group go to the complement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx_ir as ir

from otoir.analyses.erasability import param_views, plan_joint_drop, region_zero_values
from otoir.analyses.groups import Group, TensorSlice
from otoir.analyses.segments import OUTPUT, Segment, SegmentGraph
from otoir.analyses.shapes import StaticShapes
from otoir.analyses.validity import GroupSet, ValidityChecker
from otoir.analyses.vertices import VertexClasses
from otoir.infra.analysis import Analysis
from otoir.ops.rules import DropInput, node_flops

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
        params: Trainable parameter names of the segment (of its region's group when it is one).
        region: For a segment inside the region of a GeZIG that it does not end, the id of the
            GeZIG's exit segment (its variables are in that group); else None.
    """

    segment: int
    gezig: bool
    reason: str
    params: tuple[str, ...]
    region: int | None = None


class GeZIGPartition(Analysis):
    """Partition of the trainable variables into GeZIGs and their complement.

    Attributes:
        groups: GeZIG groups (``kind="gezig"``, ``id="gezig:<segment>"``), in segment order, as
            a :class:`~otoir.analyses.validity.GroupSet` whose ``checker`` is :attr:`checker`
            (so ``select_redundant(p.groups, ...)`` and ``build_optimizer(..., groups=p.groups)``
            check validity). ``meta``: ``segment`` (id of the exit segment), ``region`` (ids of
            every segment removed with it, the exit included, nested GeZIGs' segments too),
            ``label``, ``params``, ``joints`` (names of the joint nodes fed), ``concat`` (True
            when a Concat is fed). ``flops``: forward FLOPs per sample of the region's nodes
            (:func:`otoir.ops.rules.node_flops`).
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
        segs = sg.segments
        order = sg.topological_order()
        position = {n: i for i, n in enumerate(graph)}
        views = param_views(model, vc)
        view_users: dict[str, list[ir.Node]] = {}  # constant view nodes of each parameter
        for v, name in views.items():
            view_users.setdefault(name, []).append(v.producer())

        def reads(nodes) -> tuple[str, ...]:
            out: dict[str, None] = {}
            for n in nodes:
                for v in n.inputs:
                    if v is None:
                        continue
                    name = v.name if v.name in trainable else views.get(v)
                    if name is not None:
                        out[name] = None
            return tuple(out)

        def exclusive(p: str, node_set: set[ir.Node]) -> bool:
            """Whether only ``node_set`` reads parameter ``p`` (directly or through its constant views)."""
            vnodes = set(view_users.get(p, ()))
            for v in (trainable[p], *(n.outputs[0] for n in vnodes)):
                for u in v.uses():
                    if u.node not in node_set and u.node not in vnodes:
                        return False
            return True
        # 1. Exits: segments whose every consumer is a joint that can lose their (zero) output.
        exit_why: dict[int, str] = {}
        exit_plan: dict[int, tuple] = {}
        for s in segs:
            why, extra, dependent, joints = self._exit_check(model, s, sg, vc, shapes)
            exit_why[s.id] = why
            exit_plan[s.id] = (extra, dependent, joints)
        is_exit = [not exit_why[s.id] for s in segs]
        # 2. Regions: a segment belongs to the region of exit e when every consumer of it is e or
        # in e's region (it exists only to compute e's input), one pass in reverse topological order.
        opaque = [is_exit[s.id] and bool(reads(s.nodes)) for s in segs]  # exits with variables
        up: list[int | None] = [None] * len(segs)
        for i in reversed(order):
            s = segs[i]
            if not s.succs or OUTPUT in s.succs:
                continue
            keys = {t if is_exit[t] else up[t] for t in s.succs}
            if len(keys) == 1:
                up[i] = keys.pop()
            elif None not in keys:
                # Consumers in different regions nested in one enclosing region: when the inner
                # exits have no variables of their own (the two halves of a rotary embedding that
                # q feeds), the segment belongs to the innermost region holding them; consumers in
                # several structures with variables leave it to the complement (paper: Conv1-BN1).
                up[i] = _common_region(keys, up, opaque)
        members: dict[int, list[int]] = {i: [i] for i in range(len(segs)) if is_exit[i]}
        children: dict[int, list[int]] = {i: [] for i in members}
        for i in range(len(segs)):
            if up[i] is not None:
                (children if is_exit[i] else members)[up[i]].append(i)
        # 3. Exits in topological order (nested regions first): the region's own trainable
        # variables (those of rejected nested regions carried up) form a GeZIG when zeroing them
        # zeroes the exit's output.
        region_nodes: dict[int, list[ir.Node]] = {}
        region_segs: dict[int, list[int]] = {}
        carried: dict[int, list[str]] = {}
        groups: list[Group] = []
        verdicts: dict[int, SegmentVerdict] = {}
        in_group: set[str] = set()
        owner_group: dict[int, int] = {}
        def judge(exits: list[int], nodes: list[ir.Node], cand: list[str]) -> tuple[tuple[str, ...], str]:
            """The region's own variables and why they are no GeZIG ('' when they are one)."""
            node_set = set(nodes)
            params = tuple(p for p in cand if exclusive(p, node_set))
            if not cand:
                return params, "no trainable variables of its own"
            if not params:
                return params, f"parameter '{cand[0]}' is also used outside its region"
            zero, breakers = region_zero_values(nodes, vc, set(params), views)
            for e in exits:
                outs = [o for o in segs[e].last.outputs if o.uses()]
                if not outs or not all(o in zero for o in outs):
                    last = next((n for n in reversed(nodes) if n in breakers), None)
                    why = "no op whose zero parameters zero its output" if last is None else \
                        f"{last.name or last.op_type}: {breakers[last]}"
                    return params, f"all-zero parameters do not zero its output ({why})"
            return params, ""

        def make_group(exits: list[int], rs: list[int], nodes: list[ir.Node], params: tuple[str, ...],
                       own: list[int]) -> None:
            extra: list[TensorSlice] = []
            dependent: list[TensorSlice] = []
            joints: list[str] = []
            for e in exits:
                x, d, j = exit_plan[e]
                extra.extend(x)
                dependent.extend(d)
                joints.extend(j)
            buffers = _buffers_of(nodes, vc)
            slices = tuple(TensorSlice(p) for p in params) + tuple(extra)
            dep = tuple(TensorSlice(b) for b in buffers) + tuple(dependent)
            n_params = sum(_numel(graph, t) for t in (*slices, *dep))
            flops = sum(node_flops(n, static.sample_shape) for n in nodes)
            in_group.update(params)
            e0 = exits[0]
            for t in own:
                owner_group[t] = e0
            label = segs[e0].label if len(rs) == 1 else f"{segs[e0].label} (+{len(rs) - 1} segments)"
            meta = {"segment": e0, "region": tuple(sorted(rs)), "label": label, "params": params,
                    "joints": tuple(dict.fromkeys(joints)),
                    "concat": any(_stacks(segs[t].first, vc) for e in exits for t in segs[e].succs if t >= 0)}
            if len(exits) > 1:
                meta["exits"] = tuple(exits)
            groups.append(Group(id=f"gezig:{e0}", kind="gezig", slices=slices, dependent=dep, num_params=n_params,
                                flops=flops, prunable=True, reason="", meta=meta))

        shared: dict[int, list[str]] = {}  # rejected top-level exits whose variables are read elsewhere
        for e in order:
            if not is_exit[e]:
                continue
            own_segs = members[e]
            rs = list(own_segs) + [t for c in children[e] for t in region_segs[c]]
            region_segs[e] = rs
            nodes = sorted((n for t in rs for n in segs[t].nodes), key=position.__getitem__)
            region_nodes[e] = nodes
            cand = list(dict.fromkeys([*reads(n for t in own_segs for n in segs[t].nodes), *carried.get(e, ())]))
            params, reason = judge([e], nodes, cand)
            if cand:
                verdicts[e] = SegmentVerdict(e, not reason, reason, params if not reason else tuple(cand))
            if reason:
                if up[e] is not None:
                    carried.setdefault(up[e], []).extend(cand)
                elif len(params) < len(cand):
                    shared[e] = cand
                continue
            make_group([e], rs, nodes, params, own_segs)
        # Parameters shared by several regions (one layer applied at every depth, ALBERT): the
        # regions reading them form one GeZIG together when zeroing the union's variables zeroes
        # every exit's output.
        if len(shared) > 1:
            for exits in _connected(shared):
                if len(exits) < 2:
                    continue
                rs = [t for e in exits for t in region_segs[e]]
                nodes = sorted((n for t in rs for n in segs[t].nodes), key=position.__getitem__)
                cand = list(dict.fromkeys(p for e in exits for p in shared[e]))
                params, reason = judge(exits, nodes, cand)
                if reason:
                    continue
                own = [t for e in exits for t in members[e]]
                for e in exits:
                    verdicts[e] = SegmentVerdict(e, True, "", params, region=exits[0] if e != exits[0] else None)
                make_group(exits, rs, nodes, params, own)
        # Verdicts of the other segments with trainable variables.
        for s in segs:
            if s.id in verdicts:
                continue
            params = reads(s.nodes)
            if not params:
                continue
            if s.id in owner_group:
                g = owner_group[s.id]
                verdicts[s.id] = SegmentVerdict(s.id, True, "", params, region=g)
                continue
            e = up[s.id]
            if e is not None:
                why = f"in the region of segment {e}, " + (verdicts[e].reason if e in verdicts else "which is no GeZIG")
            else:
                why = exit_why[s.id]
            verdicts[s.id] = SegmentVerdict(s.id, False, why, params)
        groups.sort(key=lambda g: g.meta["segment"])
        self.checker = ValidityChecker(sg, groups, vc, droppable=(i for i in range(len(segs)) if is_exit[i]))
        self.groups: GroupSet = GroupSet(groups, self.checker)
        self.complement: tuple[str, ...] = tuple(p for p in trainable if p not in in_group)
        self.verdicts = dict(sorted(verdicts.items()))
        self.segments = sg
        self.shapes = static
        self.region_nodes = {g.meta["segment"]: region_nodes[g.meta["segment"]] for g in groups}
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
    def _exit_check(model, s: Segment, sg: SegmentGraph, vc: VertexClasses, shapes):
        """Whether ``s`` can end a removal region: its output is not a graph output and every
        consumer is a joint that can lose it. Returns ``(reason or "", extra, dependent, joints)``."""
        none = ((), (), ())
        if s.feeds_output:
            return ("its output is a graph output", *none)
        if not s.succs:
            return ("its output is unused", *none)
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
        return "", tuple(extra), tuple(dependent), tuple(dict.fromkeys(joints))

    def annotations(self) -> dict:
        out: dict = {}
        for sid, v in self.verdicts.items():
            seg = self.segments.segments[sid]
            a = {"gezig": f"g{sid if v.region is None else v.region}" if v.gezig else "none"}
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


def _common_region(keys: set[int], up: list[int | None], opaque: list[bool]) -> int | None:
    """The region holding every exit of ``keys`` once exits without variables of their own are
    seen through (replaced by their enclosing region, ``up``), or None when they still differ."""
    keys = set(keys)
    while len(keys) > 1:
        if None in keys:
            return None
        lift = {k for k in keys if not opaque[k]}
        if not lift:
            return None
        keys = {up[k] if k in lift else k for k in keys}
    return next(iter(keys), None)


def _connected(reads: dict[int, list[str]]) -> list[list[int]]:
    """Keys of ``reads`` connected by a shared name, each component in key order."""
    parent = {k: k for k in reads}

    def find(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    first: dict[str, int] = {}
    for k, names in reads.items():
        for n in names:
            if n in first:
                a, b = find(k), find(first[n])
                if a != b:
                    parent[max(a, b)] = min(a, b)
            else:
                first[n] = k
    comps: dict[int, list[int]] = {}
    for k in sorted(reads):
        comps.setdefault(find(k), []).append(k)
    return list(comps.values())


def _params_of(nodes, names) -> tuple[str, ...]:
    """Names in ``names`` (trainable parameters or buffers) read directly by ``nodes``, in order."""
    out: dict[str, None] = {}
    for n in nodes:
        for v in n.inputs:
            if v is not None and v.name in names:
                out[v.name] = None
    return tuple(out)


def _segment_params(s: Segment, trainable) -> tuple[str, ...]:
    return _params_of(s.nodes, trainable)


def _buffers_of(nodes, vc: VertexClasses) -> tuple[str, ...]:
    return _params_of(nodes, vc.buffers)


def _numel(graph: ir.Graph, sl: TensorSlice) -> int:
    v = graph.initializers.get(sl.tensor)
    if v is None or v.shape is None:
        return 0
    dims = [int(d) for d in v.shape.dims]
    n = math.prod(dims)  # TensorSlice.numel, without numpy's per-call overhead
    if sl.axis is None:
        return n
    return n // max(dims[sl.axis], 1) * len(sl.indices or ())
