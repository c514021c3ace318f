"""Torch front end: :class:`DHSPG`, :class:`H2SPG` and :class:`HSPG` as ``torch.optim.Optimizer`` subclasses.

The base update (SGD with momentum/dampening/weight decay, Adam, AdamW) uses ``torch._foreach_*``
ops over all parameters, like ``torch.optim.SGD(foreach=True)``. Group work is one fused
half-space operation per step over the redundant groups (the CUDA kernel from
``otoir.kernels`` for float32 CUDA tensors when it is built and a device is present, otherwise
the vectorised torch reference), and re-zeroing of zero groups with cached row indices.

For a model otoir analysed, use the own-loop API instead — ``otoir.analyze(module, x)`` then
``job.optimizer(total_steps=N)`` (:mod:`otoir.workflow`), which builds the layout from the
analysis groups and, for H2SPG, the validity-checked selector. Here the groups are given by hand
as tensor slices (analysis :class:`~otoir.analyses.groups.Group` objects go through
:func:`otoir.optim.build_optimizer` with ``groups=``); the windows are explicit, or give
``total_steps=N`` for the default fractions:

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

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from otoir.optim.core import BaseRule, HybridCore, HybridStatus, Selector, SparsitySchedule
from otoir.optim.halfspace import ZeroRowCache, halfspace_project, zero_rows
from otoir.optim.layout import GroupLayout
from otoir.optim.options import configure
from otoir.optim.rules import LambdaRule

__all__ = ["DHSPG", "GROUP_OPTIONS", "H2SPG", "HSPG", "HybridSparseOptimizer", "OPTIMIZERS", "named_param_groups"]


#: Options a param group may set (``{"params": ..., "weight_decay": 0}``); the rest are global.
GROUP_OPTIONS: tuple[str, ...] = ("lr", "momentum", "dampening", "weight_decay", "betas", "eps")


def _pairs(params: Any, module: Any, where: str) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` pairs of one parameter collection (pairs, a mapping, or tensors named by ``module``)."""
    if isinstance(params, torch.Tensor):
        params = [params]
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    out: list[tuple[str, torch.Tensor]] = []
    names = None
    for item in items:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            out.append(item)
        elif isinstance(item, torch.Tensor) and module is not None:
            if names is None:
                names = {id(p): n for n, p in module.named_parameters()}
            if id(item) not in names:
                raise ValueError(f"{where}: a tensor of shape {tuple(item.shape)} is not a parameter of the module")
            out.append((names[id(item)], item))
        else:
            raise TypeError(f"{where}: params must be (name, tensor) pairs, e.g. model.named_parameters(), a name -> "
                            "tensor mapping, or tensors together with module=model")
    return out


def named_param_groups(params: Any, module: Any = None) -> list[dict[str, Any]]:
    """Normalises what a user passes as ``params`` into param groups of ``(name, tensor)`` pairs.

    Accepted: ``model.named_parameters()``, a name -> tensor mapping, or a list of param-group
    dicts (``[{"params": ..., "weight_decay": 0.0}, ...]``) whose ``params`` are any of those,
    or plain tensors when ``module`` names them.

    Args:
        params: The parameters, as above.
        module: The module whose ``named_parameters()`` name plain tensors (optional).

    Returns:
        ``[{"params": [(name, tensor), ...], **options}]``.

    Raises:
        TypeError: Unnamed tensors without ``module``, or a param-group option otoir does not
            apply per group.
        ValueError: A name given twice.
    """
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    if items and all(isinstance(i, Mapping) for i in items):
        groups = []
        for k, g in enumerate(items):
            if "params" not in g:
                raise TypeError(f"param group {k} has no 'params'")
            extra = sorted(set(g) - {"params", *GROUP_OPTIONS})
            if extra:
                raise TypeError(f"param group {k}: option(s) {', '.join(extra)} cannot be set per group "
                                f"(per-group options: {', '.join(GROUP_OPTIONS)})")
            groups.append({**g, "params": _pairs(g["params"], module, f"param group {k}")})
    else:
        groups = [{"params": _pairs(items, module, "params")}]
    names = [n for g in groups for n, _ in g["params"]]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"parameter(s) given twice: {', '.join(dup[:5])}")
    return groups


