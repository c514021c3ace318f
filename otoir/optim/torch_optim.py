"""Torch front end: :class:`DHSPG` and :class:`H2SPG` as ``torch.optim.Optimizer`` subclasses.

The base update (SGD with momentum/dampening/weight decay, Adam, AdamW) uses ``torch._foreach_*``
ops over all parameters, like ``torch.optim.SGD(foreach=True)``. Group work is one fused
half-space operation per step over the redundant groups (the CUDA kernel from
``otoir.kernels`` for float32 CUDA tensors when it is built and a device is present, otherwise
the vectorised torch reference), and re-zeroing of zero groups with cached row indices.

Example::

    layout = GroupLayout.from_slices(groups, {n: p.shape for n, p in model.named_parameters()})
    opt = DHSPG(model.named_parameters(), layout, lr=0.1, momentum=0.9, target=0.5,
                warmup_steps=1000, projection_steps=2000)
    for x, y in loader:
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from otoir.optim.core import BaseRule, HybridCore, HybridStatus, Selector, SparsitySchedule
from otoir.optim.halfspace import ZeroRowCache, halfspace_project, zero_rows
from otoir.optim.layout import GroupLayout
from otoir.optim.rules import LambdaRule

__all__ = ["DHSPG", "H2SPG", "HybridSparseOptimizer"]


def _named(params: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor]):
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    names, tensors = [], []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError("params must be (name, tensor) pairs, e.g. model.named_parameters()")
        names.append(item[0])
        tensors.append(item[1])
    if len(set(names)) != len(names):
        raise ValueError("duplicate parameter names")
    return names, tensors


class HybridSparseOptimizer(HybridStatus, torch.optim.Optimizer):
    """Shared implementation of :class:`DHSPG` and :class:`H2SPG` (and HSPG with ``penalise_all``).

    Args:
        params: ``(name, parameter)`` pairs (``model.named_parameters()``) or a name → tensor
            mapping. Names must match the layout's tensor names.
        layout: Groups over (a subset of) the parameters.
        lr: Learning rate (``param_groups[0]["lr"]``, so LR schedulers work).
        base: Base update rule.
        schedule: Sparsity schedule.
        selector: Redundant-set selector (default top-K).
        penalise_all: HSPG mode.
        cuda_kernel: Use the CUDA kernel when available (``None``: auto, ``False``: never,
            ``True``: require it for CUDA parameters).
    """

    def __init__(
        self,
        params: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor],
        layout: GroupLayout,
        lr: float,
        *,
        base: BaseRule,
        schedule: SparsitySchedule,
        selector: Selector | None = None,
        penalise_all: bool = False,
        cuda_kernel: bool | None = None,
    ) -> None:
        names, tensors = _named(params)
        by_name = dict(zip(names, tensors))
        for n in layout.names:
            if n not in by_name:
                raise ValueError(f"layout tensor {n!r} is not among the parameters")
            if tuple(by_name[n].shape) != layout.rows_of(n).shape:
                raise ValueError(f"shape of {n!r} differs from the layout")
            if not by_name[n].is_contiguous():
                raise ValueError(f"grouped parameter {n!r} must be contiguous")
        if lr <= 0:
            raise ValueError("lr must be > 0")
        defaults = {"lr": lr}
        super().__init__([{"params": tensors}], defaults)
        self.layout = layout
        self.base = base
        self.core = HybridCore(layout, schedule, selector, penalise_all=penalise_all)
        self.cuda_kernel = cuda_kernel
        self._names = names
        self._by_name = by_name
        self._layout_tensors = [by_name[n] for n in layout.names]
        self._zero_cache = ZeroRowCache(layout)
        self._base_steps = 0
        self._dirs: dict[int, torch.Tensor] = {}
        self._live: list[torch.Tensor] = []
        self._cuda_impl: Any = None
        self._fused_impl: Any = None
        self._fused_key: Any = None

    # ------------------------------------------------------------------ public

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """Performs one optimization step.

        Args:
            closure: Optional callable that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, if any.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.core.step(self, float(self.param_groups[0]["lr"]))
        self._dirs, self._live = {}, []
        return loss

    def state_dict(self) -> dict[str, Any]:
        """Torch optimizer state plus the sparsity core and the base step counter."""
        sd = super().state_dict()
        sd["otoir"] = {"core": self.core.state_dict(), "base_steps": self._base_steps}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` output."""
        state_dict = dict(state_dict)
        extra = state_dict.pop("otoir", None)
        super().load_state_dict(state_dict)
        if extra is not None:
            self.core.load_state_dict(extra["core"])
            self._base_steps = int(extra["base_steps"])

    # ------------------------------------------------------------------ Backend protocol
    def layout_params(self) -> list[Any]:
        return self._layout_tensors

    def layout_grads(self) -> list[Any]:
        return [p.grad for p in self._layout_tensors]

    def layout_directions(self) -> list[Any]:
        return [self._dirs.get(id(p)) for p in self._layout_tensors]

    def compute_directions(self) -> None:
        b = self.base
        ps = [p for p in self.param_groups[0]["params"] if p.grad is not None]
        self._live = ps
        if not ps:
            self._dirs = {}
            return
        self._base_steps += 1
        gs = [p.grad for p in ps]
        if b.weight_decay and b.variant != "adamw":
            gs = torch._foreach_add(gs, ps, alpha=b.weight_decay)
        if b.variant == "sgd":
            if b.momentum:
                fresh = [i for i, p in enumerate(ps) if "momentum_buffer" not in self.state[p]]
                for i in fresh:
                    self.state[ps[i]]["momentum_buffer"] = gs[i].detach().clone()
                fresh_set = set(fresh)
                old = [i for i in range(len(ps)) if i not in fresh_set]
                bufs = [self.state[ps[i]]["momentum_buffer"] for i in old]
                if bufs:
                    torch._foreach_mul_(bufs, b.momentum)
                    torch._foreach_add_(bufs, [gs[i] for i in old], alpha=1.0 - b.dampening)
                dirs = [self.state[p]["momentum_buffer"] for p in ps]
            else:
                dirs = list(gs)
        else:
            b1, b2 = b.betas
            for p in ps:
                st = self.state[p]
                if "exp_avg" not in st:
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            ms = [self.state[p]["exp_avg"] for p in ps]
            vs = [self.state[p]["exp_avg_sq"] for p in ps]
            t = self._base_steps
            torch._foreach_lerp_(ms, gs, 1.0 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, gs, gs, value=1.0 - b2)
            denom = torch._foreach_sqrt(vs)
            torch._foreach_div_(denom, float(np.sqrt(1.0 - b2**t)))
            torch._foreach_add_(denom, b.eps)
            dirs = torch._foreach_div(ms, denom)
            torch._foreach_div_(dirs, 1.0 - b1**t)
        self._dirs = {id(p): d for p, d in zip(ps, dirs)}

    def fused_step(self, req: Any) -> Any:
        """The cache-blocked fused step (:mod:`otoir.optim.fused`) for SGD on CPU tensors.

        Returns ``None`` without changing anything when the step cannot be fused (Adam/AdamW,
        non-CPU, sparse or non-contiguous gradients, a grouped tensor without gradient).
        """
        b = self.base
        if b.variant != "sgd":
            return None
        ps = self.param_groups[0]["params"]
        if not ps:
            return None
        for p in ps:
            g = p.grad
            if p.device.type != "cpu" or not p.is_contiguous():
                return None
            if g is not None and (g.is_sparse or g.dtype != p.dtype or not g.is_contiguous()):
                return None
        for p in self._layout_tensors:
            if p.grad is None:
                return None
        impl = self._fused_plan(ps)
        live = [p for p in ps if p.grad is not None]
        if live:
            self._base_steps += 1
        bufs: list[Any] = [None] * len(ps)
        if b.momentum:
            for i, p in enumerate(ps):
                if p.grad is not None:
                    bufs[i] = self.state[p].get("momentum_buffer")
        fresh = [i for i, v in enumerate(bufs) if v is None and ps[i].grad is not None]
        out = impl.step(
            [p.detach() for p in ps],
            [p.grad for p in ps],
            bufs,
            req,
            momentum=b.momentum,
            dampening=b.dampening,
            weight_decay=b.weight_decay,
        )
        if b.momentum:
            for i in fresh:
                self.state[ps[i]]["momentum_buffer"] = bufs[i]
        return out

    def _fused_plan(self, ps: list[torch.Tensor]) -> Any:
        key = tuple((id(p), tuple(p.shape)) for p in ps)
        if self._fused_impl is None or key != self._fused_key:
            from otoir.optim.fused import FusedSGD

            ids = {id(p): i for i, p in enumerate(self._layout_tensors)}
            index = [ids.get(id(p), -1) for p in ps]
            self._fused_impl = FusedSGD(self.layout, [tuple(p.shape) for p in ps], index, torch_mode=True)
            self._fused_key = key
        return self._fused_impl

    def _cuda(self) -> Any:
        if self._cuda_impl is None:
            from otoir.optim._kernel_bridge import cuda_halfspace

            self._cuda_impl = cuda_halfspace(self.layout, self._layout_tensors[0].device)
            if self._cuda_impl is None and self.cuda_kernel:
                raise RuntimeError("cuda_kernel=True but the otoir CUDA kernel is not available")
            if self._cuda_impl is None:
                self._cuda_impl = False
        return self._cuda_impl or None

    def fused_halfspace(
        self, active: np.ndarray, lr: float, rule: LambdaRule, epsilon: float, force: bool
    ) -> np.ndarray:
        xs = self._layout_tensors
        ds = self.layout_directions()
        if self.cuda_kernel is not False and xs and xs[0].is_cuda:
            impl = self._cuda()
            if impl is not None and impl.supports(xs, ds):
                return impl(xs, ds, active, lr, rule, epsilon, force=force)
        return halfspace_project(self.layout, xs, ds, active, lr, rule, epsilon, force=force)

    def base_step(self, lr: float) -> None:
        ps = self._live
        if not ps:
            return
        if self.base.variant == "adamw" and self.base.weight_decay:
            torch._foreach_mul_(ps, 1.0 - lr * self.base.weight_decay)
        torch._foreach_add_(ps, [self._dirs[id(p)] for p in ps], alpha=-lr)

    def rezero(self, zero: np.ndarray) -> None:
        xs = self._layout_tensors
        zero_rows(self.layout, xs, self._zero_cache.rows(zero, like=xs[0]))


def _configure(
    *,
    variant: str,
    momentum: float,
    dampening: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    target: float | int,
    warmup_steps: int,
    projection_steps: int,
    epsilon: float,
    lam: float,
    lambda_amplify: float,
    lambda_hat_coeff: float,
    score_momentum: float,
    score_interval: int,
) -> tuple[BaseRule, SparsitySchedule]:
    return (
        BaseRule(variant, momentum, dampening, weight_decay, betas, eps),
        SparsitySchedule(
            target,
            warmup_steps,
            projection_steps,
            epsilon,
            LambdaRule(lam, lambda_amplify, lambda_hat_coeff, True),
            score_momentum,
            score_interval,
        ),
    )


class DHSPG(HybridSparseOptimizer):
    """DHSPG (OTOv2) with an exact zero-group count, for pruning (ZIG) groups.

    Args:
        params: ``model.named_parameters()`` or a name → parameter mapping.
        layout: Groups over the parameters.
        lr: Learning rate.
        variant: Base rule, ``"sgd"``, ``"adam"`` or ``"adamw"``.
        momentum: SGD momentum.
        dampening: SGD dampening.
        weight_decay: L2 (sgd/adam) or decoupled (adamw) weight decay.
        betas: Adam betas.
        eps: Adam epsilon.
        target: Fraction of groups (float) or exact count (int) to zero.
        warmup_steps: Plain steps (with score averaging) before the partition.
        projection_steps: Hybrid window; exactly K zero groups after step
            ``warmup_steps + projection_steps − 1``.
        epsilon: Half-space threshold ε.
        lam: Base λ.
        lambda_amplify: Multiplier of λ's lower bound.
        lambda_hat_coeff: λ_g ≤ lam·lambda_hat_coeff.
        score_momentum: ω of the redundancy-score average.
        score_interval: Score every this many warm-up steps.
        selector: Redundant-set selector (default: top-K scores).
        cuda_kernel: Use the CUDA kernel when available (``None`` auto).
    """

    def __init__(
        self,
        params: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor],
        layout: GroupLayout,
        lr: float = 0.1,
        *,
        variant: str = "sgd",
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        target: float | int = 0.5,
        warmup_steps: int = 0,
        projection_steps: int = 0,
        epsilon: float = 0.0,
        lam: float = 1e-3,
        lambda_amplify: float = 2.0,
        lambda_hat_coeff: float = 10.0,
        score_momentum: float = 0.9,
        score_interval: int = 1,
        selector: Selector | None = None,
        cuda_kernel: bool | None = None,
    ) -> None:
        base, schedule = _configure(
            variant=variant, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            betas=betas, eps=eps, target=target, warmup_steps=warmup_steps,
            projection_steps=projection_steps, epsilon=epsilon, lam=lam,
            lambda_amplify=lambda_amplify, lambda_hat_coeff=lambda_hat_coeff,
            score_momentum=score_momentum, score_interval=score_interval,
        )
        super().__init__(
            params, layout, lr, base=base, schedule=schedule, selector=selector, cuda_kernel=cuda_kernel
        )


class H2SPG(HybridSparseOptimizer):
    """H2SPG (OTOv3) for erasing (GeZIG) groups: DHSPG whose partition passes the validity check.

    ``selector(scores, k)`` (required) returns ``k`` group indices forming a valid redundant set,
    e.g. ``lambda s, k: select_redundant(groups, s, k)`` from ``otoir.analyses.validity``; a
    selector that cannot find ``k`` raises at the partition step. Other arguments as
    :class:`DHSPG`.
    """

    def __init__(
        self,
        params: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor],
        layout: GroupLayout,
        lr: float = 0.1,
        *,
        selector: Selector,
        variant: str = "sgd",
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        target: float | int = 0.5,
        warmup_steps: int = 0,
        projection_steps: int = 0,
        epsilon: float = 0.0,
        lam: float = 1e-3,
        lambda_amplify: float = 2.0,
        lambda_hat_coeff: float = 10.0,
        score_momentum: float = 0.9,
        score_interval: int = 1,
        cuda_kernel: bool | None = None,
    ) -> None:
        if selector is None:
            raise TypeError("H2SPG needs a validity selector; use DHSPG for plain top-K")
        base, schedule = _configure(
            variant=variant, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            betas=betas, eps=eps, target=target, warmup_steps=warmup_steps,
            projection_steps=projection_steps, epsilon=epsilon, lam=lam,
            lambda_amplify=lambda_amplify, lambda_hat_coeff=lambda_hat_coeff,
            score_momentum=score_momentum, score_interval=score_interval,
        )
        super().__init__(
            params, layout, lr, base=base, schedule=schedule, selector=selector, cuda_kernel=cuda_kernel
        )
