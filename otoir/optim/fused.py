"""Fused optimizer step on CPU (torch CPU tensors and numpy arrays), SGD base rule.

The unfused step streams every parameter through memory several times: the momentum update
(``m ← μm + g``: ``mul_`` then ``add_``), the per-row statistics (``xᵀd``, ``‖x‖²``, ``‖d‖²``, one
pass per reduction), the half-space scale (read and write x) and the base step (read x, d,
write x). A plain SGD(momentum) step is three passes, the unfused DHSPG step six to eight.

:class:`FusedSGD` does each step row by row, so every row is read once while it is in cache:

* warm-up / done steps (one sweep): row statistics of ``(x, g)`` when scores are due, the
  momentum update, the base step ``x ← x − lr·m`` and re-zeroing of zero groups;
* hybrid steps (two sweeps, because λ_g needs a group's statistics summed over all its tensors
  before any of its rows can be updated): sweep 1 updates the momentum and reduces the row
  statistics of ``(x, m)`` (tensors without active groups also take their base step there);
  sweep 2 applies ``x ← s_row·x − lr·m`` and re-zeroes.

The work is done by the C kernel ``kernels/cpu_step.c`` (built at first use, see
:mod:`otoir.kernels.cpu`), one call per tensor and sweep. Without a C compiler, and for tensors
grouped along a strided axis, the same sequence runs as torch/numpy calls on chunks of about
:data:`CHUNK_ELEMS` elements (cache-sized; Python overhead per chunk). Both reproduce the
element-wise rounding of the unfused code (torch's fused multiply-add in ``add_(t, alpha=a)``,
numpy's separately rounded ``x -= lr*d``), so warm-up and done steps are bit-for-bit those of the
generic path (and of ``torch.optim.SGD``). The row reductions round differently (summation
order; double accumulation in the kernel): scores agree to float rounding, and in hybrid steps
λ_g and the half-space scale of active groups can move by an ulp, so their rows (and, through
later gradients, other values) can differ from the generic path at rounding level.

The step that creates the momentum buffers uses the chunk path. Adam/AdamW, CUDA tensors,
sparse or non-contiguous gradients and a grouped tensor without a gradient go through the
generic path (the front ends return ``None`` from ``fused_step`` before changing anything).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# otoir.kernels imports nothing from otoir.optim; this module is itself imported only when a
# front end first takes a fused step.
from otoir.kernels.cpu import (
    FLAG_FM,
    FLAG_HM,
    FLAG_UX,
    FLAG_WD,
    STATS_AFTER,
    STATS_BEFORE,
    STATS_NONE,
    cpu_kernel,
)
from otoir.optim.halfspace import halfspace_scales
from otoir.optim.layout import GroupLayout
from otoir.optim.rules import LambdaRule

__all__ = ["CHUNK_ELEMS", "PARALLEL_MIN_ELEMS", "FusedSGD", "StepRequest"]

#: Target elements per chunk: three float32 operands of 128 Ki elements are 1.5 MiB (L2-sized).
CHUNK_ELEMS = int(os.environ.get("OTOIR_FUSED_CHUNK", 1 << 17))
#: Kernel calls of a sweep run on several threads only above this many elements in total.
PARALLEL_MIN_ELEMS = 1 << 18


@dataclass
class StepRequest:
    """What one fused step must do (built by :class:`~otoir.optim.core.HybridCore`).

    Attributes:
        lr: Step size.
        score: Return the per-group ``(xᵀg, ‖x‖², ‖g‖²)`` of the iterate and the raw gradient,
            taken before the update.
        active: ``(G,)`` bool, groups that take the half-space step (``None``: none).
        rule: λ_g rule.
        epsilon: Half-space threshold.
        force: Project every active group.
        zero: ``(G,)`` bool, groups held at zero before this step.
    """

    lr: float
    score: bool = False
    active: np.ndarray | None = None
    rule: LambdaRule | None = None
    epsilon: float = 0.0
    force: bool = False
    zero: np.ndarray | None = None


def _load_kernel() -> Any:
    """The CPU step kernel, or ``None`` (no compiler, disabled, load error)."""
    return cpu_kernel()


def _ptr(a: Any, tm: bool) -> int:
    return a.data_ptr() if tm else a.ctypes.data


def _same_layout(m: Any, x: Any, tm: bool) -> bool:
    """``m`` is a contiguous array of ``x``'s dtype and size (a usable momentum buffer)."""
    if m is None:
        return False
    if tm:
        return m.dtype == x.dtype and m.is_contiguous() and m.numel() == x.numel() and m.device == x.device
    return m.dtype == x.dtype and m.flags.c_contiguous and m.size == x.size


