"""Numpy front end: a stepper that reads gradients and writes parameters by name.

Used by the ONNX Runtime training backend, where gradients come back per step as numpy arrays
and the new parameter values are written back to the session::

    stepper = DHSPGStepper(layout, shapes, lr=0.1, momentum=0.9, target=0.5,
                           warmup_steps=100, projection_steps=200)
    for batch in data:
        grads = run_forward_backward(batch)          # {name: np.ndarray}
        stepper.step(params, grads)                  # params: {name: np.ndarray}, in place
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np

from otoir.optim.core import BaseRule, HybridCore, HybridStatus, Selector, SparsitySchedule
from otoir.optim.halfspace import ZeroRowCache, halfspace_project, zero_rows
from otoir.optim.layout import GroupLayout
from otoir.optim.rules import LambdaRule

__all__ = ["DHSPGStepper", "H2SPGStepper", "HSPGStepper", "NumpyStepper"]


class NumpyStepper(HybridStatus):
    """Structured-sparsity optimizer over named numpy arrays (the shared core, numpy backend).

    Args:
        layout: Groups over (a subset of) the parameters.
        shapes: Shape of every trainable parameter (grouped or not), by name.
        lr: Learning rate (override per call with ``step(..., lr=)``).
        base: Base update rule.
        schedule: Sparsity schedule.
        selector: Redundant-set selector (default top-K).
        penalise_all: HSPG mode (see :class:`~otoir.optim.core.HybridCore`).
    """

    def __init__(
        self,
        layout: GroupLayout,
        shapes: Mapping[str, Sequence[int]],
        *,
        lr: float,
        base: BaseRule | None = None,
        schedule: SparsitySchedule | None = None,
        selector: Selector | None = None,
        penalise_all: bool = False,
    ) -> None:
        missing = [n for n in layout.names if n not in shapes]
        if missing:
            raise ValueError(f"layout tensors missing from shapes: {missing[:5]}")
        for n in layout.names:
            if tuple(shapes[n]) != layout.rows_of(n).shape:
                raise ValueError(f"shape of {n!r} differs from the layout")
        self.layout = layout
        self.names = list(shapes)
        self.shapes = {n: tuple(int(s) for s in shapes[n]) for n in self.names}
        self.lr = float(lr)
        self.base = base or BaseRule()
        self.core = HybridCore(layout, schedule or SparsitySchedule(), selector, penalise_all=penalise_all)
        self.state: dict[str, dict[str, np.ndarray]] = {n: {} for n in self.names}
        self.base_steps = 0
        self._zero_cache = ZeroRowCache(layout)
        self._params: MutableMapping[str, np.ndarray] = {}
        self._grads: Mapping[str, np.ndarray] = {}
        self._dirs: dict[str, np.ndarray] = {}
        self._fused_impl: Any = None

    # ------------------------------------------------------------------ public

    def step(
        self,
        params: MutableMapping[str, np.ndarray],
        grads: Mapping[str, np.ndarray],
        lr: float | None = None,
    ) -> None:
        """One step: updates ``params`` in place from ``grads``.

        Args:
            params: Name → float array (contiguous; modified in place). Every name given to
                the constructor must be present.
            grads: Name → gradient of the same shape; a missing name means no gradient (the
                parameter is left unchanged by the base step).
            lr: Learning rate for this step (default: the constructor's).
        """
        self._params, self._grads = params, grads
        try:
            self.core.step(self, self.lr if lr is None else float(lr))
        finally:
            self._params, self._grads, self._dirs = {}, {}, {}

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (copies)."""
        return {
            "core": self.core.state_dict(),
            "base_steps": self.base_steps,
            "lr": self.lr,
            "state": {n: {k: v.copy() for k, v in st.items()} for n, st in self.state.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores :meth:`state_dict` output."""
        self.core.load_state_dict(state["core"])
        self.base_steps = int(state["base_steps"])
        self.lr = float(state["lr"])
        self.state = {n: {k: np.array(v, copy=True) for k, v in st.items()} for n, st in state["state"].items()}
        for n in self.names:
            self.state.setdefault(n, {})

    # ------------------------------------------------------------------ Backend protocol
    def layout_params(self) -> list[Any]:
        return [self._params[n] for n in self.layout.names]

    def layout_grads(self) -> list[Any]:
        return [self._grads.get(n) for n in self.layout.names]

    def layout_directions(self) -> list[Any]:
        return [self._dirs.get(n) for n in self.layout.names]

    def compute_directions(self) -> None:
        b = self.base
        self.base_steps += 1
        t = self.base_steps
        for n in self.names:
            g = self._grads.get(n)
            if g is None:
                continue
            x = self._params[n]
            g = np.asarray(g, dtype=x.dtype)
            st = self.state[n]
            if b.weight_decay and b.variant != "adamw":
                g = g + b.weight_decay * x
            if b.variant == "sgd":
                if b.momentum:
                    buf = st.get("momentum_buffer")
                    if buf is None:
                        buf = st["momentum_buffer"] = g.copy()
                    else:
                        buf *= b.momentum
                        buf += (1.0 - b.dampening) * g
                    self._dirs[n] = buf
                else:
                    self._dirs[n] = g
            else:
                b1, b2 = b.betas
                m = st.setdefault("exp_avg", np.zeros_like(x))
                v = st.setdefault("exp_avg_sq", np.zeros_like(x))
                m *= b1
                m += (1.0 - b1) * g
                v *= b2
                v += (1.0 - b2) * g * g
                denom = np.sqrt(v / (1.0 - b2**t)) + b.eps
                self._dirs[n] = (m / (1.0 - b1**t)) / denom

    def fused_step(self, req: Any) -> Any:
        """The cache-blocked fused step (:mod:`otoir.optim.fused`) for the SGD base rule.

        Returns ``None`` without changing anything when it does not apply (Adam/AdamW,
        non-contiguous parameters, a grouped tensor without gradient).
        """
        b = self.base
        if b.variant != "sgd":
            return None
        xs = [self._params[n] for n in self.names]
        gs: list[Any] = []
        for n, x in zip(self.names, xs, strict=True):
            if not (isinstance(x, np.ndarray) and x.flags.c_contiguous and x.flags.writeable):
                return None
            g = self._grads.get(n)
            gs.append(None if g is None else np.ascontiguousarray(g, dtype=x.dtype))
        lay_names = set(self.layout.names)
        if any(g is None for n, g in zip(self.names, gs, strict=True) if n in lay_names):
            return None
        if self._fused_impl is None:
            from otoir.optim.fused import FusedSGD

            index = [self.layout.tensor_index(n) if n in lay_names else -1 for n in self.names]
            self._fused_impl = FusedSGD(
                self.layout, [self.shapes[n] for n in self.names], index, torch_mode=False
            )
        self.base_steps += 1
        bufs: list[Any] = [None] * len(xs)
        if b.momentum:
            for i, n in enumerate(self.names):
                if gs[i] is not None:
                    bufs[i] = self.state[n].get("momentum_buffer")
        out = self._fused_impl.step(
            xs, gs, bufs, req, momentum=b.momentum, dampening=b.dampening, weight_decay=b.weight_decay
        )
        if b.momentum:
            for i, n in enumerate(self.names):
                if bufs[i] is not None:
                    self.state[n]["momentum_buffer"] = bufs[i]
        return out

    def fused_halfspace(
        self, active: np.ndarray, lr: float, rule: LambdaRule, epsilon: float, force: bool
    ) -> np.ndarray:
        return halfspace_project(
            self.layout, self.layout_params(), self.layout_directions(), active, lr, rule, epsilon, force=force
        )

    def base_step(self, lr: float) -> None:
        decay = self.base.weight_decay if self.base.variant == "adamw" else 0.0
        for n, d in self._dirs.items():
            x = self._params[n]
            if decay:
                x *= 1.0 - lr * decay
            x -= (lr * d).astype(x.dtype, copy=False)

    def rezero(self, zero: np.ndarray) -> None:
        zero_rows(self.layout, self.layout_params(), self._zero_cache.rows(zero))


def _make(
    layout: GroupLayout,
    shapes: Mapping[str, Sequence[int]],
    *,
    lr: float,
    variant: str,
    momentum: float,
    dampening: float,
    weight_decay: float,
    betas: tuple[float, float],
    target: float | int,
    warmup_steps: int,
    projection_steps: int,
    epsilon: float,
    lam: float,
    lambda_amplify: float,
    lambda_hat_coeff: float,
    adaptive: bool,
    score_momentum: float,
    score_interval: int,
    selector: Selector | None,
    penalise_all: bool = False,
) -> NumpyStepper:
    return NumpyStepper(
        layout,
        shapes,
        lr=lr,
        base=BaseRule(variant, momentum, dampening, weight_decay, betas),
        schedule=SparsitySchedule(
            target,
            warmup_steps,
            projection_steps,
            epsilon,
            LambdaRule(lam, lambda_amplify, lambda_hat_coeff, adaptive),
            score_momentum,
            score_interval,
        ),
        selector=selector,
        penalise_all=penalise_all,
    )


def DHSPGStepper(  # noqa: N802 - factory named like the class it configures
    layout: GroupLayout,
    shapes: Mapping[str, Sequence[int]],
    *,
    lr: float = 0.1,
    variant: str = "sgd",
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
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
) -> NumpyStepper:
    """DHSPG over numpy arrays: top-K partition (or ``selector``), adaptive λ, exact count.

    Args:
        layout: Groups over the parameters.
        shapes: Shapes of all trainable parameters by name.
        lr: Learning rate.
        variant: Base rule, ``"sgd"``, ``"adam"`` or ``"adamw"``.
        momentum: SGD momentum.
        dampening: SGD dampening.
        weight_decay: L2 (sgd/adam) or decoupled (adamw) weight decay.
        betas: Adam betas.
        target: Fraction of groups (float) or exact count (int) to zero.
        warmup_steps: Plain steps before the partition.
        projection_steps: Hybrid window; exactly K zero groups after it.
        epsilon: Half-space threshold.
        lam: Base λ.
        lambda_amplify: Multiplier of λ's lower bound.
        lambda_hat_coeff: λ_g ≤ lam·lambda_hat_coeff.
        score_momentum: ω of the redundancy-score average.
        score_interval: Score every this many warm-up steps.
        selector: Redundant-set selector (default top-K).

    Returns:
        A configured :class:`NumpyStepper`.
    """
    return _make(**{k: v for k, v in locals().items()}, adaptive=True)


def H2SPGStepper(  # noqa: N802
    layout: GroupLayout,
    shapes: Mapping[str, Sequence[int]],
    *,
    selector: Selector,
    lr: float = 0.1,
    variant: str = "sgd",
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    target: float | int = 0.5,
    warmup_steps: int = 0,
    projection_steps: int = 0,
    epsilon: float = 0.0,
    lam: float = 1e-3,
    lambda_amplify: float = 2.0,
    lambda_hat_coeff: float = 10.0,
    score_momentum: float = 0.9,
    score_interval: int = 1,
) -> NumpyStepper:
    """H2SPG over numpy arrays: like :func:`DHSPGStepper` with a required validity ``selector``.

    ``selector(scores, k)`` must return ``k`` group indices forming a valid redundant set
    (e.g. ``lambda s, k: select_redundant(groups, s, k)``). Other arguments as
    :func:`DHSPGStepper`.
    """
    return _make(**{k: v for k, v in locals().items()}, adaptive=True)


def HSPGStepper(  # noqa: N802
    layout: GroupLayout,
    shapes: Mapping[str, Sequence[int]],
    *,
    lr: float = 0.1,
    variant: str = "sgd",
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    epsilon: float = 0.0,
    lam: float = 1e-3,
) -> NumpyStepper:
    """HSPG (OTOv1): constant λ on every group, half-space projection after ``warmup_steps``.

    No partition and no target: the number of zero groups is whatever λ and ε produce.
    """
    return _make(
        layout,
        shapes,
        lr=lr,
        variant=variant,
        momentum=momentum,
        dampening=0.0,
        weight_decay=weight_decay,
        betas=(0.9, 0.999),
        target=0,
        warmup_steps=warmup_steps,
        projection_steps=0,
        epsilon=epsilon,
        lam=lam,
        lambda_amplify=1.0,
        lambda_hat_coeff=1.0,
        adaptive=False,
        score_momentum=0.0,
        score_interval=1,
        selector=None,
        penalise_all=True,
    )
