"""``classify-vertices``: classify every node as stem, accessory, joint, ... with a reason."""

from __future__ import annotations

from dataclasses import dataclass

from otoir.analyses.vertices import VertexClasses
from otoir.infra.analysis import PRESERVE_ALL
from otoir.infra.passes import Pass, option
from otoir.infra.registry import register_pass
from otoir.ops.rules import VertexKind

__all__ = ["ClassifyVertices"]


@register_pass
@dataclass(frozen=True)
class ClassifyVertices(Pass):
    """Computes the vertex classification and reports ops without a rule as barriers."""

    name = "classify-vertices"
    summary = "Classify nodes as stem/accessory/joint/passthrough-shape/constant/unknown (annotates with --annotate)"
    statistics = {
        **{f"num-{k.value}": f"nodes classified {k.value}" for k in VertexKind},
        "num-trainable": "trainable parameter tensors",
    }
    preserves = PRESERVE_ALL

    strict: bool = option(False, "fail (instead of warn) when an op has no rule")

    def run(self, model, ctx) -> bool:
        vc = ctx.analyses.get(VertexClasses)
        for kind, n in vc.counts().items():
            ctx.stat(f"num-{kind.value}", n)
        ctx.stat("num-trainable", len(vc.trainable))
        for node in vc.barriers():
            msg = vc.reason(node) + ": nothing is pruned or erased across it"
            (ctx.error if self.strict else ctx.warning)(msg, node)
        return False
