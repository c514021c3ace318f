"""Flat description of parameter groups over named tensors.

A *group* is a set of parameter elements that the optimizer drives to zero together: the rows
of several tensors along one axis (a pruning ZIG: a conv's output channel plus the matching BN
entries) or whole tensors (an erasing GeZIG). :class:`GroupLayout` turns such a description into
index arrays so that every per-step operation is a handful of vectorised calls:

* *row view*: each grouped tensor is seen as ``(outer, rows, inner)`` where ``rows`` is the
  grouped axis (``(1, 1, numel)`` for whole-tensor groups). A row belongs to at most one group.
  Per-row reductions are one call per tensor, and per-group sums are one ``bincount`` /
  ``index_add_`` over the concatenated rows.
* *element view*: ``flat_index`` (positions in the concatenation of the grouped tensors,
  flattened in layout order) sorted by group, with ``segment_ids`` and ``group_ptr`` (CSR), for
  :meth:`GroupLayout.gather` / :meth:`GroupLayout.scatter` and segment reductions.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

__all__ = ["GroupLayout", "SliceSpec", "TensorRows"]

#: One slice of a group: ``(tensor_name, axis, indices)``. ``axis=None`` (and ``indices=None``)
#: means the whole tensor; ``indices=None`` with an axis means every index along that axis.
SliceSpec = tuple[str, "int | None", "Sequence[int] | np.ndarray | None"]


@dataclass(frozen=True)
class TensorRows:
    """How one grouped tensor is viewed as rows.

    Attributes:
        name: Tensor (ONNX initializer / torch parameter) name.
        shape: Full tensor shape.
        axis: Grouped axis, or ``None`` when groups take the whole tensor.
        outer: Product of the dimensions before ``axis``.
        rows: Size of ``axis`` (1 for whole-tensor groups).
        inner: Product of the dimensions after ``axis``.
    """

    name: str
    shape: tuple[int, ...]
    axis: int | None
    outer: int
    rows: int
    inner: int

    @property
    def numel(self) -> int:
        """Number of elements of the tensor."""
        return self.outer * self.rows * self.inner

    @property
    def view_shape(self) -> tuple[int, int, int]:
        """The ``(outer, rows, inner)`` shape to reshape the tensor to."""
        return (self.outer, self.rows, self.inner)


@dataclass(frozen=True, eq=False)
class GroupLayout:
    """Groups of parameter elements, laid out for vectorised gather/scatter and reductions.

    Build it with :meth:`from_slices` or :meth:`from_tensors`, not directly.

    Attributes:
        tensors: The grouped tensors, in layout order.
        num_groups: Number of groups.
        row_offset: ``(T+1,)`` start of each tensor's rows in the global row numbering.
        row_group: ``(total_rows,)`` group of each row, ``-1`` for rows in no group.
        row_numel: ``(total_rows,)`` elements per row (``outer * inner``).
        group_numel: ``(G,)`` elements per group.
        group_row_ptr: ``(G+1,)`` CSR offsets into :attr:`group_rows`.
        group_rows: Global row ids sorted by group (rows of group ``g`` are
            ``group_rows[group_row_ptr[g]:group_row_ptr[g+1]]``).
    """

    tensors: tuple[TensorRows, ...]
    num_groups: int
    row_offset: np.ndarray
    row_group: np.ndarray
    row_numel: np.ndarray
    group_numel: np.ndarray
    group_row_ptr: np.ndarray
    group_rows: np.ndarray
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_slices(
        cls,
        groups: Sequence[Sequence[SliceSpec]],
        shapes: Mapping[str, Sequence[int]],
    ) -> GroupLayout:
        """Builds a layout from groups given as lists of tensor slices.

        Args:
            groups: ``groups[g]`` is a list of ``(name, axis, indices)`` slices; ``axis=None``
                takes the whole tensor (a GeZIG member), ``indices=None`` every index.
                Include only the slices the optimizer should drive to zero (usually the
                producer side of a channel group, not the consumer columns).
            shapes: Shape of every tensor named in ``groups``.

        Returns:
            The layout. Tensors appear in order of first mention.

        Raises:
            ValueError: On unknown names, out-of-range indices, a tensor grouped along two
                different axes, or an element claimed by two groups.
        """
        order: list[str] = []
        axes: dict[str, int | None] = {}
        members: dict[str, list[tuple[np.ndarray, int]]] = {}
        for g, group in enumerate(groups):
            if hasattr(group, "slices"):
                raise TypeError(
                    f"group {g} is an analysis Group, not a list of (name, axis, indices) slices: use "
                    "otoir.optim.from_groups.layout_from_groups or build_optimizer(..., groups=...)"
                )
            for spec in group:
                if len(spec) != 3:
                    raise ValueError(f"group {g}: slice {spec!r} is not (name, axis, indices)")
                name, axis, indices = spec
                if name not in shapes:
                    raise ValueError(f"group {g}: unknown tensor {name!r}")
                shape = tuple(int(s) for s in shapes[name])
                if axis is not None:
                    if not shape:
                        raise ValueError(f"group {g}: {name!r} is a scalar, use axis=None")
                    axis = int(axis) % len(shape)
                elif indices is not None:
                    raise ValueError(f"group {g}: {name!r} has indices but axis=None")
                if name in axes and axes[name] != axis:
                    raise ValueError(
                        f"tensor {name!r} is grouped along axis {axes[name]} and {axis}; "
                        "a tensor can be grouped along one axis only"
                    )
                if name not in axes:
                    axes[name] = axis
                    order.append(name)
                    members[name] = []
                nrows = 1 if axis is None else shape[axis]
                if indices is None:
                    idx = np.arange(nrows, dtype=np.int64)
                else:
                    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
                    if idx.size and (idx.min() < -nrows or idx.max() >= nrows):
                        raise ValueError(f"group {g}: index out of range for {name!r} axis {axis}")
                    idx = idx % nrows
                members[name].append((idx, g))
        return cls._build(order, axes, members, shapes, len(groups))

    @classmethod
    def from_tensors(
        cls, groups: Sequence[Sequence[str]], shapes: Mapping[str, Sequence[int]]
    ) -> GroupLayout:
        """Builds a layout of whole-tensor groups (GeZIGs).

        Args:
            groups: ``groups[g]`` lists the tensor names of group ``g``.
            shapes: Shape of every named tensor.

        Returns:
            The layout.
        """
        return cls.from_slices([[(n, None, None) for n in grp] for grp in groups], shapes)

    @classmethod
    def _build(
        cls,
        order: list[str],
        axes: Mapping[str, int | None],
        members: Mapping[str, list[tuple[np.ndarray, int]]],
        shapes: Mapping[str, Sequence[int]],
        num_groups: int,
    ) -> GroupLayout:
        tensors: list[TensorRows] = []
        row_groups: list[np.ndarray] = []
        for name in order:
            shape = tuple(int(s) for s in shapes[name])
            axis = axes[name]
            if axis is None:
                outer, rows, inner = 1, 1, int(np.prod(shape, dtype=np.int64))
            else:
                outer = int(np.prod(shape[:axis], dtype=np.int64))
                rows = shape[axis]
                inner = int(np.prod(shape[axis + 1 :], dtype=np.int64))
            tensors.append(TensorRows(name, shape, axis, outer, rows, inner))
            rg = np.full(rows, -1, dtype=np.int64)
            for idx, g in members[name]:
                if np.unique(idx).size != idx.size or np.any(rg[idx] >= 0):
                    raise ValueError(f"tensor {name!r}: an index is claimed twice (group {g})")
                rg[idx] = g
            row_groups.append(rg)
        row_offset = np.zeros(len(tensors) + 1, dtype=np.int64)
        row_offset[1:] = np.cumsum([t.rows for t in tensors])
        row_group = np.concatenate(row_groups) if row_groups else np.zeros(0, np.int64)
        row_numel = np.concatenate(
            [np.full(t.rows, t.outer * t.inner, dtype=np.int64) for t in tensors]
        ) if tensors else np.zeros(0, np.int64)
        grouped = np.flatnonzero(row_group >= 0)
        group_rows = grouped[np.argsort(row_group[grouped], kind="stable")]
        counts = np.bincount(row_group[grouped], minlength=num_groups)
        group_row_ptr = np.zeros(num_groups + 1, dtype=np.int64)
        group_row_ptr[1:] = np.cumsum(counts)
        group_numel = np.bincount(
            row_group[grouped], weights=row_numel[grouped], minlength=num_groups
        ).astype(np.int64)
        if num_groups and np.any(group_numel == 0):
            empty = np.flatnonzero(group_numel == 0)[:5].tolist()
            raise ValueError(f"groups {empty} have no elements")
        for arr in (row_offset, row_group, row_numel, group_numel, group_row_ptr, group_rows):
            arr.setflags(write=False)
        return cls(
            tensors=tuple(tensors),
            num_groups=num_groups,
            row_offset=row_offset,
            row_group=row_group,
            row_numel=row_numel,
            group_numel=group_numel,
            group_row_ptr=group_row_ptr,
            group_rows=group_rows,
            _index={t.name: i for i, t in enumerate(tensors)},
        )

    # ------------------------------------------------------------------ queries
    @property
    def names(self) -> tuple[str, ...]:
        """Names of the grouped tensors, in layout order."""
        return tuple(t.name for t in self.tensors)

    @property
    def total_rows(self) -> int:
        """Number of rows over all grouped tensors."""
        return int(self.row_offset[-1])

    def tensor_index(self, name: str) -> int:
        """Position of tensor ``name`` in :attr:`tensors` (KeyError if not grouped)."""
        return self._index[name]

    def rows_of(self, name: str) -> TensorRows:
        """Row view of tensor ``name``."""
        return self.tensors[self._index[name]]

    def tensor_row_groups(self, i: int) -> np.ndarray:
        """Group id of each row of tensor ``i`` (``-1`` for ungrouped rows)."""
        return self.row_group[self.row_offset[i] : self.row_offset[i + 1]]

    def groups_of_tensor(self, i: int) -> np.ndarray:
        """Sorted distinct group ids touching tensor ``i``."""
        rg = self.tensor_row_groups(i)
        return np.unique(rg[rg >= 0])

    @cached_property
    def row_tensor(self) -> np.ndarray:
        """``(total_rows,)`` tensor index of each row."""
        return np.repeat(np.arange(len(self.tensors), dtype=np.int64), [t.rows for t in self.tensors])

    @cached_property
    def row_local(self) -> np.ndarray:
        """``(total_rows,)`` row index inside its tensor."""
        return np.arange(self.total_rows, dtype=np.int64) - self.row_offset[self.row_tensor]

    @cached_property
    def tensor_offset(self) -> np.ndarray:
        """``(T+1,)`` element offsets of the tensors in the flat concatenation."""
        off = np.zeros(len(self.tensors) + 1, dtype=np.int64)
        off[1:] = np.cumsum([t.numel for t in self.tensors])
        return off

    @cached_property
    def _element_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Global row id of every element of the flat concatenation, then a stable sort by the
        # rank of its row in ``group_rows`` (ungrouped rows go last and are dropped).
        elem_row = np.concatenate(
            [
                np.broadcast_to(
                    np.arange(t.rows, dtype=np.int64)[None, :, None] + self.row_offset[i],
                    t.view_shape,
                ).reshape(-1)
                for i, t in enumerate(self.tensors)
            ]
        ) if self.tensors else np.zeros(0, np.int64)
        rank = np.full(self.total_rows, np.iinfo(np.int64).max, dtype=np.int64)
        rank[self.group_rows] = np.arange(self.group_rows.size, dtype=np.int64)
        keys = rank[elem_row]
        order = np.argsort(keys, kind="stable")
        flat_index = order[: int(self.group_numel.sum())]
        segment_ids = self.row_group[elem_row[flat_index]]
        group_ptr = np.zeros(self.num_groups + 1, dtype=np.int64)
        group_ptr[1:] = np.cumsum(self.group_numel)
        for arr in (flat_index, segment_ids, group_ptr):
            arr.setflags(write=False)
        return flat_index, segment_ids, group_ptr

    @property
    def flat_index(self) -> np.ndarray:
        """``(M,)`` positions of the grouped elements in the flat concatenation, sorted by group."""
        return self._element_index[0]

    @property
    def segment_ids(self) -> np.ndarray:
        """``(M,)`` group id of each entry of :attr:`flat_index` (non-decreasing)."""
        return self._element_index[1]

    @property
    def group_ptr(self) -> np.ndarray:
        """``(G+1,)`` CSR offsets of the groups in :attr:`flat_index`."""
        return self._element_index[2]

    # ------------------------------------------------------------------ gather / scatter
    def flatten(self, arrays: Mapping[str, Any]) -> Any:
        """Concatenates the grouped tensors (numpy arrays or torch tensors) into one flat vector."""
        parts = [arrays[t.name].reshape(-1) for t in self.tensors]
        first = parts[0] if parts else np.zeros(0)
        if isinstance(first, np.ndarray):
            return np.concatenate(parts)
        import torch

        return torch.cat(parts)

    def gather(self, arrays: Mapping[str, Any]) -> Any:
        """Returns the grouped elements as one flat vector ordered by group.

        Args:
            arrays: Tensor name → numpy array or torch tensor (same kind for all).

        Returns:
            ``(M,)`` vector; group ``g`` is ``out[group_ptr[g]:group_ptr[g+1]]``.
        """
        flat = self.flatten(arrays)
        if isinstance(flat, np.ndarray):
            return flat[self.flat_index]
        import torch

        return flat[torch.tensor(self.flat_index, device=flat.device)]

    def scatter(self, values: Any, arrays: MutableMapping[str, Any]) -> None:
        """Writes a group-ordered flat vector (as returned by :meth:`gather`) back in place.

        Args:
            values: ``(M,)`` numpy array or torch tensor.
            arrays: Tensor name → contiguous numpy array / torch tensor, modified in place.
        """
        off = self.tensor_offset
        for i, t in enumerate(self.tensors):
            sel = self._scatter_plan[i]
            if sel.size == 0:
                continue
            local = self.flat_index[sel] - off[i]
            target = arrays[t.name]
            if isinstance(target, np.ndarray):
                target.reshape(-1)[local] = values[sel]
            else:
                import torch

                dev = target.device
                target.view(-1)[torch.as_tensor(local, device=dev)] = values[
                    torch.as_tensor(sel, device=dev)
                ]

    @cached_property
    def _scatter_plan(self) -> list[np.ndarray]:
        tid = np.searchsorted(self.tensor_offset, self.flat_index, side="right") - 1
        return [np.flatnonzero(tid == i) for i in range(len(self.tensors))]

    def segment_sum(self, values: Any) -> Any:
        """Per-group sums of a group-ordered flat vector (numpy or torch)."""
        if isinstance(values, np.ndarray):
            return np.bincount(self.segment_ids, weights=values, minlength=self.num_groups)
        import torch

        seg = torch.tensor(self.segment_ids, device=values.device)
        return torch.zeros(self.num_groups, dtype=values.dtype, device=values.device).index_add_(
            0, seg, values
        )

    def row_mask(self, group_mask: np.ndarray) -> np.ndarray:
        """``(total_rows,)`` bool: rows whose group is set in ``group_mask`` (``(G,)`` bool)."""
        ext = np.concatenate([np.asarray(group_mask, dtype=bool), [False]])
        return ext[self.row_group]