def _windows(algorithm: str, schedule: Any, options: dict[str, Any], total_steps: int | None,
             warmup: float, projection: float) -> dict[str, Any]:
    """``options`` with the warm-up / projection windows filled in from fractions of ``total_steps``.

    Safe default: without ``total_steps``, explicit windows or a ``schedule``, construction is
    refused (the library default of no warm-up would zero groups at the first step).
    """
    keys = ("warmup_steps",) if algorithm == "hspg" else ("warmup_steps", "projection_steps")
    if schedule is not None or ("warmup_steps" in options and total_steps is None):
        return options  # an explicit warm-up: zeroing at the first step only with warmup_steps=0
    if total_steps is None:
        raise ValueError(f"{algorithm}: give total_steps= (the optimizer steps training will take; the warm-up and "
                         "projection windows default to fractions of it) or warmup_steps= (and projection_steps=); "
                         "groups are zeroed at the first step only when warmup_steps=0 is given explicitly")
    if isinstance(total_steps, bool) or int(total_steps) != total_steps or total_steps < 1:
        raise ValueError(f"{algorithm}: total_steps must be an integer >= 1, got {total_steps!r}")
    from otoir.train.config import TrainConfig  # the one place that turns fractions into step counts

    try:
        warm, proj = TrainConfig(warmup=warmup, projection=projection).schedule_steps(int(total_steps))
    except ValueError as exc:
        raise ValueError(f"{algorithm}: {exc}") from None
    filled = {"warmup_steps": max(warm, 1) if warmup > 0 else 0, "projection_steps": proj}
    return {**{k: filled[k] for k in keys}, **options}


