"""``check-validity``: is the sub-network valid when some GeZIGs are zero?"""

from __future__ import annotations

from dataclasses import dataclass

from otoir.analyses.gezig import GeZIGPartition
from otoir.analyses.groups import zero_subset
from otoir.infra.analysis import PRESERVE_ALL
from otoir.infra.passes import Pass, option
from otoir.infra.registry import register_pass

__all__ = ["CheckValidity"]


@register_pass
@dataclass(frozen=True)
class CheckValidity(Pass):
    """Checks the validity of erasing a set of GeZIGs (error when invalid).

    The set is ``ids`` when given, otherwise the GeZIGs whose parameters are all zero.
    """

    name = "check-validity"
    summary = "Check that erasing the given (or the all-zero) GeZIGs leaves a valid sub-network"
    statistics = {"num-zero": "groups assumed zero", "valid": "1 when valid, 0 otherwise"}
    preserves = PRESERVE_ALL

    ids: tuple[str, ...] = option((), "group ids assumed zero (default: GeZIGs whose parameters are all zero)")

    def run(self, model, ctx) -> bool:
        p = ctx.analyses.get(GeZIGPartition)
        by_id = {g.id: g for g in p.groups}
        if self.ids:
            unknown = [i for i in self.ids if i not in by_id]
            if unknown:
                ctx.error(f"unknown GeZIG ids: {', '.join(unknown)} (known: {', '.join(by_id) or 'none'})")
                return False
            zero = [by_id[i] for i in self.ids]
        else:
            zero = zero_subset(model, p.groups)
        report = p.checker.check(zero)
        ctx.stat("num-zero", len(zero))
        ctx.stat("valid", int(report.valid))
        ctx.results["validity"] = report
        names = ", ".join(g.id for g in zero) or "none"
        if report.valid:
            ctx.remark(f"valid: erasing {names}")
        else:
            ctx.error(f"invalid: erasing {names}: " + "; ".join(report.reasons))
        return False
