"""The fused half-space projection over all redundant groups — CPU reference (numpy and torch).

One call per step does, for every *active* group (redundant and not yet zero): the per-group
reductions ``xᵀd``, ``‖x‖²``, ``‖d‖²`` (one vectorised reduction per tensor, one ``bincount`` /
``index_add_`` over rows — no Python loop over groups), DHSPG's λ_g, the half-space test and the
in-place update ``x ← (1 − lr·λ_g/‖x‖)·x`` or ``x ← 0``. The caller then takes the base step
``x ← x − lr·d`` on every parameter and re-zeroes zero groups (:func:`zero_rows`), so a redundant
group ends at ``x − lr·d − lr·λ_g·x/‖x‖`` (the subgradient step of ``f + Σλ_g‖x_g‖``) or at 0.

Tensors are given as lists aligned with ``layout.tensors`` (numpy arrays or torch tensors, all of
one kind; ``None`` in ``ds`` means a zero direction). The CUDA kernel in ``otoir.kernels``
implements the same operation and is checked against this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from otoir.optim.layout import GroupLayout
from otoir.optim.rules import LambdaRule, halfspace_decision

__all__ = [
    "ZeroRowCache",
    "apply_group_scale",
    "group_stats",
    "halfspace_project",
    "halfspace_scales",
    "is_torch",
    "tensors_with_groups",
    "zero_rows",
]


def is_torch(x: Any) -> bool:
    """True when ``x`` is a torch tensor (without importing torch)."""
    return type(x).__module__.startswith("torch")


def tensors_with_groups(layout: GroupLayout, group_mask: np.ndarray) -> list[int]:
    """Indices of the layout tensors that have at least one row in a group of ``group_mask``."""
    rows = layout.row_mask(group_mask)
    if not rows.any():
        return []
    return np.unique(layout.row_tensor[rows]).tolist()


def _row_stats_numpy(x: np.ndarray, d: np.ndarray | None, view: tuple[int, int, int]):
    # einsum in the input dtype is single-pass; asking it for float64 output copies (3x slower)
    xv = x.reshape(view)
    xx = np.einsum("ori,ori->r", xv, xv).astype(np.float64)
    if d is None:
        zero = np.zeros_like(xx)
        return zero, xx, zero
    dv = np.asarray(d).reshape(view)
    return (
        np.einsum("ori,ori->r", xv, dv).astype(np.float64),
        xx,
        np.einsum("ori,ori->r", dv, dv).astype(np.float64),
    )


def _row_stats_torch(x: Any, d: Any, view: tuple[int, int, int]):
    """Row reductions of torch tensors: numpy arrays for CPU tensors, torch tensors otherwise.

    On CPU, ``xᵀd`` uses numpy's single-pass einsum on zero-copy views and the squared norms use
    ``torch.linalg.vector_norm`` (both measured ~5x faster than ``torch.linalg.vecdot`` or
    ``(x*d).sum`` on one thread, which allocate a temporary or take a slow path).
    """
    import torch

    o, r, i = view
    xv = x.detach().reshape(view)
    dims = (0, 2)
    xx = torch.linalg.vector_norm(xv, dim=dims).square_()
    if d is None:
        zero = torch.zeros_like(xx)
        out = (zero, xx, zero)
    else:
        dv = d.detach().reshape(view)
        dd = torch.linalg.vector_norm(dv, dim=dims).square_()
        if xv.device.type == "cpu":
            xd = torch.from_numpy(np.einsum("ori,ori->r", xv.numpy(), dv.numpy()))
        else:
            xd = (xv * dv).sum(dims)
        out = (xd, xx, dd)
    if xv.device.type == "cpu":
        return tuple(t.numpy().astype(np.float64) for t in out)
    return out


def group_stats(
    layout: GroupLayout,
    xs: Sequence[Any],
    ds: Sequence[Any],
    tensor_ids: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group ``xᵀd``, ``‖x‖²`` and ``‖d‖²`` over the given tensors.

    Args:
        layout: The group layout.
        xs: Iterates, aligned with ``layout.tensors``.
        ds: Directions, aligned with ``layout.tensors`` (``None`` = zero).
        tensor_ids: Tensors to reduce over (default: all). Groups are summed over these only.

    Returns:
        Three ``(G,)`` float64 numpy arrays.
    """
    ids = range(len(layout.tensors)) if tensor_ids is None else tensor_ids
    G = layout.num_groups
    if not ids:
        z = np.zeros(G)
        return z, z.copy(), z.copy()
    seg = np.concatenate([layout.tensor_row_groups(i) for i in ids])
    seg = np.where(seg < 0, G, seg)
    first = xs[ids[0]]
    if is_torch(first) and first.device.type != "cpu":
        import torch

        parts = [_row_stats_torch(xs[i], ds[i], layout.tensors[i].view_shape) for i in ids]
        rows = torch.stack([torch.cat([p[k] for p in parts]) for k in range(3)], dim=1)
        dev = rows.device
        acc = torch.zeros(G + 1, 3, dtype=torch.float64, device=dev)
        acc.index_add_(0, torch.as_tensor(seg, device=dev), rows.to(torch.float64))
        out = acc[:G].cpu().numpy()
        return out[:, 0].copy(), out[:, 1].copy(), out[:, 2].copy()
    stats = _row_stats_torch if is_torch(first) else _row_stats_numpy
    parts_np = [stats(xs[i], ds[i], layout.tensors[i].view_shape) for i in ids]
    res = []
    for k in range(3):
        vals = np.concatenate([p[k] for p in parts_np])
        res.append(np.bincount(seg, weights=vals, minlength=G + 1)[:G])
    return res[0], res[1], res[2]


