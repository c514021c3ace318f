"""``to-inference``: training-mode BatchNorm to inference BatchNorm, Dropout to Identity."""

from __future__ import annotations

from dataclasses import dataclass

from otoir.infra.passes import Pass
from otoir.infra.registry import register_pass

__all__ = ["ToInference"]


@register_pass
@dataclass(frozen=True)
class ToInference(Pass):
    """Converts a training-form export to its inference form (parameter values unchanged)."""

    name = "to-inference"
    summary = "Training-mode BatchNormalization -> inference form (running statistics); Dropout -> Identity"
    statistics = {"nodes-changed": "nodes rewritten"}

    def run(self, model, ctx) -> bool:
        from otoir.train.inference import InferenceFormError, is_inference_form, to_inference

        if is_inference_form(model):
            return False
        before = len(model.graph)
        try:
            to_inference(model, copy=False)
        except InferenceFormError as exc:
            ctx.error(str(exc))
            return False
        ctx.stat("nodes-changed", max(before - len(model.graph), 0))
        return True
