"""The optimizer core shared by the torch and numpy front ends.

:class:`HybridCore` holds the schedule and the per-group state (redundancy scores, redundant
set, zero set) as small numpy arrays and drives one step through a :class:`Backend`, which owns
the parameter tensors and the base update (SGD / Adam / AdamW).

Schedule (all counts in calls to ``step``; step ``t`` is the ``t``-th call, from 0):

* ``t < warmup_steps``: plain base steps; redundancy scores (:func:`~otoir.optim.rules.redundancy_score`
  on ``x_t`` and the raw gradient) are averaged with momentum ω every ``score_interval`` steps.
* ``t == warmup_steps``: partition — the selector picks exactly K redundant groups (H2SPG's
  :func:`~otoir.analyses.validity.select_redundant` counts the groups a choice leaves dead among them).
* ``warmup_steps ≤ t < warmup_steps + projection_steps``: hybrid steps. Important groups take
  the base step; redundant groups the subgradient step of ``f + Σλ_g‖x_g‖`` followed by the
  half-space projection. At ``t = warmup_steps + projection_steps − 1`` every redundant group not
  yet zero is projected, so after that step exactly K groups are zero.
* later: base steps; zero groups are held at zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from otoir.optim.layout import GroupLayout
from otoir.optim.rules import LambdaRule, redundancy_score, select_top_k

__all__ = [
    "Backend",
    "BaseRule",
    "DECAYS",
    "HybridCore",
    "HybridStatus",
    "Selector",
    "SparsitySchedule",
    "target_count",
]

#: ``selector(scores, k) -> group indices`` (in the order accepted). Scores: larger = more redundant.
#: A selector with a true ``variable_count`` attribute chooses the count itself (``k`` is a hint).
Selector = Callable[[np.ndarray, int], Sequence[int]]


@dataclass(frozen=True)
class BaseRule:
    """The base optimizer applied to important groups and ungrouped parameters.

    Attributes:
        variant: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        momentum: SGD momentum μ (buffer ``m ← μm + (1 − dampening)g``, first step ``m ← g``).
        dampening: SGD dampening.
        weight_decay: L2 coefficient added to the gradient (sgd, adam) or decoupled decay
            ``x ← x − lr·wd·x`` (adamw).
        betas: Adam moment coefficients.
        eps: Adam denominator epsilon.
    """

    variant: str = "sgd"
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.variant not in ("sgd", "adam", "adamw"):
            raise ValueError(f"variant must be sgd, adam or adamw, not {self.variant!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError("momentum must be in [0, 1)")
        if self.weight_decay < 0:
            raise ValueError("weight_decay must be >= 0")


@dataclass(frozen=True)
class SparsitySchedule:
    """When and how much group sparsity is produced.

    Attributes:
        target: Fraction of groups to zero (``0 < target < 1``, K = ⌊target·G⌋) or, as an
            ``int``, the exact count K.
        warmup_steps: Steps of plain training (and score averaging) before the partition.
        projection_steps: Length of the hybrid window; K groups are zero after step
            ``warmup_steps + projection_steps − 1`` (0 projects at the partition step).
        epsilon: Half-space threshold ε ∈ [0, 1); larger projects earlier.
        lam: λ_g rule (DHSPG's adaptive bounds by default).
        score_momentum: ω of the score average.
        score_interval: Compute scores every this many warm-up steps (and on the last one).
        decay: How the redundant groups approach zero inside the window. ``"linear"`` (the
            default): after every step the still non-zero redundant groups are multiplied by
            ``(R−1)/R``, ``R`` the steps left in the window, so their norm falls linearly to
            exactly 0 at its end (the progressive forgetting of OTO's HESSO) while the kept
            groups learn to do without them. ``"none"``: the λ penalty and half-space projection
            alone (DHSPG/H2SPG as published); the groups still non-zero at the window's end are
            projected at once, which can cost most of the accuracy at that step.
    """

    target: float | int = 0.5
    warmup_steps: int = 0
    projection_steps: int = 0
    epsilon: float = 0.0
    lam: LambdaRule = field(default_factory=LambdaRule)
    score_momentum: float = 0.9
    score_interval: int = 1
    decay: str = "linear"

    def __post_init__(self) -> None:
        if isinstance(self.target, bool) or not isinstance(self.target, (int, float)):
            raise TypeError("target must be a fraction (float) or a count (int)")
        if isinstance(self.target, float) and not 0.0 <= self.target < 1.0:
            raise ValueError("a fractional target must be in [0, 1)")
        if isinstance(self.target, int) and self.target < 0:
            raise ValueError("target count must be >= 0")
        if self.warmup_steps < 0 or self.projection_steps < 0 or self.score_interval < 1:
            raise ValueError("warmup_steps, projection_steps >= 0 and score_interval >= 1")
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError("epsilon must be in [0, 1)")
        if not 0.0 <= self.score_momentum < 1.0:
            raise ValueError("score_momentum must be in [0, 1)")
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {', '.join(DECAYS)}, got '{self.decay}'")

    def target_count(self, num_groups: int) -> int:
        """K for a layout of ``num_groups`` groups (:func:`target_count`)."""
        return target_count(self.target, num_groups)

    @property
    def final_step(self) -> int:
        """Index of the step after which exactly K groups are zero."""
        return self.warmup_steps + max(self.projection_steps, 1) - 1

    def decay_factor(self, step: int) -> float:
        """The factor the live redundant groups are multiplied by after step ``step`` (1: none)."""
        if self.decay == "none" or not self.warmup_steps <= step <= self.final_step:
            return 1.0
        left = self.final_step - step + 1
        return (left - 1) / left


#: Values of :attr:`SparsitySchedule.decay`.
DECAYS = ("linear", "none")


def target_count(target: float | int, num_groups: int) -> int:
    """K, the number of groups to zero: ``⌊target·G⌋`` for a fraction, the count for an ``int``.

    Raises:
        ValueError: A count larger than ``num_groups``.
    """
    if isinstance(target, int):
        if target > num_groups:
            raise ValueError(f"target count {target} > number of groups {num_groups}")
        return target
    return int(np.floor(target * num_groups + 1e-9))


class Backend(Protocol):
    """What :class:`HybridCore` needs from a front end (numpy arrays or torch tensors)."""

    def layout_params(self) -> list[Any]:
        """Iterates aligned with ``layout.tensors``."""
        ...

    def layout_grads(self) -> list[Any]:
        """Raw gradients aligned with ``layout.tensors`` (``None`` = no gradient)."""
        ...

    def compute_directions(self) -> None:
        """Updates the base optimizer state and computes the base direction of every parameter."""
        ...

    def layout_directions(self) -> list[Any]:
        """Base directions aligned with ``layout.tensors``."""
        ...

    def fused_halfspace(
        self, active: np.ndarray, lr: float, rule: LambdaRule, epsilon: float, force: bool
    ) -> np.ndarray:
        """The fused half-space operation on the layout tensors; returns the projected mask."""
        ...

    def base_step(self, lr: float) -> None:
        """``x ← x − lr·d`` on every parameter (plus decoupled decay for AdamW)."""
        ...

    def rezero(self, zero: np.ndarray) -> None:
        """Sets the rows of the groups in ``zero`` to 0."""
        ...


class HybridCore:
    """Schedule and per-group state of H2SPG / DHSPG / HSPG.

    Args:
        layout: Groups over the parameters.
        schedule: Warm-up, window, target and projection settings.
        selector: Chooses the redundant set from the scores (default: top-K).
        penalise_all: HSPG mode: every group is a candidate and none is forced to zero (no
            partition, no exact count).
    """

    def __init__(
        self,
        layout: GroupLayout,
        schedule: SparsitySchedule,
        selector: Selector | None = None,
        *,
        penalise_all: bool = False,
    ) -> None:
        self.layout = layout
        self.schedule = schedule
        self.selector: Selector = selector if selector is not None else select_top_k
        self.penalise_all = penalise_all
        G = layout.num_groups
        self.target_count = G if penalise_all else schedule.target_count(G)
        self.step_count = 0
        self.scores: np.ndarray | None = None
        self.selected: list[int] | None = None
        self.redundant = np.zeros(G, dtype=bool)
        self.zero = np.zeros(G, dtype=bool)
        self._decay_tensors: tuple[bytes, list[int]] | None = None

    # ------------------------------------------------------------------ queries
    @property
    def phase(self) -> str:
        """``"warmup"``, ``"hybrid"`` or ``"done"`` for the next step."""
        s = self.schedule
        if self.step_count < s.warmup_steps:
            return "warmup"
        if self.step_count <= s.final_step or self.penalise_all:
            return "hybrid"
        return "done"

    @property
    def num_zero_groups(self) -> int:
        """Groups currently held at zero."""
        return int(self.zero.sum())

    # ------------------------------------------------------------------ the step
    def _score_update(self, be: Backend) -> None:
        self._apply_score(*self._stats(be.layout_params(), be.layout_grads()))

    def _apply_score(self, xd: np.ndarray, xx: np.ndarray, dd: np.ndarray) -> None:
        s_t = redundancy_score(xd, xx, dd, self.layout.group_numel)
        w = self.schedule.score_momentum
        self.scores = s_t if self.scores is None else w * self.scores + (1.0 - w) * s_t

    def _stats(self, xs: list[Any], gs: list[Any]):
        from otoir.optim.halfspace import group_stats

        return group_stats(self.layout, xs, gs)

    def partition(self) -> None:
        """Chooses the redundant set (called by :meth:`step` at the end of warm-up)."""
        G = self.layout.num_groups
        if self.penalise_all:
            self.selected = list(range(G))
            self.redundant[:] = True
            return
        K = self.target_count
        scores = self.scores if self.scores is not None else np.zeros(G)
        chosen = [int(i) for i in self.selector(np.asarray(scores).copy(), K)]
        if len(set(chosen)) != len(chosen) or any(not 0 <= i < G for i in chosen):
            raise ValueError("selector returned repeated or out-of-range group indices")
        if getattr(self.selector, "variable_count", False):
            # the selector's own target decides the count (latency-aware selection with a
            # target latency, :class:`otoir.analyses.latency.LatencySelector`)
            self.target_count = K = len(chosen)
        if len(chosen) != K:
            raise ValueError(
                f"selector returned {len(chosen)} groups, the target is {K}: no valid "
                "redundant set of that size exists; lower the target"
            )
        self.selected = chosen
        self.redundant[:] = False
        self.redundant[chosen] = True

    def step(self, be: Backend, lr: float) -> None:
        """Runs one optimizer step through the backend.

        A backend with a ``fused_step(request)`` method (see :mod:`otoir.optim.fused`) does the
        whole step in one call when it returns a result; ``None`` means "not supported for these
        tensors" and the step goes through the generic protocol methods.
        """
        if getattr(be, "fused_step", None) is not None and self._fused(be, lr):
            self.step_count += 1
            return
        s = self.schedule
        t = self.step_count
        if t < s.warmup_steps:
            if t % s.score_interval == 0 or t == s.warmup_steps - 1:
                self._score_update(be)
            be.compute_directions()
            be.base_step(lr)
        else:
            if self.selected is None:
                if self.scores is None and not self.penalise_all:
                    self._score_update(be)
                self.partition()
            be.compute_directions()
            active = self.redundant & ~self.zero
            if active.any():
                force = (not self.penalise_all) and t >= s.final_step
                self.zero |= be.fused_halfspace(active, lr, s.lam, s.epsilon, force)
            be.base_step(lr)
            self._decay(be, active, t)
            if self.zero.any():
                be.rezero(self.zero)
        self.step_count += 1

    def _decay(self, be: Backend, active: np.ndarray, t: int) -> None:
        """Scales the redundant groups that were live before step ``t`` by its decay factor."""
        live = active & ~self.zero
        f = self.schedule.decay_factor(t)
        if self.penalise_all or f == 1.0 or not live.any():
            return
        from otoir.optim.halfspace import apply_group_scale

        key = np.packbits(self.redundant).tobytes()
        if self._decay_tensors is None or self._decay_tensors[0] != key:
            ids = [i for i in range(len(self.layout.tensors)) if self.redundant[self.layout.groups_of_tensor(i)].any()]
            self._decay_tensors = (key, ids)
        apply_group_scale(self.layout, be.layout_params(), np.where(live, f, 1.0), self._decay_tensors[1])

    def _fused(self, be: Any, lr: float) -> bool:
        from otoir.optim.fused import StepRequest

        fused = be.fused_step
        s = self.schedule
        t = self.step_count
        if t < s.warmup_steps:
            score = t % s.score_interval == 0 or t == s.warmup_steps - 1
            out = fused(StepRequest(lr, score=score))
            if out is None:
                return False
            if score:
                self._apply_score(*out[0])
            return True
        if self.selected is None:  # as in the generic path (which then finds it done)
            if self.scores is None and not self.penalise_all:
                self._score_update(be)
            self.partition()
        active = self.redundant & ~self.zero
        force = (not self.penalise_all) and t >= s.final_step
        req = StepRequest(
            lr,
            active=active if active.any() else None,
            rule=s.lam,
            epsilon=s.epsilon,
            force=force,
            zero=self.zero.copy(),
        )
        out = fused(req)
        if out is None:
            return False
        if out[1] is not None:
            self.zero |= out[1]
        self._decay(be, active, t)
        return True

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (plain Python / numpy values)."""
        return {
            "step_count": self.step_count,
            "scores": None if self.scores is None else self.scores.copy(),
            "selected": None if self.selected is None else list(self.selected),
            "redundant": self.redundant.copy(),
            "zero": self.zero.copy(),
            "target_count": self.target_count,
            "schedule": asdict(self.schedule),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` output (the layout must have the same group count)."""
        G = self.layout.num_groups
        if len(state["zero"]) != G:
            raise ValueError(f"checkpoint has {len(state['zero'])} groups, layout has {G}")
        self.step_count = int(state["step_count"])
        sc = state["scores"]
        self.scores = None if sc is None else np.asarray(sc, dtype=np.float64).copy()
        sel = state["selected"]
        self.selected = None if sel is None else [int(i) for i in sel]
        self.redundant = np.asarray(state["redundant"], dtype=bool).copy()
        self.zero = np.asarray(state["zero"], dtype=bool).copy()
        self.target_count = int(state["target_count"])


class HybridStatus:
    """Read-only views of a front end's :class:`HybridCore` (``self.core``), shared by the
    numpy stepper and the torch optimizers."""

    core: HybridCore

    @property
    def num_zero_groups(self) -> int:
        """Groups currently held at zero."""
        return self.core.num_zero_groups

    @property
    def num_groups(self) -> int:
        """Groups in the layout."""
        return self.core.layout.num_groups

    @property
    def zero_groups(self) -> np.ndarray:
        """``(G,)`` bool mask of zero groups."""
        return self.core.zero.copy()

    @property
    def redundant_groups(self) -> np.ndarray:
        """``(G,)`` bool mask of the redundant set (all False before the partition)."""
        return self.core.redundant.copy()

    @property
    def phase(self) -> str:
        """``"warmup"``, ``"hybrid"`` or ``"done"`` for the next step."""
        return self.core.phase
