"""Propagation state of the ZIG analysis: channel tracks of values and parameter uses.

Every data value gets a :class:`Track`: the axes that carry channel identities and an integer
array ``ids`` over those axes (``ids[p]`` names the channel atom at position ``p``). Alongside
``ids``, ``zero`` says whether the position is exactly zero once the position's own group is
zeroed; a contraction (a consumer weight column) may only drop positions that are zero.
:class:`ChannelState` holds the tracks, the equivalence edges between atoms, the poisoned
atoms (with their reasons) and the initializer entries attached to atoms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from otoir.ops.rules import ConstFlow, attr, normalize_axis

if TYPE_CHECKING:
    import onnx_ir as ir

    from otoir.analyses.shapes import StaticShapes
    from otoir.analyses.vertices import VertexClasses

__all__ = ["Track", "ParamUse", "ChannelState", "attr"]


@dataclass
class Track:
    """Channel identities of one value.

    Attributes:
        axes: Sorted axes of the value that carry channel atoms.
        ids: int64 array over ``axes`` (shape ``[shape[a] for a in axes]``).
        zero: bool array like ``ids``: exactly zero when the atom's group is zeroed.
    """

    axes: tuple[int, ...]
    ids: np.ndarray
    zero: np.ndarray


@dataclass(frozen=True)
class ParamUse:
    """Entries of an initializer that follow channel atoms.

    Attributes:
        tensor: Initializer name.
        axis: Axis of the initializer.
        ids: Atom of each entry along ``axis`` (1-D, length = size of the axis).
        trainable: True for entries the optimizer drives to zero (``Group.slices``), False
            for entries only removed at construction (``Group.dependent``).
        node: The node using the initializer.
        role: Short description (``weight-rows``, ``weight-columns``, ``scale``...).
        via: Constant nodes between the initializer and ``node`` (e.g. the Transpose of a
            torch Linear weight, the Gather of a position-embedding table).
    """

    tensor: str
    axis: int
    ids: np.ndarray
    trainable: bool
    node: ir.Node
    role: str
    via: tuple = ()


@dataclass
class ChannelState:
    """Mutable state of one propagation run (used by :class:`otoir.analyses.zig.ChannelGroups`).

    Attributes:
        shapes: Static shapes and folded constants.
        vc: Vertex classification.
        tracks: Value -> track (untracked values are absent).
        n: Number of atoms allocated.
        edges: Pairs of equal-shape id arrays whose atoms are equivalent (int32 while ids fit).
        poison_ids: Reason -> its poison atom; a group containing it is not prunable.
        params: Parameter entries attached to atoms.
        constraints: Multi-axis id arrays (reshape factorisations) whose kept set must stay a
            product set: the analysis merges atoms until each depends on one axis only.
        inexact: ``(ids, reason)``: groups containing these atoms are not exactly zero-invariant.
        stems: ``(node, ids)`` of fresh atoms, in order (names groups).
        conv_groups: Conv node -> (G, out-ids) for grouped convolutions.
        weight_transforms: Computed weight -> :meth:`weight_transform_source`'s answer (a cache).
        row_norms: InstanceNormalization node -> per-row atom ids ``[G, L]`` where it
            normalises rows that are whole groups (GroupNorm as torch exports it): construction
            slices its per-row scale and bias with the kept rows.
        channel_reductions: Node -> ``(ids, kind)``: a reduction (``kind`` ``"sum"`` or
            ``"mean"``, the rule's ``channel_reduction``) or an RMS normalisation (``"rms-norm"``)
            over the channel atoms ``ids``; construction compensates a mean for the removed
            share (:mod:`otoir.surgery.channels`).
    """

    shapes: StaticShapes
    vc: VertexClasses
    trainable: frozenset[str]
    tracks: dict = field(default_factory=dict)
    n: int = 0
    edges: list = field(default_factory=list)
    poison_ids: dict = field(default_factory=dict)
    params: list = field(default_factory=list)
    constraints: list = field(default_factory=list)
    inexact: list = field(default_factory=list)
    stems: list = field(default_factory=list)
    conv_groups: dict = field(default_factory=dict)
    row_norms: dict = field(default_factory=dict)
    weight_transforms: dict = field(default_factory=dict)
    channel_reductions: dict = field(default_factory=dict)

    # -- atoms ----------------------------------------------------------------------------
    def fresh(self, shape, node: ir.Node | None = None) -> np.ndarray:
        """Allocates new atoms."""
        size = int(np.prod(shape)) if len(shape) else 1
        ids = np.arange(self.n, self.n + size, dtype=np.int64).reshape(shape)
        self.n += size
        if node is not None:
            self.stems.append((node, ids))
        return ids

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        """Records that atoms ``a`` and ``b`` (same shape, or broadcastable) are equivalent."""
        a, b = np.broadcast_arrays(a, b)
        a = a.ravel()
        b = b.ravel()
        if a.size:
            self.edges.append((self._edge(a), self._edge(b)))

    def _edge_dtype(self) -> type:
        """int32 while every atom id fits (half the memory of the edge list), else int64."""
        return np.int32 if self.n <= np.iinfo(np.int32).max else np.int64

    def _edge(self, ids: np.ndarray) -> np.ndarray:
        """A private copy of ``ids`` (all ``< self.n``) in the edge dtype."""
        return ids.astype(self._edge_dtype())  # astype copies

    def merge(self, ids: np.ndarray) -> None:
        """Makes all atoms of ``ids`` equivalent."""
        flat = ids.ravel()
        if flat.size > 1:
            self.edges.append((self._edge(flat[:-1]), self._edge(flat[1:])))

    def poison(self, ids: np.ndarray | None, reason: str) -> None:
        """Marks atoms as not prunable because of ``reason``."""
        if ids is None or ids.size == 0:
            return
        pid = self.poison_ids.get(reason)
        if pid is None:
            pid = self.poison_ids[reason] = self.n
            self.n += 1
        flat = ids.ravel()
        self.edges.append((self._edge(flat), np.full(flat.size, pid, dtype=self._edge_dtype())))

    def is_pure_source(self, via: tuple) -> bool:
        """Whether a parameter seen through ``via`` nodes keeps its values (zero stays zero).

        False when one of them is an element-wise function (``ConstFlow.UNARY``).
        """
        for n in via:
            r = self.vc.info[n].rule if n in self.vc.info else None
            if r is not None and r.const_flow is ConstFlow.UNARY:
                return False
        return True

    # -- values ---------------------------------------------------------------------------
    def shape(self, v: ir.Value | None) -> tuple[int, ...] | None:
        """Static shape of a value."""
        return self.shapes.shape(v)

    def track(self, v: ir.Value | None) -> Track | None:
        """Track of a value (None: untracked)."""
        return None if v is None else self.tracks.get(v)

    def is_data(self, v: ir.Value | None) -> bool:
        """Whether the value depends on graph inputs."""
        return self.vc.is_data(v)

    def set(self, v: ir.Value, t: Track | None) -> None:
        """Sets the track of ``v`` (drops empty tracks)."""
        if t is not None and t.axes:
            self.tracks[v] = t

    def poison_track(self, v: ir.Value | None, reason: str) -> None:
        """Poisons every atom of ``v``."""
        t = self.track(v)
        if t is not None:
            self.poison(t.ids, reason)

    def add_param(self, tensor: str, axis: int, ids: np.ndarray, node: ir.Node, role: str,
                  trainable: bool | None = None, via: tuple = ()) -> None:
        """Attaches entries of initializer ``tensor`` along ``axis`` to atoms ``ids``."""
        if trainable is None:
            trainable = tensor in self.trainable
        self.params.append(ParamUse(tensor, axis, np.asarray(ids, dtype=np.int64).ravel(), trainable, node, role,
                                    tuple(via)))

    def weight_transform_source(self, v: ir.Value | None) -> tuple[str, tuple] | None:
        """``(initializer name, nodes)`` when ``v`` is a weight computed row by row from one
        initializer ``W`` of its shape (weight standardization: BiT's and timm's ``StdConv2d``
        export ``F.batch_norm`` over ``W.reshape(1, O, -1)``), else None.

        ``nodes`` computes ``v`` from ``W`` and constants only. The transform is checked on
        ``W``'s values (:func:`otoir.ops.fold.row_local`): zeroing rows of ``W`` zeroes those
        rows of ``v`` and leaves the others unchanged, so a group that zeroes rows of ``W`` zeroes
        the layer's outputs. Removing input channels (columns) is exact only on the transformed
        values: ``prune-channels`` folds such weights into initializers first
        (:func:`otoir.surgery.channels.fold_weight_transforms`).
        """
        if v is None or v.is_initializer() or self.vc.is_data(v):
            return None
        cache = self.weight_transforms
        if v in cache:
            return cache[v]
        from otoir.ops.fold import row_local, weight_transform

        found = weight_transform(v)
        res = None
        if found is not None:
            w, nodes = found
            if self.shape(w) == self.shape(v) and row_local(nodes, w, v):
                res = (w.name, tuple(nodes))
        cache[v] = res
        return res

    def param_source(self, v: ir.Value | None, axis: int, *, values: bool = False) -> tuple[str, int, tuple] | None:
        """Follows a constant value back to the initializer entries along ``axis``.

        Looks through the ops whose rule's ``const_flow`` (:class:`~otoir.ops.rules.ConstFlow`)
        is ``SAME`` (Cast, Identity), ``RELAYOUT`` (Reshape, Squeeze, Unsqueeze: only size-1
        axes appear or vanish), ``TRANSPOSE``, ``GATHER`` (on another axis; indices computed from constants or shapes) or
        ``EXPAND``; with ``values`` also ``UNARY`` element-wise ops of one input (Mamba's
        ``A = -exp(A_log)``), which commute with slicing but do not map zero to zero (see
        :meth:`is_pure_source`).

        Returns:
            ``(initializer name, axis in it, via nodes)`` or None.
        """
        via: list = []
        for _ in range(16):
            if v is None:
                return None
            if v.is_initializer():
                if v.const_value is None:
                    return None
                return v.name, axis, tuple(via)
            node = v.producer()
            if node is None or self.vc.is_data(v) or len(v.uses()) != 1 and via:
                return None
            r = self.vc.info[node].rule if node in self.vc.info else None
            flow = r.const_flow if r is not None else None
            src = node.inputs[0] if node.inputs else None
            ss, os_ = self.shape(src), self.shape(v)
            if ss is None or os_ is None:
                return None
            if flow is ConstFlow.SAME or (values and flow is ConstFlow.UNARY and len(node.inputs) == 1):
                pass
            elif flow is ConstFlow.TRANSPOSE:
                perm = attr(node, "perm", None)
                perm = list(perm) if perm is not None else list(reversed(range(len(ss))))
                axis = perm[axis]
            elif flow is ConstFlow.GATHER:
                g = normalize_axis(int(attr(node, "axis", 0)), len(ss))
                idx_shape = self.shape(node.inputs[1])
                ri = len(idx_shape or ())
                # the indices need not be known (BERT's token_type_ids buffer expanded to the
                # input's shape): a lookup along another axis commutes with slicing this one
                if idx_shape is None or g <= axis < g + ri:
                    return None
                axis = axis if axis < g else axis - ri + 1
            elif flow is ConstFlow.EXPAND:
                sh = len(os_) - len(ss)
                if axis - sh < 0 or ss[axis - sh] != os_[axis]:
                    return None
                axis = axis - sh
            elif flow is ConstFlow.RELAYOUT:
                # only size-1 axes may appear/disappear; map by position of non-1 axes
                a_nz = [i for i, d in enumerate(ss) if d != 1]
                b_nz = [i for i, d in enumerate(os_) if d != 1]
                if [ss[i] for i in a_nz] != [os_[i] for i in b_nz] or axis not in b_nz:
                    return None
                axis = a_nz[b_nz.index(axis)]
            else:
                return None
            via.append(node)
            v = src
        return None