def apply_group_scale(
    layout: GroupLayout,
    xs: Sequence[Any],
    group_scale: np.ndarray,
    tensor_ids: Sequence[int],
) -> None:
    """Multiplies every row of group g by ``group_scale[g]`` in place (ungrouped rows: 1)."""
    ext = np.concatenate([np.asarray(group_scale, dtype=np.float64), [1.0]])
    for i in tensor_ids:
        t = layout.tensors[i]
        rs = ext[layout.tensor_row_groups(i)]
        x = xs[i]
        if is_torch(x):
            import torch

            s = torch.as_tensor(rs, device=x.device).to(x.dtype).view(1, t.rows, 1)
            x.detach().view(t.view_shape).mul_(s)
        else:
            x.reshape(t.view_shape)[...] *= rs.astype(x.dtype).reshape(1, t.rows, 1)


def zero_rows(layout: GroupLayout, xs: Sequence[Any], local_rows: Sequence[Any]) -> None:
    """Zeroes rows in place: ``local_rows[i]`` are row indices of tensor i (or None / empty).

    Use :class:`ZeroRowCache` to build ``local_rows`` once per change of the zero set.
    """
    for i, rows in enumerate(local_rows):
        if rows is None or len(rows) == 0:
            continue
        t = layout.tensors[i]
        x = xs[i]
        if is_torch(x) and x.device.type != "cpu":
            x.detach().view(t.view_shape).index_fill_(1, rows, 0)
        elif is_torch(x):
            x.detach().numpy().reshape(t.view_shape)[:, rows, :] = 0
        else:
            x.reshape(t.view_shape)[:, rows, :] = 0


class ZeroRowCache:
    """Per-tensor row indices of a set of zero groups, rebuilt only when the set changes."""

    def __init__(self, layout: GroupLayout) -> None:
        """Args:
        layout: The group layout.
        """
        self.layout = layout
        self._key: bytes | None = None
        self._device: Any = None
        self._rows: list[Any] = []

    def rows(self, zero_mask: np.ndarray, like: Any = None) -> list[Any]:
        """Row indices per tensor of the groups in ``zero_mask`` (torch tensors if ``like`` is)."""
        key = np.packbits(np.asarray(zero_mask, dtype=bool)).tobytes()
        device = getattr(like, "device", None) if like is not None and is_torch(like) else None
        if key == self._key and device == self._device:
            return self._rows
        ext = np.concatenate([np.asarray(zero_mask, dtype=bool), [False]])
        out: list[Any] = []
        for i in range(len(self.layout.tensors)):
            loc = np.flatnonzero(ext[self.layout.tensor_row_groups(i)])
            if loc.size == 0:
                out.append(None)
            elif device is not None and device.type != "cpu":
                import torch

                out.append(torch.as_tensor(loc, device=device))
            else:
                out.append(loc)
        self._key, self._device, self._rows = key, device, out
        return out


def halfspace_scales(
    xd: np.ndarray,
    xx: np.ndarray,
    dd: np.ndarray,
    active: np.ndarray,
    lr: float,
    rule: LambdaRule,
    epsilon: float,
    *,
    project: bool = True,
    force: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group factor applied to x before the base step and the projected mask.

    The decision of :func:`halfspace_project` (and of the fused step) on given group statistics
    (``xd``/``xx``/``dd`` may be ``None`` when ``force``). Returns ``(scale, projected)``:
    ``scale`` is ``(G,)`` float64, 1 for inactive groups and 0 for projected ones.
    """
    active = np.asarray(active, dtype=bool)
    if force:
        return np.where(active, 0.0, 1.0), active.copy()
    lam = rule(xd, xx, dd)
    scale, proj = halfspace_decision(xd, xx, lam, lr, epsilon)
    projected = active & proj if project else active & (xx <= 0)
    scale = np.where(active, np.where(projected, 0.0, scale), 1.0)
    return scale, projected


def halfspace_project(
    layout: GroupLayout,
    xs: Sequence[Any],
    ds: Sequence[Any],
    active: np.ndarray,
    lr: float,
    rule: LambdaRule,
    epsilon: float,
    *,
    project: bool = True,
    force: bool = False,
) -> np.ndarray:
    """The fused half-space operation over the active groups, in place on ``xs``.

    Args:
        layout: The group layout.
        xs: Iterates aligned with ``layout.tensors`` (modified in place).
        ds: Base directions aligned with ``layout.tensors`` (the base step is ``x − lr·d``).
        active: ``(G,)`` bool, the redundant groups that are not zero yet.
        lr: Step size.
        rule: λ_g rule.
        epsilon: Half-space threshold.
        project: Apply the half-space projection (else only the penalty step).
        force: Project every active group to zero.

    Returns:
        ``(G,)`` bool mask of the groups set to zero by this call.
    """
    active = np.asarray(active, dtype=bool)
    projected = np.zeros(layout.num_groups, dtype=bool)
    ids = tensors_with_groups(layout, active)
    if not ids:
        return projected
    stats = (None, None, None) if force else group_stats(layout, xs, ds, ids)
    scale, projected = halfspace_scales(*stats, active, lr, rule, epsilon, project=project, force=force)
    apply_group_scale(layout, xs, scale, ids)
    return projected
