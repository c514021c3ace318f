"""The algorithms (DHSPG, H2SPG, HSPG) and the one mapping of flat keywords to structured settings.

Every optimizer constructor, on both front ends, is configured by a :class:`BaseRule`, a
:class:`SparsitySchedule` and a selector. For convenience the constructors also accept the
settings as flat keywords (``momentum=0.9, target=0.5, lam=1e-3`` …); :func:`configure` is the
only place that knows those names, and their defaults are the dataclasses' own.

Flat keyword → field:

========================  =====================================================
``variant``, ``momentum``, ``dampening``, ``weight_decay``, ``betas``, ``eps``
                          :class:`BaseRule` fields of the same name
``target``, ``warmup_steps``, ``projection_steps``, ``epsilon``,
``score_momentum``, ``score_interval``, ``decay``
                          :class:`SparsitySchedule` fields of the same name
``lam``                   :attr:`LambdaRule.lam` (or a whole :class:`LambdaRule`)
``lambda_amplify``        :attr:`LambdaRule.amplify`
``lambda_hat_coeff``      :attr:`LambdaRule.hat_coeff`
========================  =====================================================

Flat keywords override the fields of ``base`` / ``schedule`` objects passed alongside them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from otoir.optim.core import BaseRule, Selector, SparsitySchedule
from otoir.optim.rules import LambdaRule

__all__ = ["ALGORITHMS", "AlgorithmSpec", "Configured", "OPTION_NAMES", "configure"]

_BASE_FIELDS = ("variant", "momentum", "dampening", "weight_decay", "betas", "eps")
_SCHEDULE_FIELDS = ("target", "warmup_steps", "projection_steps", "epsilon", "score_momentum", "score_interval",
                    "decay")
_LAMBDA_FIELDS = {"lam": "lam", "lambda_amplify": "amplify", "lambda_hat_coeff": "hat_coeff"}

#: Every flat keyword the optimizer constructors accept besides ``lr``, ``base``, ``schedule``
#: and ``selector``.
OPTION_NAMES: tuple[str, ...] = (*_BASE_FIELDS, *_SCHEDULE_FIELDS, *_LAMBDA_FIELDS)


@dataclass(frozen=True)
class AlgorithmSpec:
    """What distinguishes DHSPG, H2SPG and HSPG on top of the shared core.

    Attributes:
        name: ``"dhspg"``, ``"h2spg"`` or ``"hspg"``.
        selector: ``"top-k"`` (default :func:`~otoir.optim.rules.select_top_k`, replaceable),
            ``"required"`` (a validity selector must be given) or ``"none"`` (no partition).
        penalise_all: Every group is a candidate and none is forced to zero (HSPG).
        fixed: Flat settings the algorithm fixes; passing them is an error.
    """

    name: str
    selector: str = "top-k"
    penalise_all: bool = False
    fixed: Mapping[str, Any] = field(default_factory=dict)


#: The algorithms by name.
ALGORITHMS: dict[str, AlgorithmSpec] = {
    "dhspg": AlgorithmSpec("dhspg"),
    "h2spg": AlgorithmSpec("h2spg", selector="required"),
    "hspg": AlgorithmSpec(
        "hspg",
        selector="none",
        penalise_all=True,
        fixed={"target": 0, "projection_steps": 0, "score_momentum": 0.0,
               "lambda_amplify": 1.0, "lambda_hat_coeff": 1.0, "adaptive": False, "decay": "none"},
    ),
}


class Configured(NamedTuple):
    """The structured settings of one optimizer (what the constructors pass to the core)."""

    base: BaseRule
    schedule: SparsitySchedule
    selector: Selector | None
    penalise_all: bool


def configure(
    algorithm: str,
    base: BaseRule | None = None,
    schedule: SparsitySchedule | None = None,
    selector: Selector | None = None,
    options: Mapping[str, Any] | None = None,
) -> Configured:
    """Resolves an algorithm name, structured settings and flat keywords into :class:`Configured`.

    Args:
        algorithm: ``"dhspg"``, ``"h2spg"`` or ``"hspg"``.
        base: Base rule (default ``BaseRule()``).
        schedule: Sparsity schedule (default ``SparsitySchedule()``).
        selector: Redundant-set selector.
        options: Flat keywords (see the module docstring), applied on top of ``base`` and
            ``schedule``.

    Raises:
        ValueError: Unknown algorithm, or a setting out of range.
        TypeError: Unknown keyword, a keyword the algorithm fixes, or a missing/unexpected
            selector.
    """
    spec = ALGORITHMS.get(str(algorithm).lower())
    if spec is None:
        raise ValueError(f"unknown structured optimizer '{algorithm}' (choose one of: {', '.join(ALGORITHMS)})")
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(f"{spec.name}: unknown option(s) {', '.join(unknown)} (known: {', '.join(OPTION_NAMES)})")
    fixed = sorted(set(options) & set(spec.fixed))
    if fixed:
        raise TypeError(f"{spec.name}: option(s) {', '.join(fixed)} do not apply (the algorithm fixes them)")
    if spec.selector == "required" and selector is None:
        raise TypeError(f"{spec.name} needs a validity selector; use dhspg for plain top-K")
    if spec.selector == "none" and selector is not None:
        raise TypeError(f"{spec.name} makes no partition and takes no selector")
    options.update(spec.fixed)
    base = base if base is not None else BaseRule()
    schedule = schedule if schedule is not None else SparsitySchedule()
    base_kw = {k: options[k] for k in _BASE_FIELDS if k in options}
    if base_kw:
        base = dataclasses.replace(base, **base_kw)
    lam = schedule.lam
    if isinstance(options.get("lam"), LambdaRule):
        lam = options.pop("lam")
    lam_kw = {f: options[k] for k, f in _LAMBDA_FIELDS.items() if k in options}
    if "adaptive" in options:
        lam_kw["adaptive"] = options["adaptive"]
    if lam_kw:
        lam = dataclasses.replace(lam, **lam_kw)
    sched_kw = {k: options[k] for k in _SCHEDULE_FIELDS if k in options}
    if sched_kw or lam is not schedule.lam:
        schedule = dataclasses.replace(schedule, lam=lam, **sched_kw)
    return Configured(base, schedule, selector, spec.penalise_all)
