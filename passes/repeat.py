"""``repeat{max=N}(p1,p2,...)``: run a nested pipeline until it changes nothing."""

from __future__ import annotations

from dataclasses import dataclass

from otoir.infra.passes import Pass, option
from otoir.infra.registry import register_pass

__all__ = ["Repeat"]


@register_pass
@dataclass(frozen=True)
class Repeat(Pass):
    """Runs the nested pipeline until a round changes nothing, at most ``max`` rounds."""

    name = "repeat"
    summary = "Run a nested pipeline to a fixed point: repeat{max=N}(a,b)"
    statistics = {"rounds": "rounds run"}
    takes_pipeline = True

    max: int = option(10, "maximum number of rounds")
    pipeline: tuple = ()

    def run(self, model, ctx) -> bool:
        changed_any = False
        rounds = 0
        for _ in range(max(self.max, 0)):
            rounds += 1
            changed = ctx.run_nested(self.pipeline, model)
            changed_any |= changed
            if not changed:
                break
        ctx.stat("rounds", rounds)
        return changed_any