class HybridSparseOptimizer(HybridStatus, torch.optim.Optimizer):
    """Shared implementation of :class:`DHSPG`, :class:`H2SPG` and :class:`HSPG`.

    Construct it like any ``torch.optim.Optimizer`` with flat keywords, or with the structured
    settings (both may be mixed; the keywords override the objects' fields)::

        DHSPG(model.named_parameters(), layout, lr=0.1, momentum=0.9, target=0.5, total_steps=1000)
        DHSPG(model.named_parameters(), layout, 0.1, base=BaseRule(momentum=0.9),
              schedule=SparsitySchedule(target=0.5, warmup_steps=250, projection_steps=350))

    Param groups work as in ``torch.optim``: ``[{"params": ..., "weight_decay": 0.0}, ...]``
    (each ``params`` as ``named_parameters()`` pairs, a mapping, or plain tensors with
    ``module=model``); ``lr``, ``momentum``, ``dampening``, ``weight_decay``, ``betas`` and
    ``eps`` may differ per group, and each group's ``lr`` is used, so LR schedulers on any
    group work. A group's base update uses its own lr; the group-sparsity step of a ZIG whose
    tensors sit in param groups of different lr uses the largest of them for the penalty.

    Safe defaults: nothing is zeroed at initialisation. Give ``total_steps`` (the optimizer
    steps training will take) and the warm-up and projection windows are the fractions
    ``warmup`` and ``projection`` of it; or give ``warmup_steps``/``projection_steps`` (or a
    ``schedule``) explicitly. With neither, construction raises ``ValueError``.

    Args:
        params: ``(name, parameter)`` pairs (``model.named_parameters()``), a name → tensor
            mapping, or a list of param-group dicts. Names must match the layout's tensor names.
        layout: Groups over (a subset of) the parameters.
        lr: Default learning rate of the param groups.
        base: Base update rule (default ``BaseRule()``); its fields are the param groups'
            defaults, ``variant`` is global.
        schedule: Sparsity schedule (its windows are taken as given).
        selector: Redundant-set selector (default top-K; required by H2SPG).
        cuda_kernel: Use the CUDA kernel when available (``None``: auto, ``False``: never,
            ``True``: require it for CUDA parameters).
        module: Names plain tensors in ``params`` (``module.named_parameters()``).
        total_steps: Optimizer steps of the whole training (sets the default windows).
        warmup: Warm-up window as a fraction of ``total_steps`` (a step count if >= 1).
        projection: Projection window as a fraction of ``total_steps`` (a count if >= 1).
        **options: Flat settings (:data:`otoir.optim.options.OPTION_NAMES`: ``variant``,
            ``momentum``, ``dampening``, ``weight_decay``, ``betas``, ``eps``, ``target``,
            ``warmup_steps``, ``projection_steps``, ``epsilon``, ``lam``, ``lambda_amplify``,
            ``lambda_hat_coeff``, ``score_momentum``, ``score_interval``).

    Raises:
        ValueError: No ``total_steps`` and no windows; windows longer than ``total_steps``;
            a layout tensor that is not among the parameters; ``lr <= 0``.
        TypeError: Unnamed parameters, an unknown option.
    """

    #: ``"dhspg"``, ``"h2spg"`` or ``"hspg"`` (:data:`otoir.optim.options.ALGORITHMS`).
    algorithm: ClassVar[str] = "dhspg"

    def __init__(
        self,
        params: Any,
        layout: GroupLayout,
        lr: float = 0.1,
        *,
        base: BaseRule | None = None,
        schedule: SparsitySchedule | None = None,
        selector: Selector | None = None,
        cuda_kernel: bool | None = None,
        module: Any = None,
        total_steps: int | None = None,
        warmup: float = 0.25,
        projection: float = 0.35,
        **options: Any,
    ) -> None:
        pgroups = named_param_groups(params, module)
        names = [n for g in pgroups for n, _ in g["params"]]
        by_name = {n: t for g in pgroups for n, t in g["params"]}
        for n in layout.names:
            if n not in by_name:
                raise ValueError(f"layout tensor {n!r} is not among the parameters")
            if tuple(by_name[n].shape) != layout.rows_of(n).shape:
                raise ValueError(f"shape of {n!r} differs from the layout")
            if not by_name[n].is_contiguous():
                raise ValueError(f"grouped parameter {n!r} must be contiguous")
        if lr <= 0:
            raise ValueError("lr must be > 0")
        configure(self.algorithm, base, schedule, selector, options)  # unknown options, selector: TypeError first
        options = _windows(self.algorithm, schedule, dict(options), total_steps, warmup, projection)
        cfg = configure(self.algorithm, base, schedule, selector, options)
        b = cfg.base
        defaults = {"lr": lr, "momentum": b.momentum, "dampening": b.dampening, "weight_decay": b.weight_decay,
                    "betas": b.betas, "eps": b.eps}
        super().__init__([{**g, "params": [t for _, t in g["params"]]} for g in pgroups], defaults)
        for k, g in enumerate(self.param_groups):  # per-group values go through the base rule's checks
            try:
                BaseRule(b.variant, g["momentum"], g["dampening"], g["weight_decay"], tuple(g["betas"]), g["eps"])
            except ValueError as exc:
                raise ValueError(f"param group {k}: {exc}") from None
            if g["lr"] < 0:
                raise ValueError(f"param group {k}: lr must be >= 0")
        self.layout = layout
        self.base = cfg.base
        self.core = HybridCore(layout, cfg.schedule, cfg.selector, penalise_all=cfg.penalise_all)
        self.cuda_kernel = cuda_kernel
        self._names = names
        self._by_name = by_name
        self._layout_tensors = [by_name[n] for n in layout.names]
        ids = {id(t): k for k, g in enumerate(self.param_groups) for t in g["params"]}
        self._layout_group = [ids[id(t)] for t in self._layout_tensors]
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
        self.core.step(self, self._penalty_lr())
        self._dirs, self._live = {}, []
        return loss

    def _penalty_lr(self) -> float:
        """The lr of the group-sparsity step: the largest lr of the param groups holding grouped tensors."""
        lrs = {float(self.param_groups[k]["lr"]) for k in self._layout_group}
        return max(lrs) if lrs else float(self.param_groups[0]["lr"])

    def _uniform(self) -> bool:
        """Whether every param group has the same lr and base-rule options (one fused step applies)."""
        keys = ("lr", *GROUP_OPTIONS)
        first = self.param_groups[0]
        return all(all(g[k] == first[k] for k in keys) for g in self.param_groups[1:])

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
        ds = [self._dirs.get(id(p)) for p in self._layout_tensors]
        ref = self._penalty_lr()
        if ref <= 0:
            return ds
        out = []
        for d, k in zip(ds, self._layout_group, strict=True):
            lr = float(self.param_groups[k]["lr"])
            out.append(d if d is None or lr == ref else d * (lr / ref))  # x - ref*(lr/ref)*d = x - lr*d
        return out

    def compute_directions(self) -> None:
        self._live, self._dirs = [], {}
        for group in self.param_groups:
            self._group_directions(group)
        if self._live:
            self._base_steps += 1

    def _group_directions(self, group: dict[str, Any]) -> None:
        variant = self.base.variant
        ps = [p for p in group["params"] if p.grad is not None]
        if not ps:
            return
        self._live.extend(ps)
        gs = [p.grad for p in ps]
        wd, momentum = group["weight_decay"], group["momentum"]
        if wd and variant != "adamw":
            gs = torch._foreach_add(gs, ps, alpha=wd)
        if variant == "sgd":
            if momentum:
                fresh = [i for i, p in enumerate(ps) if "momentum_buffer" not in self.state[p]]
                for i in fresh:
                    self.state[ps[i]]["momentum_buffer"] = gs[i].detach().clone()
                fresh_set = set(fresh)
                old = [i for i in range(len(ps)) if i not in fresh_set]
                bufs = [self.state[ps[i]]["momentum_buffer"] for i in old]
                if bufs:
                    torch._foreach_mul_(bufs, momentum)
                    torch._foreach_add_(bufs, [gs[i] for i in old], alpha=1.0 - group["dampening"])
                dirs = [self.state[p]["momentum_buffer"] for p in ps]
            else:
                dirs = list(gs)
        else:
            b1, b2 = group["betas"]
            for p in ps:
                st = self.state[p]
                if "exp_avg" not in st:
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            ms = [self.state[p]["exp_avg"] for p in ps]
            vs = [self.state[p]["exp_avg_sq"] for p in ps]
            t = self._base_steps + 1
            torch._foreach_lerp_(ms, gs, 1.0 - b1)
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, gs, gs, value=1.0 - b2)
            denom = torch._foreach_sqrt(vs)
            torch._foreach_div_(denom, float(np.sqrt(1.0 - b2**t)))
            torch._foreach_add_(denom, group["eps"])
            dirs = torch._foreach_div(ms, denom)
            torch._foreach_div_(dirs, 1.0 - b1**t)
        self._dirs.update({id(p): d for p, d in zip(ps, dirs, strict=True)})

    def fused_step(self, req: Any) -> Any:
        """The cache-blocked fused step (:mod:`otoir.optim.fused`) for SGD on CPU tensors.

        Returns ``None`` without changing anything when the step cannot be fused (Adam/AdamW,
        non-CPU, sparse or non-contiguous gradients, a grouped tensor without gradient).
        """
        b = self.base
        if b.variant != "sgd" or not self._uniform():
            return None
        group = self.param_groups[0]
        ps = [p for g in self.param_groups for p in g["params"]]
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
        if group["momentum"]:
            for i, p in enumerate(ps):
                if p.grad is not None:
                    bufs[i] = self.state[p].get("momentum_buffer")
        fresh = [i for i, v in enumerate(bufs) if v is None and ps[i].grad is not None]
        out = impl.step(
            [p.detach() for p in ps],
            [p.grad for p in ps],
            bufs,
            req,
            momentum=group["momentum"],
            dampening=group["dampening"],
            weight_decay=group["weight_decay"],
        )
        if group["momentum"]:
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
        """``x ← x − lr_g·d`` with each param group's own lr (the core's ``lr`` is the penalty lr)."""
        live = {id(p) for p in self._live}
        for group in self.param_groups:
            ps = [p for p in group["params"] if id(p) in live]
            if not ps:
                continue
            g_lr = float(group["lr"])
            if self.base.variant == "adamw" and group["weight_decay"]:
                torch._foreach_mul_(ps, 1.0 - g_lr * group["weight_decay"])
            torch._foreach_add_(ps, [self._dirs[id(p)] for p in ps], alpha=-g_lr)

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
