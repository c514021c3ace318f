"""``repeat{max=N}(p1,p2,...)``: run a nested pipeline until it changes nothing (1 <= N <= 1000)."""

from __future__ import annotations

from dataclasses import dataclass

from otoir.infra.passes import Pass, option
from otoir.infra.registry import register_pass

__all__ = ["Repeat", "MAX_ROUNDS"]

#: The largest ``max`` accepted: a nested pipeline that still changes the model after this many
#: rounds does not converge, and running on would only look like a hang.
MAX_ROUNDS = 1000


@register_pass
@dataclass(frozen=True)
class Repeat(Pass):
    """Runs the nested pipeline until a round changes nothing, at most ``max`` rounds.

    ``max`` must be between 1 and :data:`MAX_ROUNDS` (1000).
    """

    name = "repeat"
    summary = "Run a nested pipeline to a fixed point: repeat{max=N}(a,b)"
    statistics = {"rounds": "rounds run"}
    takes_pipeline = True

    max: int = option(10, f"maximum number of rounds (1 to {MAX_ROUNDS})")
    pipeline: tuple = ()

    def __post_init__(self) -> None:
        if not 1 <= self.max <= MAX_ROUNDS:
            raise ValueError(f"option 'max' must be between 1 and {MAX_ROUNDS}, got {self.max}")

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
