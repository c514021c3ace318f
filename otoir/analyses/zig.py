"""``ChannelGroups``: zero-invariant channel groups (OTOv2 ZIGs) by exact channel propagation.

Every data value carries channel atoms (see :mod:`otoir.ops.channels`); ops record which atoms
are equivalent; union-find over the atoms gives the groups. A group is one equivalence class:
the producer weight rows, biases and normalisation entries that are zeroed together
(``slices``) and the consumer weight columns and running statistics removed with them
(``dependent``). Multi-axis channel layouts (channel shuffle, attention heads) are kept valid
for any pruning by merging atoms until every such layout depends on a single axis (whole
heads; one column of a shuffle). Groups that reach a graph output, a barrier, or an
inconsistently shared weight are not prunable, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from otoir.analyses.groups import Group, TensorSlice
from otoir.analyses.shapes import StaticShapes
from otoir.analyses.vertices import VertexClasses
from otoir.infra.analysis import Analysis
from otoir.ops.channels import ChannelState, ParamUse, Track, components, propagate_node

if TYPE_CHECKING:
    from otoir.infra.analysis import AnalysisManager

__all__ = ["ChannelGroups", "GroupInfo"]


@dataclass(frozen=True)
class GroupInfo:
    """Per-label facts of a group (before materialising :class:`Group` objects)."""

    label: int
    prunable: bool
    exact: bool
    reason: str


def _flops_factor(node: ir.Node, shapes: StaticShapes) -> float:
    """Multiply-adds per weight entry of ``node`` per sample (x2 = FLOPs)."""
    ys = shapes.shape(node.outputs[0])
    if ys is None or not ys:
        return 0.0
    if node.op_type in ("Conv", "ConvTranspose"):
        if node.op_type == "ConvTranspose":
            xs = shapes.shape(node.inputs[0])
            return float(np.prod(xs[2:])) if xs else 0.0
        return float(np.prod(ys[2:]))
    if node.op_type == "MatMul":
        return float(np.prod(ys[1:-1])) if len(ys) > 2 else 1.0
    if node.op_type == "Gemm":
        return 1.0
    return 0.0


class ChannelGroups(Analysis):
    """Zero-invariant channel groups of the model (pruning mode).

    Attributes:
        state: The propagation state (tracks of values, parameter uses).
        labels: Atom -> root atom (group label).
        info: Group label -> :class:`GroupInfo`, for labels that own parameter entries.
        groups: The groups (``kind="zig"``), prunable and not, ordered by first stem.
    """

    name = "zig"

    def __init__(self, model: ir.Model, am: AnalysisManager) -> None:
        vc = am.get(VertexClasses)
        shapes = am.get(StaticShapes)
        self.model = model
        st = ChannelState(shapes, vc, frozenset(vc.trainable))
        graph = model.graph
        for node in graph:
            propagate_node(st, node)
        for out in graph.outputs:
            st.poison_track(out, f"reaches graph output '{out.name}'")
        self._check_params(st, graph)
        labels = components(st.n, st.edges)
        labels = self._enforce_products(st, labels)
        self.state = st
        self.labels = labels
        poison: dict[int, str] = {}
        for reason, pid in st.poison_ids.items():
            poison.setdefault(int(labels[pid]), reason)
        inexact: dict[int, str] = {}
        for ids, reason in st.inexact:
            for lab in np.unique(labels[ids]):
                inexact.setdefault(int(lab), reason)
        self._poison = poison
        self._inexact = inexact
        self._groups: tuple[Group, ...] | None = None
        self._shapes = shapes

    # -- construction ---------------------------------------------------------------------------
    @staticmethod
    def _check_params(st: ChannelState, graph: ir.Graph) -> None:
        canon: dict[tuple[str, int], np.ndarray] = {}
        users: dict[str, set] = {}
        for pu in st.params:
            v = graph.initializers.get(pu.tensor)
            shape = st.shape(v) if v is not None else None
            if shape is None and v is not None and v.const_value is not None:
                shape = tuple(v.const_value.shape)
            if v is None or shape is None or pu.axis >= len(shape) or shape[pu.axis] != pu.ids.size:
                st.poison(pu.ids, f"parameter '{pu.tensor}' axis {pu.axis} does not follow the channels")
                continue
            users.setdefault(pu.tensor, set()).update((pu.node, *pu.via))
            key = (pu.tensor, pu.axis)
            if key in canon:
                st.unify(canon[key], pu.ids)  # shared weights: the same entries, the same atoms
            else:
                canon[key] = pu.ids
        for name, nodes in users.items():
            v = graph.initializers[name]
            others = [n for n in v.consumers() if n not in nodes]
            if others or v.is_graph_output():
                what = f"also used by {others[0].op_type} '{others[0].name}'" if others else "a graph output"
                for (t, _axis), ids in canon.items():
                    if t == name:
                        st.poison(ids, f"parameter '{name}' is {what} (shared weight used inconsistently)")

    @staticmethod
    def _enforce_products(st: ChannelState, labels: np.ndarray) -> np.ndarray:
        """Merges atoms until every multi-axis channel layout depends on one axis only."""
        arrays = [c for c in st.constraints]
        arrays += [t.ids for t in st.tracks.values() if len(t.axes) > 1]
        for _ in range(64):
            changed = False
            for ids in arrays:
                lab = labels[ids]
                vary = [k for k in range(lab.ndim) if lab.shape[k] > 1 and np.any(lab != lab.take([0], axis=k))]
                if len(vary) <= 1:
                    continue
                # keep the axis with the most distinct labels; merge along the others
                best = max(vary, key=lambda k: (np.unique(np.moveaxis(lab, k, 0).reshape(lab.shape[k], -1)[:, 0]).size,
                                                lab.shape[k]))
                for k in vary:
                    if k != best:
                        st.unify(ids, ids.take([0], axis=k))
                changed = True
            if not changed:
                break
            labels = components(st.n, st.edges)
        return labels

    # -- groups ---------------------------------------------------------------------------------
    def label_of(self, ids: np.ndarray) -> np.ndarray:
        """Group labels of atoms."""
        return self.labels[ids]

    def is_prunable_label(self, label: int) -> bool:
        """Whether a group label is prunable."""
        return label not in self._poison

    @property
    def groups(self) -> tuple[Group, ...]:
        """All groups with parameter entries, ordered by their first parameter use."""
        if self._groups is None:
            import gc

            enabled = gc.isenabled()
            gc.disable()  # hundreds of thousands of small objects: avoid repeated full collections
            try:
                self._groups = self._build_groups()
            finally:
                if enabled:
                    gc.enable()
        return self._groups

    def _build_groups(self) -> tuple[Group, ...]:
        st = self.state
        graph = self.model.graph
        uses: list[ParamUse] = [pu for pu in st.params if pu.tensor in graph.initializers]
        if not uses:
            return ()
        lab_parts, use_parts, pos_parts = [], [], []
        for k, pu in enumerate(uses):
            lab_parts.append(self.labels[pu.ids])
            use_parts.append(np.full(pu.ids.size, k, dtype=np.int64))
            pos_parts.append(np.arange(pu.ids.size, dtype=np.int64))
        lab = np.concatenate(lab_parts)
        use = np.concatenate(use_parts)
        pos = np.concatenate(pos_parts)
        order = np.lexsort((pos, use, lab))
        lab_l = lab[order].tolist()
        use_l = use[order].tolist()
        pos_l = pos[order].tolist()
        numel_per_entry = []
        flop_per_entry = []
        trainable = [pu.trainable for pu in uses]
        keys = [(pu.tensor, pu.axis) for pu in uses]
        for pu in uses:
            arr_shape = graph.initializers[pu.tensor].const_value.shape
            n = int(np.prod(arr_shape)) // max(int(arr_shape[pu.axis]), 1)
            numel_per_entry.append(n)
            flop_per_entry.append(2.0 * n * _flops_factor(pu.node, self._shapes))
        poison, inexact = self._poison, self._inexact
        per_key_numel = {}
        for k, key in enumerate(keys):
            per_key_numel.setdefault(key, numel_per_entry[k])
        groups = []
        total = len(lab_l)
        i = 0
        while i < total:
            label = lab_l[i]
            slices: dict[tuple[str, int], set] = {}
            dependent: dict[tuple[str, int], set] = {}
            flops = 0.0
            first_u, first_p = use_l[i], pos_l[i]
            while i < total and lab_l[i] == label:
                u = use_l[i]
                key = keys[u]
                (slices if trainable[u] else dependent).setdefault(key, set()).add(pos_l[i])
                flops += flop_per_entry[u]
                i += 1
            for key in list(dependent):
                if key in slices:
                    slices[key] |= dependent.pop(key)
            sl = []
            for key, ix in slices.items():
                sl.append(TensorSlice(key[0], key[1], tuple(sorted(ix))))
            dp = [TensorSlice(key[0], key[1], tuple(sorted(ix))) for key, ix in dependent.items()]
            num_params = sum(per_key_numel[(s_.tensor, s_.axis)] * len(s_.indices) for s_ in sl) + sum(
                per_key_numel[(s_.tensor, s_.axis)] * len(s_.indices) for s_ in dp)
            reason = poison.get(label, "")
            prunable = not reason and bool(sl)
            if not sl and not reason:
                reason = "no trainable parameter entries"
            exact = label not in inexact
            if prunable and not exact:
                reason = inexact[label]
            first_use = uses[first_u]
            groups.append((first_u, first_p, Group(
                id=f"zig:{first_use.tensor}:{first_p}", kind="zig", slices=tuple(sl), dependent=tuple(dp),
                num_params=num_params, flops=int(flops), prunable=prunable, reason=reason,
                meta={"label": label, "exact": exact, "size": max((len(s_.indices) for s_ in sl), default=0)},
            )))
        groups.sort(key=lambda x: (x[0], x[1]))
        return tuple(g for _, _, g in groups)

    # -- reporting ------------------------------------------------------------------------------
    def prunable_groups(self, *, exact_only: bool = False) -> list[Group]:
        """The prunable groups (optionally only the exactly zero-invariant ones)."""
        return [g for g in self.groups if g.prunable and (g.meta.get("exact", True) or not exact_only)]

    def annotations(self) -> dict:
        out: dict = {}
        st = self.state
        for node in self.model.graph:
            for v in node.outputs[:1]:
                t: Track | None = st.tracks.get(v)
                if t is None:
                    continue
                lab = np.unique(self.labels[t.ids])
                n_pr = sum(1 for x in lab if int(x) not in self._poison)
                out[node] = {"zig-axes": ",".join(map(str, t.axes)), "zig-groups": int(lab.size),
                             "zig-prunable": int(n_pr)}
        return out
