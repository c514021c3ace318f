"""The common description of groups, shared by erasing (GeZIG) and pruning (ZIG).

A group is a set of parameter entries that are zeroed and removed together. Its ``slices``
are the trainable entries the optimizer drives to zero; ``dependent`` are entries removed with
the group at construction but not optimised (consumer weight columns, BatchNorm running
statistics). Both analyses produce :class:`Group` objects; ``zero-groups``, the optimizers
(``otoir.optim.GroupLayout.from_slices``) and the construction passes consume them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["TensorSlice", "Group", "zero_group", "zero_groups", "group_is_zero", "zero_mask", "zero_subset",
           "tensor_array", "set_tensor_array"]


@dataclass(frozen=True)
class TensorSlice:
    """Entries of one initializer.

    Attributes:
        tensor: Initializer name.
        axis: The axis indexed by ``indices``; None means the whole tensor.
        indices: Indices along ``axis`` (sorted, unique); None when ``axis`` is None.
    """

    tensor: str
    axis: int | None = None
    indices: tuple[int, ...] | None = None

    def select(self, array: np.ndarray) -> np.ndarray:
        """The entries of ``array`` this slice covers (a copy)."""
        if self.axis is None:
            return np.array(array)
        return np.take(array, list(self.indices or ()), axis=self.axis)

    def numel(self, shape: Sequence[int]) -> int:
        """Number of entries covered, for a tensor of ``shape``."""
        n = int(np.prod(shape)) if len(shape) else 1
        if self.axis is None:
            return n
        return n // max(int(shape[self.axis]), 1) * len(self.indices or ())


@dataclass(frozen=True)
class Group:
    """A zero-invariant group.

    Attributes:
        id: Stable identifier, e.g. ``gezig:3`` or ``zig:conv1.weight:5``.
        kind: ``"gezig"`` (a whole segment, erasing) or ``"zig"`` (one channel, pruning).
        slices: Trainable entries driven to zero together.
        dependent: Entries removed together with the group but not optimised.
        num_params: Parameters removed with the group (slices and dependent entries).
        flops: Forward FLOPs per sample attributed to the group.
        prunable: Whether the group may be zeroed.
        reason: Why it is not prunable (or a note).
        meta: Analysis-specific details (segment id, joints fed, channel index...).
    """

    id: str
    kind: str
    slices: tuple[TensorSlice, ...]
    dependent: tuple[TensorSlice, ...] = ()
    num_params: int = 0
    flops: int = 0
    prunable: bool = True
    reason: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def tensors(self) -> tuple[str, ...]:
        """Names of the tensors the trainable slices touch."""
        return tuple(dict.fromkeys(s.tensor for s in self.slices))


def tensor_array(model: ir.Model, name: str) -> np.ndarray:
    """The value of initializer ``name`` as a numpy array (read-only view or copy)."""
    v = model.graph.initializers[name]
    return v.const_value.numpy()


def set_tensor_array(model: ir.Model, name: str, array: np.ndarray) -> None:
    """Replaces the value of initializer ``name`` (keeping its name)."""
    import onnx_ir as ir

    v = model.graph.initializers[name]
    v.const_value = ir.tensor(np.asarray(array, order="C"), name=name)  # (ascontiguousarray makes 0-d 1-d)
    v.shape = ir.Shape(array.shape)


def zero_group(model: ir.Model, group: Group, *, include_dependent: bool = False) -> None:
    """Sets the group's trainable entries (and optionally its dependent ones) to zero."""
    zero_groups(model, (group,), include_dependent=include_dependent)


def zero_groups(model: ir.Model, groups: Iterable[Group], *, include_dependent: bool = False) -> None:
    """:func:`zero_group` of several groups, each tensor rewritten once."""
    by_tensor: dict[str, list[TensorSlice]] = {}
    for group in groups:
        for s in (*group.slices, *(group.dependent if include_dependent else ())):
            by_tensor.setdefault(s.tensor, []).append(s)
    for name, slices in by_tensor.items():
        arr = np.array(tensor_array(model, name))
        for s in slices:
            if s.axis is None:
                arr[...] = 0
            else:
                idx = [slice(None)] * arr.ndim
                idx[s.axis] = list(s.indices or ())
                arr[tuple(idx)] = 0
        set_tensor_array(model, name, arr)


def group_is_zero(model: ir.Model, group: Group) -> bool:
    """Whether every trainable entry of the group is exactly zero (many groups: :func:`zero_mask`)."""
    for s in group.slices:
        if np.any(s.select(tensor_array(model, s.tensor)) != 0):
            return False
    return True


def zero_mask(model: ir.Model, groups: Sequence[Group]) -> np.ndarray:
    """:func:`group_is_zero` of every group (a boolean array), each initializer read once.

    Per tensor and axis the slices use, whether each index along the axis holds a nonzero (NaN
    counts as nonzero); the tensor's array is dropped before the next is read, so memory stays at
    one tensor however many groups share it. Reading an initializer can copy it (a tensor loaded
    from a file), which per group and slice made this the slowest step of pruning a BERT-base.
    """
    axes: dict[str, set[int | None]] = {}
    for g in groups:
        for s in g.slices:
            axes.setdefault(s.tensor, set()).add(s.axis)
    nonzero: dict[tuple[str, int | None], np.ndarray] = {}
    for name, wanted in axes.items():
        hot = np.asarray(tensor_array(model, name)) != 0
        for axis in wanted:
            if axis is None:
                nonzero[(name, None)] = np.array([hot.any()])
            else:
                nonzero[(name, axis)] = hot.any(axis=tuple(i for i in range(hot.ndim) if i != axis))
        del hot
    out = np.ones(len(groups), dtype=bool)
    for i, g in enumerate(groups):
        for s in g.slices:
            nz = nonzero[(s.tensor, s.axis)]
            if nz[0] if s.axis is None else nz[list(s.indices or ())].any():
                out[i] = False
                break
    return out


def zero_subset(model: ir.Model, groups: Sequence[Group]) -> list[Group]:
    """The groups whose trainable entries are all exactly zero, in order (:func:`zero_mask`)."""
    return [g for g, z in zip(groups, zero_mask(model, groups), strict=True) if z]
