"""The erasing dependency graph (OTOv3 Algorithm 2, lines 2-10): segments and their edges.

A *segment* is a maximal chain of data-flow nodes grown depth-first from a start vertex: every
node but the first has exactly one producer, every node but the last exactly one consumer. A
segment ends at a node with several consumers (or whose output is a graph output), or just before
a joint. Every joint (a node with several data inputs: Add, Concat, Mul...) is a segment on its
own. Start vertices are taken breadth-first: first the nodes reading a graph input, then the
consumers of each finished segment. Constant and shape sub-graphs (``Shape``/``Gather``/
``Concat``/``Constant`` feeding ``Reshape``/``Resize``/``Expand`` shape inputs, vertex kind
``constant``) are not data flow and belong to no segment.

Everything is computed with adjacency maps in ``O(|V| + |E|)``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx_ir as ir

from otoir.analyses.vertices import VertexClasses
from otoir.infra.analysis import Analysis
from otoir.ops.rules import VertexKind

if TYPE_CHECKING:
    from otoir.infra.analysis import AnalysisManager

__all__ = ["Segment", "SegmentGraph", "INPUT", "OUTPUT"]

#: Pseudo segment id of the graph inputs in :attr:`SegmentGraph.preds`.
INPUT = -1
#: Pseudo segment id of the graph outputs in :attr:`SegmentGraph.succs`.
OUTPUT = -2


@dataclass(frozen=True, eq=False)
class Segment:
    """One vertex of the dependency graph.

    Attributes:
        id: Index in :attr:`SegmentGraph.segments` (BFS discovery order).
        nodes: The member nodes, in data-flow order.
        is_joint: Whether the segment is a single joint vertex.
        preds: Producer segment ids (deduplicated, in input order); :data:`INPUT` for a graph input.
        succs: Consumer segment ids (deduplicated); :data:`OUTPUT` when an output is a graph output.
    """

    id: int
    nodes: tuple[ir.Node, ...]
    is_joint: bool
    preds: tuple[int, ...]
    succs: tuple[int, ...]

    @property
    def first(self) -> ir.Node:
        """The first node."""
        return self.nodes[0]

    @property
    def last(self) -> ir.Node:
        """The last node (its outputs leave the segment)."""
        return self.nodes[-1]

    @property
    def label(self) -> str:
        """Short label: member node names joined by ``-``."""
        return "-".join(n.name or n.op_type for n in self.nodes)

    @property
    def feeds_output(self) -> bool:
        """Whether one of its values is a graph output."""
        return OUTPUT in self.succs

    @property
    def reads_input(self) -> bool:
        """Whether it reads a graph input."""
        return INPUT in self.preds


class SegmentGraph(Analysis):
    """Segments of the data flow and the dependency graph ``(V_d, E_d)`` between them.

    Attributes:
        segments: All segments, in breadth-first discovery order.
        segment_of: Node -> segment id (data-flow nodes only).
        data_nodes: Nodes that take part in data flow (not constants/shape computations).
    """

    name = "segments"

    def __init__(self, model: ir.Model, am: AnalysisManager | None = None) -> None:
        vc = am.get(VertexClasses) if am is not None else VertexClasses(model)
        graph = model.graph
        data_nodes = [n for n in graph if vc.info[n].kind is not VertexKind.CONSTANT and _has_data_input(n, vc)]
        is_data_node = set(data_nodes)
        graph_outputs = set(graph.outputs)
        graph_inputs = set(graph.inputs)

        succ: dict[ir.Node, list[ir.Node]] = {}
        pred: dict[ir.Node, list[ir.Node]] = {}
        reads_input: set[ir.Node] = set()
        writes_output: set[ir.Node] = set()
        for n in data_nodes:
            ps: dict[ir.Node, None] = {}
            for v in n.inputs:
                if v is None or not vc.is_data(v):
                    continue
                if v in graph_inputs:
                    reads_input.add(n)
                p = v.producer()
                if p is not None and p in is_data_node:
                    ps[p] = None
            pred[n] = list(ps)
            cs: dict[ir.Node, None] = {}
            for out in n.outputs:
                if out in graph_outputs:
                    writes_output.add(n)
                for use in out.uses():
                    c = use.node
                    if c in is_data_node:
                        cs[c] = None
            succ[n] = list(cs)

        def n_data_inputs(n: ir.Node) -> int:
            return len({id(v) for v in n.inputs if v is not None and vc.is_data(v)})

        joint = {n for n in data_nodes if vc.info[n].kind is VertexKind.JOINT or n_data_inputs(n) > 1}

        def fan_out(n: ir.Node) -> int:
            return len(succ[n]) + (1 if n in writes_output else 0)

        segment_of: dict[ir.Node, int] = {}
        members: list[list[ir.Node]] = []
        queue: deque[ir.Node] = deque(n for n in data_nodes if n in reads_input)
        queued: set[ir.Node] = set(queue)
        while queue:
            start = queue.popleft()
            if start in segment_of:
                continue
            sid = len(members)
            seg = [start]
            segment_of[start] = sid
            cur = start
            # Depth-first growth along single-consumer, single-producer, non-joint edges.
            while cur not in joint and fan_out(cur) == 1 and succ[cur]:
                nxt = succ[cur][0]
                if nxt in joint or nxt in segment_of or len(pred[nxt]) != 1 or nxt in reads_input:
                    break
                seg.append(nxt)
                segment_of[nxt] = sid
                cur = nxt
            members.append(seg)
            for c in succ[cur]:
                if c not in segment_of and c not in queued:
                    queued.add(c)
                    queue.append(c)
        # Nodes not reachable from a graph input (data computed from initializers only cannot
        # occur, but be safe): each becomes its own segment.
        for n in data_nodes:
            if n not in segment_of:
                segment_of[n] = len(members)
                members.append([n])

        segments: list[Segment] = []
        for sid, nodes in enumerate(members):
            first, last = nodes[0], nodes[-1]
            preds: dict[int, None] = {}
            if first in reads_input:
                preds[INPUT] = None
            for p in pred[first]:
                preds[segment_of[p]] = None
            succs: dict[int, None] = {}
            for c in succ[last]:
                succs[segment_of[c]] = None
            if last in writes_output:
                succs[OUTPUT] = None
            segments.append(Segment(sid, tuple(nodes), first in joint, tuple(preds), tuple(succs)))
        self.segments: tuple[Segment, ...] = tuple(segments)
        self.segment_of: dict[ir.Node, int] = segment_of
        self.data_nodes: tuple[ir.Node, ...] = tuple(data_nodes)

    def __len__(self) -> int:
        return len(self.segments)

    def topological_order(self) -> tuple[int, ...]:
        """Segment ids in a topological order of the dependency graph (producers first), ``O(|V_d| + |E_d|)``."""
        cached = self.__dict__.get("_topo")
        if cached is not None:
            return cached
        segs = self.segments
        indeg = [sum(1 for p in s.preds if p >= 0) for s in segs]
        order: list[int] = []
        q = deque(i for i in range(len(segs)) if indeg[i] == 0)
        while q:
            i = q.popleft()
            order.append(i)
            for t in segs[i].succs:
                if t >= 0:
                    indeg[t] -= 1
                    if indeg[t] == 0:
                        q.append(t)
        self._topo: tuple[int, ...] = tuple(order)
        return self._topo

    def num_edges(self) -> int:
        """``|E_d|``: edges between segments (graph input/output edges excluded)."""
        return sum(1 for s in self.segments for t in s.succs if t >= 0)

    def annotations(self) -> dict:
        out: dict = {}
        for s in self.segments:
            for i, n in enumerate(s.nodes):
                a = {"segment": s.id}
                if i == len(s.nodes) - 1:
                    a["succs"] = ",".join(_sid(t) for t in s.succs) or "-"
                if s.is_joint:
                    a["joint"] = "true"
                out[n] = a
        return out

    def to_text(self) -> str:
        """One line per segment: ``seg ID [joint] LABEL <- PREDS -> SUCCS``."""
        lines = []
        for s in self.segments:
            j = " joint" if s.is_joint else ""
            lines.append(f"seg {s.id}{j} {s.label} <- {','.join(_sid(p) for p in s.preds) or '-'}"
                         f" -> {','.join(_sid(t) for t in s.succs) or '-'}")
        return "\n".join(lines)


def _sid(i: int) -> str:
    return "input" if i == INPUT else "output" if i == OUTPUT else str(i)


def _has_data_input(n: ir.Node, vc: VertexClasses) -> bool:
    return any(v is not None and vc.is_data(v) for v in n.inputs)
