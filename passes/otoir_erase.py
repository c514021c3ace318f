"""``otoir-erase`` and ``otoir-prune``: the whole compression as one named pipeline.

``otoir-erase{data=mnist epochs=1 target-sparsity=0.5 ...}`` runs::

    normalize-export, classify-vertices, grow-segments, partition-gezig,
    train{groups=gezig ...}, check-validity, to-inference,
    eliminate-dead-branches, cleanup, check, to-deployment

and ``otoir-prune{...}`` the same with ``partition-zig``, ``train{groups=zig ...}`` and
``prune-channels`` (no ``check-validity``). The options are those of
:class:`otoir.train.config.TrainConfig` (the ``train`` pass gets them all, ``optimizer=auto``
meaning H2SPG for erasing and DHSPG for pruning) plus ``verify``, ``tolerance`` and ``quiet``.
The child passes are built as objects and run through the pass manager's nested-run API
(:meth:`~otoir.infra.passes.PassContext.run_nested`), so instruments, the verifier and timing
see each of them. With ``verify=true`` (the default) the result is compared with the trained
full model on the dataset's held-out inputs, and the pass fails if outputs differ.

:func:`otoir.compress` runs exactly this pass, and reads ``ctx.results[name]``: ``full`` (the
trained full model, inference form; with ``verify``), ``train`` (the ``train`` pass's results),
``removed`` (ids of the groups the construction actually removed), ``kept`` (id -> reason for
zero groups it kept), ``channels`` (prune: ``{tensor: [(axis, before, after)]}`` of the sliced
initializers) and ``max-rel-diff``.
"""

from __future__ import annotations

from dataclasses import dataclass

from otoir.infra.passes import Pass, option
from otoir.infra.registry import get_pass, register_pass
from otoir.train.config import TrainConfig, config_values, resolve_dataset

__all__ = ["OtoirErase", "OtoirPrune"]


@dataclass(frozen=True)
class _Compress(TrainConfig, Pass):
    statistics = {"max-rel-diff": "max |full - compressed| / output scale on held-out inputs"}
    mode = ""
    group_kind = ""

    verify: bool = option(True, "compare the result with the trained full model on held-out inputs")
    tolerance: float = option(1e-4, "allowed max |difference| / output scale")
    quiet: bool = option(False, "no progress bar")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.optimizer not in ("auto", "h2spg", "dhspg"):
            raise ValueError(f"optimizer must be auto, h2spg or dhspg, got '{self.optimizer}'")

    def train_pass(self) -> Pass:
        """The ``train`` pass this pipeline runs (all TrainConfig fields forwarded)."""
        return get_pass("train")(**config_values(self), groups=self.group_kind, quiet=self.quiet)

    def children(self) -> list[Pass]:
        """The child passes, in order (built directly, no pipeline text)."""
        names = (["normalize-export", "classify-vertices", "grow-segments", "partition-gezig", "train", "check-validity"]
                 if self.mode == "erase" else ["normalize-export", "classify-vertices", "partition-zig", "train"])
        names += ["to-inference", "eliminate-dead-branches" if self.mode == "erase" else "prune-channels",
                  "cleanup", "check", "to-deployment"]
        # to-deployment's own load check is left to the writer (otoir-opt / otoir.save), which
        # holds the result to what the *input* passed: an input that already fails the full
        # checker for a benign reason must not make the whole compression fail here.
        return [self.train_pass() if n == "train" else get_pass(n)(check=False) if n == "to-deployment"
                else get_pass(n)() for n in names]

    def expansion(self) -> str:
        """The equivalent pipeline text (for display; the pass never parses it)."""
        return ",".join(p.to_text() for p in self.children())

    def run(self, model, ctx) -> bool:
        from otoir.api import clone_model

        passes = self.children()
        cut = [p.name for p in passes].index("to-inference") + 1
        changed = ctx.run_nested(passes[:cut], model)  # ... train, to-inference: the trained full model
        full = clone_model(model) if self.verify else None
        changed |= ctx.run_nested(passes[cut:], model)  # construction: the sub-network
        train = (ctx.earlier_results("train") or [None])[-1]
        out = {"full": full, "train": train, "max-rel-diff": None, **self._removed(ctx, train)}
        ctx.results[self.name] = out
        if full is not None:
            from otoir.report import output_agreement

            ds = resolve_dataset(self.data, ctx.resources)
            xs = ds.val_x if ds.val_x is not None else ds.train_x
            diff = output_agreement(full, model, xs[:512])
            out["max-rel-diff"] = diff
            ctx.stat("max-rel-diff", float(f"{diff:.3g}"))
            if diff > self.tolerance:
                ctx.error(f"the compressed model's outputs differ from the trained full model's: "
                          f"{diff:.3g} > {self.tolerance:g}")
        return changed


    def _removed(self, ctx, train) -> dict:
        """``removed`` / ``kept`` group ids: what the construction cut out, not what was zeroed."""
        if not train or train.get("groups") is None or train.get("zero-mask") is None:
            return {"removed": [], "kept": {}, "channels": {}}
        zero = [g.id for g, z in zip(train["groups"], train["zero-mask"], strict=True) if z]
        if self.mode == "erase":
            return {"removed": zero, "kept": {}, "channels": {}}
        ids = (ctx.earlier_results("prune-channels-ids") or [{"removed": [], "kept": {}}])[-1]
        kept = dict(ids["kept"])
        removed = set(ids["removed"])
        for gid in zero:  # zero groups prune-channels did not remove (e.g. not exactly zero-invariant)
            if gid not in removed and gid not in kept:
                kept[gid] = "not removed by prune-channels (not exactly zero-invariant)"
        return {"removed": [g for g in zero if g in removed], "kept": kept, "channels": ids.get("channels", {})}


@register_pass
@dataclass(frozen=True)
class OtoirErase(_Compress):
    """Erasing mode end to end: GeZIGs, H2SPG training, dead-branch elimination."""

    name = "otoir-erase"
    summary = "Compress by erasing whole segments: classify, segments, GeZIGs, train{h2spg}, eliminate, cleanup"
    mode = "erase"
    group_kind = "gezig"


@register_pass
@dataclass(frozen=True)
class OtoirPrune(_Compress):
    """Pruning mode end to end: channel groups, DHSPG training, channel pruning."""

    name = "otoir-prune"
    summary = "Compress by pruning channels: classify, channel groups, train{dhspg}, prune-channels, cleanup"
    mode = "prune"
    group_kind = "zig"
