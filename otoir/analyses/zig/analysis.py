"""``ChannelGroups``: zero-invariant channel groups (OTOv2 ZIGs) by exact channel propagation.

Every data value carries channel atoms (see :mod:`otoir.analyses.zig.state`); ops record which atoms
are equivalent; union-find over the atoms gives the groups. A group is one equivalence class:
the producer weight rows, biases and normalisation entries that are zeroed together
(``slices``) and the consumer weight columns and running statistics removed with them
(``dependent``). Multi-axis channel layouts (channel shuffle, attention heads) are kept valid
for any pruning by merging atoms until every such layout depends on a single axis (whole
heads; one column of a shuffle). Groups that reach a graph output, a barrier, or an
inconsistently shared weight are not prunable, with the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from otoir.analyses.groups import Group, TensorSlice
from otoir.analyses.shapes import StaticShapes
from otoir.analyses.vertices import VertexClasses
from otoir.analyses.zig.handlers import propagate_node
from otoir.analyses.zig.state import ChannelState, ParamUse, Track
from otoir.analyses.zig.unionfind import components
from otoir.infra.analysis import Analysis
from otoir.infra.diagnostics import node_label
from otoir.ops.rules import lookup_rule, node_flops

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


def _flops_per_entry(node: ir.Node, shapes: StaticShapes, param: ir.Value | None = None, vc: VertexClasses | None = None) -> float:
    """FLOPs per sample per weight entry of ``node`` (its rule's ``flops`` over the weight's size).

    The weight is the input the rule's ``weight`` parameter names; where that input is data
    (a MatMul ``W @ X`` with a constant left operand) it is ``param``, the initializer whose
    entries are counted. Nodes without a ``weight`` parameter (normalisations, PReLU) count 0.
    """
    r = lookup_rule(node.op_type, node.domain, node.version)
    spec = next((p for p in r.params if p.role == "weight"), None) if r is not None else None
    w = node.inputs[spec.input] if spec is not None and spec.input < len(node.inputs) else None
    if w is not None and param is not None and vc is not None and vc.is_data(w):
        w = param
    ws = shapes.shape(w)
    if not ws:
        return 0.0
    return node_flops(node, shapes.sample_shape) / math.prod(ws)


class _SliceStore:
    """The tensor slices of all groups as flat arrays (segments in group order).

    Segment ``s`` is the slice of tensor-axis ``keys[seg_key[s]]`` at positions
    ``positions[offsets[s]:offsets[s + 1]]``.
    """

    __slots__ = ("keys", "seg_key", "offsets", "positions")

    def __init__(self, keys: list, seg_key: list, offsets: list, positions: list) -> None:
        self.keys = keys
        self.seg_key = seg_key
        self.offsets = offsets
        self.positions = positions

    def slices(self, a: int, b: int) -> tuple[TensorSlice, ...]:
        """The slices of segments ``a`` to ``b`` (exclusive)."""
        if a == b:
            return ()
        keys = self.keys
        off = self.offsets[a:b + 1].tolist()
        base = off[0]
        pos = self.positions[base:off[-1]].tolist()
        out = []
        for s, k in enumerate(self.seg_key[a:b].tolist()):
            t, axis = keys[k]
            out.append(TensorSlice(t, axis, tuple(pos[off[s] - base:off[s + 1] - base])))
        return tuple(out)


class _Lazy:
    """Non-data descriptor: materialises ``slices``/``dependent`` of a :class:`_LazyGroup`."""

    def __init__(self, which: str) -> None:
        self.which = which

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        store, first, mid, end = obj.__dict__["_lazy"]
        val = store.slices(first, mid) if self.which == "slices" else store.slices(mid, end)
        obj.__dict__[self.which] = val  # instance attribute from now on (frozen dataclass)
        return val


class _LazyGroup(Group):
    """A :class:`Group` whose ``slices`` and ``dependent`` are built on first access.

    Behaves as a ``Group`` (same fields, equality, hashing, ``dataclasses.replace``); the
    tuples are created from the analysis's flat arrays when read.
    """

    slices = _Lazy("slices")  # type: ignore[assignment]
    dependent = _Lazy("dependent")  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Group):
            return NotImplemented
        names = [f.name for f in dataclasses.fields(Group) if f.compare]
        return all(getattr(self, n) == getattr(other, n) for n in names)

    __hash__ = Group.__hash__


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
        """Ties the entries of shared initializers and refuses what cannot be sliced for every use.

        An initializer is sliced once, so every node that uses it must see the same slicing:
        the atoms of one (tensor, axis) are unified over all uses (a Conv applied twice: the
        output channels of both applications, and the input channels of both, are one group
        each). An axis that one use ties to channels but another use does not (its input is a
        graph input, a barrier or a constant) cannot be sliced; its groups are poisoned with
        the reason. So is a tensor that a node reads without attaching any entry.
        """
        canon: dict[tuple[str, int], np.ndarray] = {}
        users: dict[str, set] = {}
        axes_by_node: dict[str, dict[ir.Node, set[int]]] = {}
        for pu in st.params:
            v = graph.initializers.get(pu.tensor)
            shape = st.shape(v) if v is not None else None
            if shape is None and v is not None and v.const_value is not None:
                shape = tuple(v.const_value.shape)
            if v is None or shape is None or pu.axis >= len(shape) or shape[pu.axis] != pu.ids.size:
                st.poison(pu.ids, f"parameter '{pu.tensor}' axis {pu.axis} does not follow the channels")
                continue
            users.setdefault(pu.tensor, set()).update((pu.node, *pu.via))
            axes_by_node.setdefault(pu.tensor, {}).setdefault(pu.node, set()).add(pu.axis)
            key = (pu.tensor, pu.axis)
            if key in canon:
                st.unify(canon[key], pu.ids)  # shared weights: the same entries, the same atoms
            else:
                canon[key] = pu.ids
        for name, per_node in axes_by_node.items():
            if len(per_node) < 2:
                continue
            for axis in sorted(set().union(*per_node.values())):
                having = [n for n, axes in per_node.items() if axis in axes]
                lacking = [n for n, axes in per_node.items() if axis not in axes]
                if lacking:
                    a, b = having[0], lacking[0]
                    st.poison(canon[(name, axis)],
                              f"shared weight '{name}' is used by {a.op_type} '{node_label(a)}' and {b.op_type} "
                              f"'{node_label(b)}' with different channel producers on axis {axis} (the second "
                              "use's channels are not tracked: graph input, barrier or constant)")
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
        """All groups with parameter entries, ordered by their first parameter use.

        Built in bulk with numpy; each group's ``slices`` and ``dependent`` (one
        :class:`TensorSlice` per tensor and axis) are materialised when first read, so the
        analysis costs O(groups) Python objects, not O(groups x tensors) (DenseNet-201 has
        17k groups touching 590k tensor slices).
        """
        if self._groups is None:
            import gc

            enabled = gc.isenabled()
            gc.disable()  # one Group (and meta dict) per group: no collections while building
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
        # -- per use: key (tensor, axis), entry size, FLOPs per entry, trainable
        key_of: dict[tuple[str, int], int] = {}
        keys: list[tuple[str, int]] = []
        ukey = np.empty(len(uses), dtype=np.int64)
        unumel = np.empty(len(uses), dtype=np.int64)
        uflop = np.empty(len(uses), dtype=np.float64)
        utrain = np.empty(len(uses), dtype=bool)
        knumel: list[int] = []
        for k, pu in enumerate(uses):
            kk = (pu.tensor, pu.axis)
            ki = key_of.get(kk)
            v = graph.initializers[pu.tensor]
            shape = v.shape if v.shape is not None else v.const_value.shape
            dims = [int(d) for d in shape.dims]
            n = math.prod(dims) // max(dims[pu.axis], 1)
            if ki is None:
                ki = key_of[kk] = len(keys)
                keys.append(kk)
                knumel.append(n)
            ukey[k] = ki
            unumel[k] = n
            uflop[k] = n * _flops_per_entry(pu.node, self._shapes, self.model.graph.initializers.get(pu.tensor), st.vc)
            utrain[k] = pu.trainable
        sizes = np.fromiter((pu.ids.size for pu in uses), dtype=np.int64, count=len(uses))
        use = np.repeat(np.arange(len(uses), dtype=np.int64), sizes)
        ids = np.concatenate([pu.ids for pu in uses])
        starts = np.cumsum(sizes) - sizes
        pos = np.arange(ids.size, dtype=np.int64) - np.repeat(starts, sizes)
        lab = self.labels[ids]
        key = ukey[use]
        train = utrain[use]
        # -- entries sorted by (label, key, position): segments are (group, tensor-axis) pairs
        n_keys, width = len(keys), int(sizes.max()) + 1
        if (int(st.n) + 1) * n_keys * width < (1 << 62):
            order = np.argsort((lab * n_keys + key) * width + pos)  # ties: the same entry twice
        else:  # pragma: no cover - astronomically large models
            order = np.lexsort((pos, key, lab))
        lab, key, pos, use, train = lab[order], key[order], pos[order], use[order], train[order]
        m = lab.size
        new_seg = np.ones(m, dtype=bool)
        new_seg[1:] = (lab[1:] != lab[:-1]) | (key[1:] != key[:-1])
        seg_start = np.flatnonzero(new_seg)
        seg_lab = lab[seg_start]
        seg_key = key[seg_start]
        big = np.int64(len(uses))
        seg_train = np.logical_or.reduceat(train, seg_start)
        seg_first_train = np.minimum.reduceat(np.where(train, use, big), seg_start)
        seg_first = np.minimum.reduceat(use, seg_start)
        # unique positions per segment (a position may be attached by several uses)
        uniq = new_seg.copy()
        uniq[1:] |= pos[1:] != pos[:-1]
        if uniq.all():
            upos = pos
            seg_count = np.diff(np.r_[seg_start, m])
        else:
            upos = pos[uniq]
            seg_count = np.bincount(np.cumsum(new_seg)[uniq] - 1, minlength=seg_start.size)
        # -- segments ordered within their group: slices (first trainable use), then dependent
        seg_cls = np.where(seg_train, 0, 1)
        seg_rank = np.where(seg_train, seg_first_train, seg_first)
        n_uses = len(uses) + 1
        if (int(st.n) + 1) * 2 * n_uses < (1 << 62):
            # segments are sorted by (label, key); keys are numbered by first use, so this is
            # nearly sorted already (a stable sort is then almost linear)
            skey = (seg_lab * 2 + seg_cls) * n_uses + seg_rank
            sorted_already = not np.any(skey[1:] < skey[:-1])
            sorder = np.argsort(skey, kind="stable") if not sorted_already else None
        else:  # pragma: no cover - astronomically large models
            sorder = np.lexsort((seg_key, seg_rank, seg_cls, seg_lab))
            sorted_already = False
        seg_off = np.r_[0, np.cumsum(seg_count)]
        if sorted_already:
            cnt_sorted, s_lab, s_key, s_cls = seg_count, seg_lab, seg_key, seg_cls
            pos_sorted, off_sorted = upos, seg_off
        else:  # positions regrouped in the segment order
            cnt_sorted = seg_count[sorder]
            s_lab, s_key, s_cls = seg_lab[sorder], seg_key[sorder], seg_cls[sorder]
            gather = np.repeat(seg_off[:-1][sorder] - (np.cumsum(cnt_sorted) - cnt_sorted), cnt_sorted) \
                + np.arange(int(cnt_sorted.sum()), dtype=np.int64)
            pos_sorted = upos[gather]
            off_sorted = np.r_[0, np.cumsum(cnt_sorted)]
        # -- per group
        g_first = np.flatnonzero(np.r_[True, s_lab[1:] != s_lab[:-1]])
        g_end = np.r_[g_first[1:], s_lab.size]
        g_lab = s_lab[g_first]
        g_mid = g_first + np.add.reduceat((s_cls == 0).astype(np.int64), g_first)
        s_params = np.asarray(knumel, dtype=np.int64)[s_key] * cnt_sorted
        g_params = np.add.reduceat(s_params, g_first)
        s_size = np.where(s_cls == 0, cnt_sorted, 0)
        g_size = np.maximum.reduceat(s_size, g_first)
        e_first = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
        g_flops = np.add.reduceat(uflop[use], e_first)  # every attached entry (as before)
        # first (use, position) of each group: its name and its place in the order
        g_firstkey = np.minimum.reduceat(use * width + pos, e_first)
        g_first_u, g_first_p = g_firstkey // width, g_firstkey % width
        gorder = np.argsort(g_firstkey, kind="stable")
        store = _SliceStore(keys, s_key, off_sorted, pos_sorted)
        poison, inexact = self._poison, self._inexact
        tensor_names = [pu.tensor for pu in uses]
        # prunable: parameter entries to slice and not poisoned (a value's channels may still keep one)
        g_prunable = (g_mid > g_first) & ~np.isin(g_lab, np.fromiter(poison, dtype=np.int64, count=len(poison)))
        kept_for = self._mixed_covers(g_lab, g_first, g_prunable.copy(), s_key, keys, gorder)
        prunable_l = g_prunable.tolist()
        lab_l, first_l, mid_l, end_l = g_lab.tolist(), g_first.tolist(), g_mid.tolist(), g_end.tolist()
        fu_l, fp_l = g_first_u.tolist(), g_first_p.tolist()
        par_l, flop_l, size_l = g_params.tolist(), g_flops.tolist(), g_size.tolist()
        groups = []
        new = object.__new__
        for gi in gorder.tolist():
            label = lab_l[gi]
            has_slices = mid_l[gi] > first_l[gi]
            reason = poison.get(label, "")
            prunable = prunable_l[gi]
            if not has_slices and not reason:
                reason = "no trainable parameter entries"
            exact = label not in inexact
            if prunable and not exact:
                reason = inexact[label]
            if prunable and gi in kept_for:
                prunable, reason = False, kept_for[gi]
            g = new(_LazyGroup)
            g.__dict__.update(
                id=f"zig:{tensor_names[fu_l[gi]]}:{fp_l[gi]}", kind="zig", num_params=par_l[gi],
                flops=int(flop_l[gi]), prunable=prunable, reason=reason,
                meta={"label": label, "exact": exact, "size": size_l[gi]},
                _lazy=(store, first_l[gi], mid_l[gi], end_l[gi]))
            groups.append(g)
        return tuple(groups)

    def _mixed_covers(self, g_lab: np.ndarray, g_first: np.ndarray, prunable: np.ndarray, s_key: np.ndarray,
                      keys: list[tuple[str, int]], gorder: np.ndarray) -> dict[int, str]:
        """``{group index: reason}`` of the groups kept so that no tracked value loses every channel.

        The selection keeps at least one group of every tensor that groups are counted by (their
        first slice's), so a value keeps a channel whenever its channels include all groups of
        one such tensor. A value whose channels come from parts of several tensors' groups (the
        halves of a channel shuffle: ShuffleNet's ``Slice`` after ``Transpose``) is not covered
        by that count: one of its groups, the first in group order, is kept (made non-prunable)
        so that it keeps a channel whatever is chosen. Without this, ``prune-channels`` had to
        keep a group back after the selection, off the target count and off round-to.

        ``prunable`` (per group, updated here) says which groups the selection may take; a
        prunable group's first segment is its first slice.
        """
        n_groups = g_lab.size
        t_index: dict[str, int] = {}
        key_t = np.fromiter((t_index.setdefault(t, len(t_index)) for t, _a in keys), dtype=np.int64, count=len(keys))
        first_t = key_t[s_key[g_first]]
        per_t = np.bincount(first_t[prunable], minlength=len(t_index))
        names = list(t_index)
        lab_to_g = np.full(int(self.labels.max()) + 1 if self.labels.size else 1, -1, dtype=np.int64)
        lab_to_g[g_lab] = np.arange(n_groups)
        rank = np.empty(n_groups, dtype=np.int64)
        rank[gorder] = np.arange(n_groups)
        kept: dict[int, str] = {}
        seen: set[bytes] = set()
        for v, t in self.state.tracks.items():
            atoms = hashlib.blake2b(t.ids.tobytes(), digest_size=16).digest()
            if atoms in seen:  # the same atoms as a value already seen (an element-wise op's output)
                continue
            seen.add(atoms)
            gi = lab_to_g[np.unique(self.labels[t.ids])]
            if gi.size == 0 or (gi < 0).any() or not prunable[gi].all():
                continue  # a channel no selection can zero: the value keeps it
            tens, counts = np.unique(first_t[gi], return_counts=True)
            if (counts == per_t[tens]).any():
                continue  # all of one tensor's groups: that tensor keeps one
            j = int(gi[np.argmin(rank[gi])])
            of = ", ".join(f"'{names[i]}'" for i in tens[:3].tolist()) + (", ..." if tens.size > 3 else "")
            kept[j] = f"kept so that '{v.name}' keeps a channel (it carries only part of the groups of {of})"
            prunable[j] = False
            per_t[first_t[j]] -= 1
        return kept

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