def _kernel_fn(kern: Any, x: Any, tm: bool, which: str) -> Any:
    """The kernel entry for ``x``'s dtype (float32/float64), or ``None``."""
    if tm:
        import torch

        dt = {torch.float32: "f32", torch.float64: "f64"}.get(x.dtype)
    else:
        dt = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}.get(x.dtype)
    return None if dt is None else getattr(kern, f"{which}_{dt}")


class _Chunk:
    """Rows ``r0:r1`` of parameter ``pi`` (layout tensor ``li`` or -1; flat elements if -1)."""

    __slots__ = ("pi", "li", "r0", "r1", "grow", "whole")

    def __init__(self, pi: int, li: int, r0: int, r1: int, grow: int, whole: bool) -> None:
        self.pi, self.li, self.r0, self.r1, self.grow, self.whole = pi, li, r0, r1, grow, whole


class FusedSGD:
    """The chunked SGD(momentum) + DHSPG step over a fixed list of parameters.

    Args:
        layout: Group layout.
        shapes: Shape of each parameter, in parameter order.
        layout_index: For each parameter, its index in ``layout.tensors`` or -1.
        torch_mode: Parameters are torch CPU tensors (else numpy arrays).
    """

    def __init__(
        self,
        layout: GroupLayout,
        shapes: Sequence[Sequence[int]],
        layout_index: Sequence[int],
        *,
        torch_mode: bool,
    ) -> None:
        self.layout = layout
        self.torch_mode = torch_mode
        self.layout_index = list(layout_index)
        self.chunks: list[_Chunk] = []
        self.param_chunks: list[list[int]] = []
        for pi, shape in enumerate(shapes):
            li = self.layout_index[pi]
            mine: list[int] = []
            if li >= 0:
                t = layout.tensors[li]
                goff = int(layout.row_offset[li])
                if t.outer != 1:  # rows are strided: one chunk with a (outer, rows, inner) view
                    mine.append(self._add(_Chunk(pi, li, 0, t.rows, goff, True)))
                else:
                    step = max(1, CHUNK_ELEMS // max(t.inner, 1))
                    for r0 in range(0, t.rows, step):
                        r1 = min(t.rows, r0 + step)
                        mine.append(self._add(_Chunk(pi, li, r0, r1, goff + r0, False)))
            else:
                n = int(np.prod(shape, dtype=np.int64))
                for e0 in range(0, max(n, 1), CHUNK_ELEMS):
                    mine.append(self._add(_Chunk(pi, -1, e0, min(n, e0 + CHUNK_ELEMS), 0, False)))
            self.param_chunks.append(mine)
        R = layout.total_rows
        self._stats = np.zeros((3, R), dtype=np.float64)
        self._stats_ptr = self._stats.ctypes.data
        self.kernel = _load_kernel()
        #: Worker threads for the kernel calls (``None``: torch's thread count / 1 for numpy).
        self.threads: int | None = None
        self._pool: Any = None
        self._pool_size = 0
        # rows/inner of the kernel's 2-D view per parameter, or None (strided rows: chunk path)
        self._kview: list[tuple[int, int] | None] = []
        for pi, shape in enumerate(shapes):
            li = self.layout_index[pi]
            if li >= 0:
                t = layout.tensors[li]
                self._kview.append(None if t.outer != 1 else (t.rows, t.inner))
            else:
                self._kview.append((1, int(np.prod(shape, dtype=np.int64))))
        self._seg = np.where(layout.row_group < 0, layout.num_groups, layout.row_group)
        self._zero_key: bytes | None = None
        self._zero_rows: list[Any] = [None] * len(self.chunks)

    def _add(self, c: _Chunk) -> int:
        self.chunks.append(c)
        return len(self.chunks) - 1

    # ------------------------------------------------------------------ views
    def _views(self, arr: Any, pi: int) -> list[Any]:
        """Chunk views of ``arr`` (parameter ``pi``'s shape): 2-D rows, 3-D strided or 1-D flat."""
        out = []
        for ci in self.param_chunks[pi]:
            c = self.chunks[ci]
            if c.li >= 0:
                t = self.layout.tensors[c.li]
                if c.whole:
                    out.append(arr.reshape(t.view_shape))
                else:
                    out.append(arr.reshape(t.rows, t.inner)[c.r0 : c.r1])
            else:
                out.append(arr.reshape(-1)[c.r0 : c.r1])
        return out

    def _zero_row_index(self, zero: np.ndarray) -> list[Any]:
        key = np.packbits(zero).tobytes()
        if key == self._zero_key:
            return self._zero_rows
        ext = np.concatenate([zero, [False]])
        rz = ext[self._seg]
        out: list[Any] = []
        for c in self.chunks:
            if c.li < 0:
                out.append(None)
                continue
            loc = np.flatnonzero(rz[c.grow : c.grow + (c.r1 - c.r0)])
            if loc.size == 0:
                out.append(None)
            elif self.torch_mode:
                import torch

                out.append(torch.from_numpy(loc))
            else:
                out.append(loc)
        self._zero_key, self._zero_rows = key, out
        return out

    # ------------------------------------------------------------------ the step
    def step(
        self,
        xs: Sequence[Any],
        gs: Sequence[Any],
        bufs: list[Any | None],
        req: StepRequest,
        *,
        momentum: float,
        dampening: float,
        weight_decay: float,
    ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray] | None, np.ndarray | None]:
        """One fused step in place on ``xs`` and ``bufs``.

        Args:
            xs: Parameters (all, in the constructor's order).
            gs: Their gradients (``None``: no gradient, parameter untouched; not allowed for
                layout tensors).
            bufs: Momentum buffers (``None`` entries are created as a copy of the gradient and
                stored back into the list); ignored when ``momentum == 0``.
            req: What to do this step.
            momentum, dampening, weight_decay: SGD settings.

        Returns:
            ``(score_stats, projected)``: per-group ``(xᵀg, ‖x‖², ‖g‖²)`` when ``req.score``,
            and the mask of groups projected this step when ``req.active`` is given.
        """
        lay = self.layout
        G = lay.num_groups
        lr = req.lr
        tm = self.torch_mode
        if tm:
            import torch
        stats = self._stats
        active = req.active
        hs = active is not None and bool(active.any())
        if hs:
            hs_rows = np.concatenate([active, [False]])[self._seg]
            hs_tensors = set(np.unique(lay.row_tensor[hs_rows]).tolist())
        else:
            hs_tensors = set()
        need_dstats = hs and not req.force
        zero = req.zero if req.zero is not None else np.zeros(G, dtype=bool)
        zrows = self._zero_row_index(zero) if zero.any() else None
        if req.score or need_dstats:
            stats.fill(0.0)
        kern = self.kernel
        R = lay.total_rows
        zmask = np.concatenate([zero, [False]])[self._seg].astype(np.uint8) if zrows is not None else None
        base_flags = (FLAG_WD if weight_decay else 0) | (FLAG_HM if momentum else 0) | (FLAG_FM if tm else 0)
        deferred: list[tuple[int, list[Any], list[Any]]] = []
        kdeferred: list[tuple[int, Any, Any]] = []
        calls: list[tuple[int, Any, tuple[Any, ...]]] = []
        for pi, x in enumerate(xs):
            g = gs[pi]
            if g is None:
                continue
            li = self.layout_index[pi]
            kv = self._kview[pi] if kern is not None else None
            if kv is not None:
                fn = _kernel_fn(kern, x, tm, "sweep")
                m = bufs[pi] if momentum else None
                if fn is None or (momentum and not _same_layout(m, x, tm)):
                    kv = None  # unsupported dtype, or a new/foreign momentum buffer: chunk path
            if kv is not None:
                later = li in hs_tensors
                grow = int(lay.row_offset[li]) if li >= 0 else 0
                sm = STATS_BEFORE if (req.score and li >= 0) else (STATS_AFTER if (need_dstats and later) else STATS_NONE)
                zp = None
                if not later and zmask is not None and li >= 0:
                    zp = zmask.ctypes.data + grow
                sp = self._stats_ptr + 8 * grow
                calls.append((kv[0] * kv[1], fn, (
                    _ptr(x, tm), _ptr(g, tm), None if m is None else _ptr(m, tm), kv[0], kv[1],
                    momentum, 1.0 - dampening, weight_decay, lr,
                    sp, sp + 8 * R, sp + 16 * R, zp, sm, base_flags | (0 if later else FLAG_UX),
                )))
                if later:
                    kdeferred.append((pi, x, m if momentum else g))
                continue
            xv = self._views(x, pi)
            gv = self._views(g, pi)
            cis = self.param_chunks[pi]
            if momentum:
                fresh = bufs[pi] is None
                if fresh:
                    if weight_decay:
                        g0 = g + weight_decay * x if not tm else torch.add(g, x, alpha=weight_decay)
                    else:
                        g0 = g
                    bufs[pi] = g0.detach().clone() if tm else np.array(g0, copy=True)
                dv = self._views(bufs[pi], pi)
            else:
                fresh = False
                dv = None
            later = li in hs_tensors
            dcs: list[Any] = []
            for k, ci in enumerate(cis):
                xc, gc = xv[k], gv[k]
                if req.score and li >= 0:
                    self._row_stats(xc, gc, ci, stats)
                if weight_decay:
                    ge = torch.add(gc, xc, alpha=weight_decay) if tm else gc + weight_decay * xc
                else:
                    ge = gc
                if momentum:
                    dc = dv[k]
                    if not fresh:
                        if tm:
                            dc.mul_(momentum).add_(ge, alpha=1.0 - dampening)
                        else:
                            dc *= momentum
                            dc += ge if dampening == 0.0 else (1.0 - dampening) * ge
                else:
                    dc = ge
                if later:
                    dcs.append(dc)
                if need_dstats and later:
                    self._row_stats(xc, dc, ci, stats)
                if not later:
                    self._base(xc, dc, lr)
                    if zrows is not None and zrows[ci] is not None:
                        self._fill_zero(xc, zrows[ci], self.chunks[ci].whole)
            if later:
                deferred.append((pi, xv, dcs))
        self._run(calls)
        score_out = None
        if req.score or need_dstats:
            sums = [np.bincount(self._seg, weights=stats[j], minlength=G + 1)[:G] for j in range(3)]
            if req.score:
                score_out = (sums[0], sums[1], sums[2])
        projected = None
        if hs:
            if need_dstats:
                if req.score:
                    raise ValueError("a fused step cannot both score and project")
                scale, projected = halfspace_scales(
                    sums[0], sums[1], sums[2], active, lr, req.rule, req.epsilon
                )
            else:
                scale, projected = halfspace_scales(None, None, None, active, lr, req.rule,
                                                    req.epsilon, force=True)
            new_zero = zero | projected
            zrows = self._zero_row_index(new_zero) if new_zero.any() else None
            ext = np.concatenate([scale, [1.0]])
            row_scale64 = ext[self._seg]
            if kdeferred:
                zmask = (
                    np.concatenate([new_zero, [False]])[self._seg].astype(np.uint8)
                    if new_zero.any() else None
                )
                wflags = (0 if momentum else (FLAG_WD if weight_decay else 0)) | (FLAG_FM if tm else 0)
                calls = []
                for pi, x, src in kdeferred:
                    li = self.layout_index[pi]
                    grow = int(lay.row_offset[li])
                    rows, inner = self._kview[pi]  # type: ignore[misc]
                    calls.append((rows * inner, _kernel_fn(kern, x, tm, "scale"), (
                        _ptr(x, tm), _ptr(src, tm), rows, inner,
                        row_scale64.ctypes.data + 8 * grow, weight_decay, lr,
                        None if zmask is None else zmask.ctypes.data + grow, wflags,
                    )))
                self._run(calls)
            for pi, xv, dv in deferred:
                cis = self.param_chunks[pi]
                x = xs[pi]
                dt = x.detach().numpy().dtype if tm else x.dtype
                rs = row_scale64.astype(dt, copy=False)
                for k, ci in enumerate(cis):
                    c = self.chunks[ci]
                    s = rs[c.grow : c.grow + (c.r1 - c.r0)]
                    xc = xv[k]
                    if (s != 1.0).any():
                        if c.whole:
                            t = lay.tensors[c.li]
                            sv = s.reshape(1, t.rows, 1)
                        else:
                            sv = s.reshape(-1, 1)
                        if tm:
                            xc.mul_(torch.from_numpy(np.ascontiguousarray(sv)))
                        else:
                            xc *= sv
                    self._base(xc, dv[k], lr)
                    if zrows is not None and zrows[ci] is not None:
                        self._fill_zero(xc, zrows[ci], c.whole)
        return score_out, projected

    def _run(self, calls: list[tuple[int, Any, tuple[Any, ...]]]) -> None:
        """Runs kernel calls (independent tensors); on ``threads`` workers when more than one.

        ctypes releases the GIL during a foreign call, so the calls of different tensors run in
        parallel threads. Torch mode follows ``torch.get_num_threads()``; numpy mode uses one
        thread unless ``threads`` is set.
        """
        if not calls:
            return
        n = self.threads
        if n is None:
            n = 1
            if self.torch_mode:
                import torch

                n = torch.get_num_threads()
        total = sum(c[0] for c in calls)
        if n <= 1 or len(calls) < 2 or total < PARALLEL_MIN_ELEMS:
            for _, fn, args in calls:
                fn(*args)
            return
        # greedy balance of whole tensors over n bins (largest first)
        bins: list[list[tuple[Any, tuple[Any, ...]]]] = [[] for _ in range(n)]
        load = [0] * n
        for size, fn, args in sorted(calls, key=lambda c: -c[0]):
            j = load.index(min(load))
            bins[j].append((fn, args))
            load[j] += size
        pool = self._pool
        if pool is None or self._pool_size != n:
            from concurrent.futures import ThreadPoolExecutor

            if pool is not None:
                pool.shutdown(wait=False)
            pool = self._pool = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="otoir-fused")
            self._pool_size = n

        def work(items: list[tuple[Any, tuple[Any, ...]]]) -> None:
            for fn, args in items:
                fn(*args)

        futures = [pool.submit(work, b) for b in bins[1:] if b]
        work(bins[0])
        for f in futures:
            f.result()

    # ------------------------------------------------------------------ element-wise kernels
    def _row_stats(self, xc: Any, dc: Any, ci: int, stats: np.ndarray) -> None:
        c = self.chunks[ci]
        n = c.r1 - c.r0
        sl = slice(c.grow, c.grow + n)
        if self.torch_mode:
            xa, da = xc.detach().numpy(), dc.detach().numpy()
        else:
            xa, da = xc, dc
        if c.whole:  # strided rows (outer > 1): einsum over the (outer, rows, inner) view
            stats[0, sl] = np.einsum("ori,ori->r", xa, da)
            stats[1, sl] = np.einsum("ori,ori->r", xa, xa)
            stats[2, sl] = np.einsum("ori,ori->r", da, da)
            return
        # row dot products as a batched (1 x k)(k x 1) matmul: one vectorised pass per product
        # over the cache-resident chunk (about 2x numpy's einsum)
        xr, dr = xa[:, None, :], da[:, :, None]
        stats[0, sl] = np.matmul(xr, dr)[:, 0, 0]
        stats[1, sl] = np.matmul(xr, xa[:, :, None])[:, 0, 0]
        stats[2, sl] = np.matmul(da[:, None, :], dr)[:, 0, 0]

    def _base(self, xc: Any, dc: Any, lr: float) -> None:
        if self.torch_mode:
            xc.add_(dc, alpha=-lr)
        else:
            xc -= (lr * dc).astype(xc.dtype, copy=False)

    def _fill_zero(self, xc: Any, rows: Any, whole: bool) -> None:
        if self.torch_mode:
            xc.index_fill_(1 if whole else 0, rows, 0)
        elif whole:
            xc[:, rows, :] = 0
        else:
            xc[rows] = 0
