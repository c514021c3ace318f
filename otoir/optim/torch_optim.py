"""Torch front end: :class:`DHSPG`, :class:`H2SPG` and :class:`HSPG` as ``torch.optim.Optimizer`` subclasses.

The base update (SGD with momentum/dampening/weight decay, Adam, AdamW) uses ``torch._foreach_*``
ops over all parameters, like ``torch.optim.SGD(foreach=True)``. Group work is one fused
half-space operation per step over the redundant groups (the CUDA kernel from
``otoir.kernels`` for float32 CUDA tensors when it is built and a device is present, otherwise
the vectorised torch reference), and re-zeroing of zero groups with cached row indices.

Example (groups given as tensor slices; for the analyses' groups use
:func:`otoir.optim.build_optimizer` with ``groups=``, which builds the layout):

>>> import torch
>>> from otoir.optim import DHSPG, GroupLayout
>>> _ = torch.manual_seed(0)
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> shapes = {n: p.shape for n, p in model.named_parameters()}
>>> # one group per hidden unit: its row of the first weight and its bias
>>> groups = [[("0.weight", 0, [i]), ("0.bias", 0, [i])] for i in range(8)]
>>> layout = GroupLayout.from_slices(groups, shapes)
>>> opt = DHSPG(model.named_parameters(), layout, lr=0.1, momentum=0.9, target=0.5,
...             warmup_steps=2, projection_steps=3)
>>> x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
>>> for _ in range(6):
...     opt.zero_grad()
...     torch.nn.functional.cross_entropy(model(x), y).backward()
...     _ = opt.step()
>>> opt.num_zero_groups, opt.num_groups, opt.phase
(4, 8, 'done')
>>> int((model[0].weight.abs().sum(1) == 0).sum())
4
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from otoir.optim.core import BaseRule, HybridCore, HybridStatus, Selector, SparsitySchedule
from otoir.optim.halfspace import ZeroRowCache, halfspace_project, zero_rows
from otoir.optim.layout import GroupLayout
from otoir.optim.options import configure
from otoir.optim.rules import LambdaRule

__all__ = ["DHSPG", "H2SPG", "HSPG", "HybridSparseOptimizer", "OPTIMIZERS"]


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
    """Shared implementation of :class:`DHSPG`, :class:`H2SPG` and :class:`HSPG`.

    Construct it like any ``torch.optim.Optimizer`` with flat keywords, or with the structured
    settings (both may be mixed; the keywords override the objects' fields)::

        DHSPG(model.named_parameters(), layout, lr=0.1, momentum=0.9, target=0.5)
        DHSPG(model.named_parameters(), layout, 0.1, base=BaseRule(momentum=0.9),
              schedule=SparsitySchedule(target=0.5))

    Args:
        params: ``(name, parameter)`` pairs (``model.named_parameters()``) or a name → tensor
            mapping. Names must match the layout's tensor names.
        layout: Groups over (a subset of) the parameters.
        lr: Learning rate (``param_groups[0]["lr"]``, so LR schedulers work).
        base: Base update rule (default ``BaseRule()``).
        schedule: Sparsity schedule (default ``SparsitySchedule()``).
        selector: Redundant-set selector (default top-K; required by H2SPG).
        cuda_kernel: Use the CUDA kernel when available (``None``: auto, ``False``: never,
            ``True``: require it for CUDA parameters).
        **options: Flat settings (:data:`otoir.optim.options.OPTION_NAMES`: ``variant``,
            ``momentum``, ``dampening``, ``weight_decay``, ``betas``, ``eps``, ``target``,
            ``warmup_steps``, ``projection_steps``, ``epsilon``, ``lam``, ``lambda_amplify``,
            ``lambda_hat_coeff``, ``score_momentum``, ``score_interval``).
    """

    #: ``"dhspg"``, ``"h2spg"`` or ``"hspg"`` (:data:`otoir.optim.options.ALGORITHMS`).
    algorithm: ClassVar[str] = "dhspg"

    def __init__(
        self,
        params: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor],
        layout: GroupLayout,
        lr: float = 0.1,
        *,
        base: BaseRule | None = None,
        schedule: SparsitySchedule | None = None,
        selector: Selector | None = None,
        cuda_kernel: bool | None = None,
        **options: Any,
    ) -> None:
        cfg = configure(self.algorithm, base, schedule, selector, options)
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
        self.base = cfg.base
        self.core = HybridCore(layout, cfg.schedule, cfg.selector, penalise_all=cfg.penalise_all)
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
            from otoir.kernels.loader import cuda_halfspace

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


class DHSPG(HybridSparseOptimizer):
    """DHSPG (OTOv2) with an exact zero-group count, for pruning (ZIG) groups.

    Top-K partition by redundancy score (or ``selector``), adaptive λ. Arguments as
    :class:`HybridSparseOptimizer`.
    """

    algorithm = "dhspg"


class H2SPG(HybridSparseOptimizer):
    """H2SPG (OTOv3) for erasing (GeZIG) groups: DHSPG whose partition passes the validity check.

    ``selector(scores, k)`` (required) returns ``k`` group indices forming a valid redundant set,
    e.g. ``lambda s, k: select_redundant(groups, s, k)`` from ``otoir.analyses.validity``; a
    selector that cannot find ``k`` raises at the partition step. Other arguments as
    :class:`HybridSparseOptimizer`.
    """

    algorithm = "h2spg"


class HSPG(HybridSparseOptimizer):
    """HSPG (OTOv1): constant λ on every group, half-space projection after ``warmup_steps``.

    No partition and no target: the number of zero groups is whatever λ and ε produce.
    Arguments as :class:`HybridSparseOptimizer`.
    """

    algorithm = "hspg"


#: The torch optimizer class of each algorithm name.
OPTIMIZERS: dict[str, type[HybridSparseOptimizer]] = {"dhspg": DHSPG, "h2spg": H2SPG, "hspg": HSPG}
