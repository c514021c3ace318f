"""``otoir-erase`` and ``otoir-prune``: the whole compression as one named pipeline.

``otoir-erase{data=mnist epochs=1 target-sparsity=0.5 ...}`` expands to::

    classify-vertices, grow-segments, partition-gezig,
    train{optimizer=h2spg ...}, check-validity, to-inference,
    eliminate-dead-branches, cleanup, check

and ``otoir-prune{...}`` to the same with ``partition-zig``, ``train{optimizer=dhspg}`` and
``prune-channels``. The nested passes run through the pass manager, so instruments see each
of them. With ``verify=true`` (the default) the result is compared with the trained full model
on the dataset's held-out inputs, and the pass fails if outputs differ.
"""

from __future__ import annotations

from dataclasses import dataclass

from otoir.infra.passes import Pass, format_value, option
from otoir.infra.registry import register_pass

__all__ = ["OtoirErase", "OtoirPrune"]


@dataclass(frozen=True)
class _Compress(Pass):
    statistics = {"max-rel-diff": "max |full - compressed| / output scale on held-out inputs"}
    mode = ""

    data: str = option("mnist", "built-in dataset name or .npz file")
    epochs: int = option(1, "training epochs")
    batch: int = option(64, "batch size")
    lr: float = option(0.05, "learning rate")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(0.0, "L2 weight decay")
    target_sparsity: float = option(0.5, "fraction of the groups to remove")
    warmup: float = option(0.25, "fraction of steps before the redundant groups are chosen")
    projection: float = option(0.35, "fraction of steps over which they are driven to zero")
    epsilon: float = option(0.0, "half-space projection threshold")
    seed: int = option(0, "seed of the batch order")
    verify: bool = option(True, "compare the result with the trained full model on held-out inputs")
    tolerance: float = option(1e-4, "allowed max |difference| / output scale")
    quiet: bool = option(False, "no progress bar")

    def expansion(self) -> str:
        """The pipeline text this pass runs."""
        opt = "h2spg" if self.mode == "erase" else "dhspg"
        train = (f"train{{optimizer={opt} data={format_value(self.data)} epochs={self.epochs} batch={self.batch} "
                 f"lr={self.lr!r} momentum={self.momentum!r} weight-decay={self.weight_decay!r} "
                 f"target-sparsity={self.target_sparsity!r} warmup={self.warmup!r} projection={self.projection!r} "
                 f"epsilon={self.epsilon!r} seed={self.seed} quiet={format_value(self.quiet)}}}")
        if self.mode == "erase":
            return (f"classify-vertices,grow-segments,partition-gezig,{train},check-validity,to-inference,"
                    "eliminate-dead-branches,cleanup,check")
        return f"classify-vertices,partition-zig,{train},to-inference,prune-channels,cleanup,check"

    def run(self, model, ctx) -> bool:
        from otoir.api import clone_model
        from otoir.infra.pass_manager import build_passes
        from otoir.infra.pipeline import parse_pipeline

        pm = ctx.pass_manager
        passes = build_passes(parse_pipeline(self.expansion()))
        full = None
        changed = False
        for p in passes:
            changed |= pm.run_one(p, model, ctx.analyses, ctx.diagnostics, ctx.pipeline_result, ctx.history)
            if p.name == "to-inference" and self.verify:
                full = clone_model(model)  # the trained full model, inference form
        if full is not None:
            from otoir.data import load_dataset
            from otoir.report import output_agreement

            ds = load_dataset(self.data)
            xs = ds.val_x if ds.val_x is not None else ds.train_x
            diff = output_agreement(full, model, xs[:512])
            ctx.stat("max-rel-diff", float(f"{diff:.3g}"))
            if diff > self.tolerance:
                ctx.error(f"the compressed model's outputs differ from the trained full model's: "
                          f"{diff:.3g} > {self.tolerance:g}")
        return changed


@register_pass
@dataclass(frozen=True)
class OtoirErase(_Compress):
    """Erasing mode end to end: GeZIGs, H2SPG training, dead-branch elimination."""

    name = "otoir-erase"
    summary = "Compress by erasing whole segments: classify, segments, GeZIGs, train{h2spg}, eliminate, cleanup"
    mode = "erase"


@register_pass
@dataclass(frozen=True)
class OtoirPrune(_Compress):
    """Pruning mode end to end: channel groups, DHSPG training, channel pruning."""

    name = "otoir-prune"
    summary = "Compress by pruning channels: classify, channel groups, train{dhspg}, prune-channels, cleanup"
    mode = "prune"
