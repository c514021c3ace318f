"""Numpy front end: a stepper that reads gradients and writes parameters by name.

Used by the ONNX Runtime training backend, where gradients come back per step as numpy arrays
and the new parameter values are written back to the session::

    stepper = DHSPGStepper(layout, shapes, lr=0.1, momentum=0.9, target=0.5,
                           warmup_steps=100, projection_steps=200)
    # the same, structured:
    stepper = NumpyStepper(layout, shapes, lr=0.1, algorithm="dhspg",
                           base=BaseRule(momentum=0.9),
                           schedule=SparsitySchedule(target=0.5, warmup_steps=100, projection_steps=200))
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
from otoir.optim.options import configure
from otoir.optim.rules import LambdaRule

__all__ = ["DHSPGStepper", "H2SPGStepper", "HSPGStepper", "NumpyStepper"]


class NumpyStepper(HybridStatus):
    """Structured-sparsity optimizer over named numpy arrays (the shared core, numpy backend).

    Usually built by :func:`otoir.optim.build_optimizer` or the :func:`DHSPGStepper` /
    :func:`H2SPGStepper` / :func:`HSPGStepper` shorthands.

    Args:
        layout: Groups over (a subset of) the parameters.
        shapes: Shape of every trainable parameter (grouped or not), by name.
        lr: Learning rate (override per call with ``step(..., lr=)``).
        algorithm: ``"dhspg"``, ``"h2spg"`` or ``"hspg"`` (see :mod:`otoir.optim.options`).
        base: Base update rule (default ``BaseRule()``).
        schedule: Sparsity schedule (default ``SparsitySchedule()``).
        selector: Redundant-set selector (default top-K; required by H2SPG).
        **options: Flat settings overriding fields of ``base`` / ``schedule``
            (:data:`otoir.optim.options.OPTION_NAMES`: ``momentum``, ``target``, ``lam`` …).
    """

    def __init__(
        self,
        layout: GroupLayout,
        shapes: Mapping[str, Sequence[int]],
        *,
        lr: float = 0.1,
        algorithm: str = "dhspg",
        base: BaseRule | None = None,
        schedule: SparsitySchedule | None = None,
        selector: Selector | None = None,
        **options: Any,
    ) -> None:
        cfg = configure(algorithm, base, schedule, selector, options)
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
        self.base = cfg.base
        self.core = HybridCore(layout, cfg.schedule, cfg.selector, penalise_all=cfg.penalise_all)
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


def DHSPGStepper(layout: GroupLayout, shapes: Mapping[str, Sequence[int]], **kwargs: Any) -> NumpyStepper:  # noqa: N802
    """DHSPG over numpy arrays: top-K partition (or ``selector``), adaptive λ, exact count.

    Arguments as :class:`NumpyStepper` with ``algorithm="dhspg"``.
    """
    return NumpyStepper(layout, shapes, algorithm="dhspg", **kwargs)


def H2SPGStepper(layout: GroupLayout, shapes: Mapping[str, Sequence[int]], **kwargs: Any) -> NumpyStepper:  # noqa: N802
    """H2SPG over numpy arrays: like :func:`DHSPGStepper` with a required validity ``selector``.

    ``selector(scores, k)`` must return ``k`` group indices forming a valid redundant set
    (e.g. ``lambda s, k: select_redundant(groups, s, k)``).
    """
    return NumpyStepper(layout, shapes, algorithm="h2spg", **kwargs)


def HSPGStepper(layout: GroupLayout, shapes: Mapping[str, Sequence[int]], **kwargs: Any) -> NumpyStepper:  # noqa: N802
    """HSPG (OTOv1): constant λ on every group, half-space projection after ``warmup_steps``.

    No partition and no target: the number of zero groups is whatever λ and ε produce.
    """
    return NumpyStepper(layout, shapes, algorithm="hspg", **kwargs)
