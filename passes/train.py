"""``train``: train the model's parameters (values change, nothing else).

Its options are the fields of :class:`otoir.train.config.TrainConfig` (the one source of the
training defaults) plus a few of its own (``groups``, ``loss``, ``max-steps``, ``threads``,
``quiet``). Two backends: ONNX Runtime training on the model itself, or torch on the module the
model was exported from, when the caller lends one (:class:`otoir.train.config.TrainInputs`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from otoir.infra.analysis import PRESERVE_ALL
from otoir.infra.passes import Pass, option
from otoir.infra.registry import register_pass
from otoir.train.config import TrainConfig, TrainInputs, resolve_dataset

__all__ = ["Train"]

GROUP_KINDS = ("auto", "none", "gezig", "zig")
#: Training inputs the per-epoch history re-estimates BatchNorm statistics on (``history=true``).
HISTORY_RECAL_SAMPLES = 2048


def _static_dims(value: Any) -> tuple[int | None, ...] | None:
    if value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else None for d in value.shape.dims)


def _remark_ignored(ctx, model, kind: str, analyses, ignore) -> None:
    """Remarks which groups ``ignore=`` keeps, by pattern."""
    from otoir.analyses.validity import controlled_groups
    from otoir.optim.from_groups import groups_for

    allg = groups_for(model, kind, analyses)
    kept = [g for g in controlled_groups(allg, model, ignore=ignore) if not g.prunable]
    by_reason: dict[str, list[str]] = {}
    for g in kept:
        by_reason.setdefault(g.reason, []).append(g.id)
    for reason, ids in by_reason.items():
        more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
        ctx.remark(f"train: kept {len(ids)} {kind} group(s) {reason}: {', '.join(ids[:5])}{more}")
    if not kept:
        ctx.remark(f"train: ignore={','.join(ignore)} matches no prunable {kind} group")


def _zeroed_count(groups, target: float) -> int:
    """K the optimizers zero: ⌊target·G⌋, or under round-to the nearest reachable count."""
    from otoir.optim.from_groups import check_valid_target

    try:
        return check_valid_target(groups, target)
    except ValueError:
        from otoir.optim.core import target_count

        return target_count(target, len(groups))


def _report_round_to(ctx, groups, target: float) -> bool:
    """Warns when round-to changes K; remarks the tensors it keeps whole. False on an error."""
    from otoir.analyses.validity import round_to_kept
    from otoir.optim.from_groups import target_note

    if getattr(groups, "round_to", 1) <= 1:
        return True
    if getattr(groups, "checker", None) is not None:
        if getattr(groups, "min_channels", 0):  # round-to=auto, the default: nothing asked
            return True
        ctx.warning(f"train: round-to={groups.round_to} applies to channel groups (pruning); erasing removes whole "
                    "segments, so it has no effect here")
        return True
    kept = round_to_kept(groups)
    if kept:
        reasons = list(kept.values())
        more = f"; and {len(reasons) - 5} more" if len(reasons) > 5 else ""
        ctx.remark(f"train: kept the groups of {len(kept)} tensor(s): " + "; ".join(reasons[:5]) + more)
    try:
        note = target_note(groups, target)
    except ValueError as exc:
        ctx.error(f"train: {exc}")
        return False
    if note:
        ctx.warning(f"train: {note}")
    return True


@register_pass
@dataclass(frozen=True)
class Train(TrainConfig, Pass):
    """Trains the model with an otoir optimizer (ONNX Runtime training, or torch).

    Only initializer values change (parameters and BatchNorm running statistics): the nodes,
    initializer names, shapes and dtypes stay as they are. The data is a built-in dataset name
    (``mnist``) or an ``.npz`` file (see :mod:`otoir.data`), or any data source a caller lends
    (arrays, a ``DataLoader``, an iterable of batches: :mod:`otoir.data.sources`); it is fitted to
    the model's inputs first (:func:`otoir.data.bind`: count, names, shapes, integer inputs kept
    integer), and data that do not fit are a one-line error. A model whose batch dimension is
    fixed trains in batches of that size (a warning says so when ``batch`` differs): its graph
    may hold shape constants computed for it, so the dimension is never re-declared symbolic. The batch order comes from a
    ``numpy.random.default_rng(seed)`` permutation per epoch on ONNX Runtime (a seeded torch
    generator on torch), so a run is deterministic.

    ``ctx.results["train"]`` holds: ``dataset`` (name), ``backend``, ``optimizer``, ``steps``,
    ``seconds``, ``history`` (ONNX Runtime), ``epochs`` (one entry per epoch: ``epoch``,
    ``loss``, ``lr``, ``group_sparsity`` and, with ``history=true``, held-out ``accuracy`` after
    re-estimating BatchNorm statistics on the first :data:`HISTORY_RECAL_SAMPLES` training
    inputs), ``validation``, ``groups`` (the sparsified groups, or None), ``zero-mask`` (which of
    them are zero) and ``target-count`` (K). The learning rate follows
    :meth:`~otoir.train.config.TrainConfig.lr_at` (``lr-schedule``, ``lr-warmup``) on both backends.
    """

    name = "train"
    values_only = True
    preserves = PRESERVE_ALL  # only initializer values change; the analyses describe structure
    summary = "Train parameter values (optimizer=auto|sgd|h2spg|dhspg, variant=sgd|adam|adamw, backend=auto|torch|ort)"
    statistics = {
        "steps": "training steps run",
        "samples-per-second": "training throughput (forward+backward+optimizer)",
        "final-loss": "mean training loss of the last epoch",
        "val-loss": "validation loss after training",
        "val-accuracy": "validation top-1 accuracy after training",
        "group-sparsity": "fraction of zero groups at the end (structured optimizers)",
        "bn-recalibrated": "BatchNormalization nodes whose running statistics were re-estimated",
        "predicted-latency": "latency of the selection's constructed deployment-form network / the full model's, "
                             "measured with ONNX Runtime interleaved (target-latency; FLOPs ratio without ONNX Runtime)",
        "predicted-flops": "FLOPs of the constructed selection / the full model's (target-flops)",
    }

    groups: str = option("auto", "groups to sparsify: auto (gezig for h2spg, zig for dhspg, none for sgd) | gezig | zig")
    loss: str = option("cross-entropy", "cross-entropy | mse | output (the model's output is the loss; ort only)")
    max_steps: int = option(0, "stop after this many steps (0: all epochs; ort only)")
    threads: int = option(0, "ONNX Runtime intra-op threads (0: default)")
    quiet: bool = option(False, "no progress bar")

    def __post_init__(self) -> None:
        from otoir.train.ort_backend import LOSSES

        super().__post_init__()
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got '{self.loss}'")
        if self.groups not in GROUP_KINDS:
            raise ValueError(f"groups must be one of {', '.join(GROUP_KINDS)}, got '{self.groups}'")
        opt, kind = self.resolved()
        if opt == "sgd" and self.variant != "sgd":
            raise ValueError(f"variant={self.variant} needs a structured optimizer (h2spg or dhspg)")
        if opt != "sgd" and kind is None:
            raise ValueError(f"optimizer {opt} needs groups (gezig or zig)")

    def resolved(self) -> tuple[str, str | None]:
        """(optimizer, group kind or None) after resolving ``auto``."""
        kind = None if self.groups in ("auto", "none") else self.groups
        opt = self.structured_optimizer(kind)
        if kind is None and self.groups == "auto" and opt != "sgd":
            kind = "gezig" if opt == "h2spg" else "zig"
        return opt, kind

    def _bind(self, model, ds, ctx):
        """The data fitted to the model's inputs (:func:`otoir.data.bind`), or None after an error."""
        from otoir.data import DataFitError, bind

        try:
            binding = bind(ds, model)
        except DataFitError as exc:
            ctx.error(f"train: {exc}")
            return None
        if self.loss == "cross-entropy" and ds.num_classes:
            out = model.graph.outputs[0]
            od = _static_dims(out)
            if od is not None and len(od) >= 2 and od[1] is not None and od[1] < ds.num_classes:
                ctx.error(
                    f"train: dataset '{ds.name}' has {ds.num_classes} classes but output '{out.name}' has {od[1]}"
                )
                return None
        return binding

    def _plan(self, binding, backend: str, ctx) -> tuple[int | None, int] | None:
        """(rows per training batch or None for a stream's own, total steps), or None after an error."""
        from otoir.data import Dataset

        size = binding.batch_size(self.batch, exact=backend == "ort")
        src = binding.source
        if binding.fixed_batch and binding.fixed_batch != self.batch and isinstance(src, Dataset):
            ctx.warning(f"train: model input '{binding.names[0]}' has a fixed batch of {binding.fixed_batch}: "
                        f"training uses batches of {binding.fixed_batch}, not batch={self.batch}")
        if not src.reiterable and self.epochs > 1:
            ctx.error(f"train: data '{src.name}' is a one-shot iterator: it serves one epoch, not epochs={self.epochs} "
                      "(give a DataLoader or a list of batches)")
            return None
        per_epoch = binding.steps_per_epoch(size)
        if per_epoch is None:
            ctx.error(f"train: data '{src.name}' has no len(): the number of steps, which sets the optimizer's "
                      "schedule, is unknown (give a DataLoader or another iterable with len())")
            return None
        if per_epoch < 1:
            ctx.error(f"train: data '{src.name}' has fewer samples than one batch of {size}")
            return None
        total = self.epochs * per_epoch
        if self.max_steps:
            total = min(total, self.max_steps)
        return size, total

    def run(self, model, ctx) -> bool:
        from otoir.data import DatasetError

        lent = ctx.resources.get(TrainInputs.KEY)
        module = getattr(lent, "module", None)
        backend = self.backend if self.backend != "auto" else ("torch" if module is not None else "ort")
        if backend == "torch" and module is None:
            ctx.error("train: backend=torch needs the torch module the model was exported from (otoir.compress "
                      "lends it); use backend=ort")
            return False
        try:
            ds = resolve_dataset(self.data, ctx.resources)
        except DatasetError as exc:
            ctx.error(f"train: {exc}")
            return False
        binding = self._bind(model, ds, ctx)
        if binding is None:
            return False
        opt_name, kind = self.resolved()
        groups = None
        if kind is not None:
            from otoir.optim.from_groups import groups_for

            try:
                groups = groups_for(model, kind, ctx.analyses, ignore=self.ignore,
                                    max_layer_ratio=self.max_layer_ratio, round_to=self.round_to)
            except (ImportError, ValueError) as exc:
                ctx.error(f"train: cannot get the {kind} groups: {exc}")
                return False
            if self.ignore:
                _remark_ignored(ctx, model, kind, ctx.analyses, self.ignore)
            if not groups:
                ctx.error(f"train: the model has no prunable {kind} groups: nothing to sparsify")
                return False
            if not _report_round_to(ctx, groups, 0.0 if self.cost_target else self.target_sparsity):
                return False
        plan = self._plan(binding, backend, ctx)
        if plan is None:
            return False
        size, total = plan
        n = len(ds) if hasattr(ds, "__len__") else None
        kwargs: dict[str, Any] = {}
        if groups is not None:
            try:
                kwargs = self.optimizer_kwargs(total)
            except ValueError as exc:
                ctx.error(f"train: {exc}")
                return False
        selector = None
        if groups is not None and self.cost_target:
            selector = self._cost_selector(model, groups, ctx)
            if selector is None:
                return False
            kwargs["target"] = 0.0  # the count comes from the latency or FLOPs target
        t0 = time.perf_counter()
        if backend == "torch":
            out = self._train_torch(model, binding, size, total, module, getattr(lent, "loss_fn", None), opt_name,
                                    groups, kwargs, ctx, selector)
        else:
            out = self._train_ort(model, binding, opt_name, groups, kwargs, ctx, selector)
        if out is None:
            return False
        out["seconds"] = time.perf_counter() - t0
        val = None
        held_out = ds.validation()
        if held_out is not None and held_out[1] is not None and self.loss != "output":
            from otoir.train.ort_backend import evaluate

            val = evaluate(model, binding.feeds(held_out[0]), held_out[1], batch=max(self.batch, 256),
                           loss=self.loss, threads=self.threads or None)
            ctx.stat("val-loss", round(val.loss, 6))
            if val.accuracy is not None:
                ctx.stat("val-accuracy", round(val.accuracy, 6))
        ctx.stat("steps", out["steps"])
        mask = out.get("zero-mask")
        if mask is not None:
            ctx.stat("group-sparsity", round(float(np.mean(mask)), 6))
        if selector is not None and selector.predicted is not None:
            ctx.stat("predicted-flops" if self.target_flops else "predicted-latency", round(selector.predicted, 4))
            option, target = self.cost_target
            if selector.predicted > target:
                ctx.warning(f"train: {option}={target:g}: the {int(np.sum(mask)) if mask is not None else 0} groups "
                            f"that can be zero together leave {selector.predicted:.3f} of the full model's "
                            f"{'FLOPs' if self.target_flops else 'latency (measured)'}")
        ctx.results[self.name] = {
            **out, "validation": val, "dataset": ds.name, "train-samples": n, "backend": backend,
            "optimizer": opt_name, "groups": groups,
            "target-count": (None if not groups else int(np.sum(mask)) if selector is not None and mask is not None
                             else _zeroed_count(groups, self.target_sparsity)),
        }
        return out["steps"] > 0

    def _cost_selector(self, model, groups, ctx):
        """The selector of ``target-latency`` (latency-aware) or ``target-flops`` (FLOPs-aware),
        or None after an error."""
        from otoir.analyses.latency import cost_selector
        from otoir.errors import OtoirError

        option, target = self.cost_target
        try:
            sel = cost_selector(option, model, groups, target, analyses=ctx.analyses,
                                threads=self.latency_threads, batch=self.latency_batch)
        except (OtoirError, ValueError) as exc:
            ctx.error(f"train: {option}: {exc}")
            return None
        if sel.remark:
            ctx.remark(f"train: {option}: {sel.remark}")
        return sel

    def _train_ort(self, model, binding, opt_name, groups, kwargs, ctx, selector=None) -> dict | None:
        from otoir.train.optimizers import OptimizerUnavailable, make_optimizer
        from otoir.train.ort_backend import BackendUnavailable, TrainingError, recalibrate_bn, train_ort

        if groups is not None:
            kwargs = dict(kwargs)
            kwargs["target_sparsity"] = kwargs.pop("target")
            if selector is not None:
                kwargs["selector"] = selector
        else:
            kwargs = dict(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        try:
            opt = make_optimizer(opt_name, model, groups, **kwargs)
        except (OptimizerUnavailable, ValueError) as exc:
            ctx.error(f"train: {exc}")
            return None
        try:
            hist = train_ort(model, binding, None, opt, epochs=self.epochs, batch=self.batch, seed=self.seed,
                             loss=self.loss, max_steps=self.max_steps or None, threads=self.threads or None,
                             progress=not self.quiet, lr_at=self.lr_at, on_epoch=self._ort_epoch_eval(binding))
            if self.recalibrate_bn:
                ctx.stat("bn-recalibrated", recalibrate_bn(model, binding, threads=self.threads or None))
        except (BackendUnavailable, TrainingError) as exc:
            ctx.error(f"train: {exc}")
            return None
        ctx.stat("samples-per-second", round(hist.samples_per_second, 1))
        if hist.epoch_losses:
            ctx.stat("final-loss", round(hist.epoch_losses[-1], 6))
        mask = getattr(opt, "zero_groups", None) if groups is not None else None
        return {"history": hist, "epochs": hist.epochs, "steps": hist.steps,
                "zero-mask": None if mask is None else np.asarray(mask)}

    def _train_torch(self, model, binding, size, total, module, loss_fn, opt_name, groups, kwargs, ctx,
                     latency=None) -> dict | None:
        import torch

        from otoir.train.torch_backend import copy_state_to_model, recalibrate_bn, torch_batches, train_torch

        if groups is None:
            ctx.error("train: the torch backend trains with h2spg or dhspg (plain sgd: backend=ort)")
            return None
        if self.max_steps:
            ctx.error("train: max-steps is not supported on the torch backend")
            return None
        if loss_fn is None:
            losses = {"cross-entropy": torch.nn.functional.cross_entropy, "mse": torch.nn.functional.mse_loss}
            if self.loss not in losses:
                ctx.error(f"train: loss={self.loss} is not supported on the torch backend")
                return None
            loss_fn = losses[self.loss]
        selector = None
        if opt_name == "h2spg":
            from otoir.analyses.validity import select_redundant

            glist = groups  # a GroupSet (groups_for): its checker judges validity
            selector = lambda s, k: select_redundant(glist, s, k)  # noqa: E731
        if latency is not None:
            selector = latency
        torch.manual_seed(self.seed)
        loader = torch_batches(binding, size, steps=total // self.epochs, seed=self.seed)
        try:
            tr = train_torch(module, loader, loss_fn, groups, optimizer=opt_name, epochs=self.epochs,
                             selector=selector, progress=not self.quiet, lr_at=self.lr_at,
                             on_epoch=self._torch_epoch_eval(binding), **kwargs)
        except ValueError as exc:
            ctx.error(f"train: {exc}")
            return None
        if self.recalibrate_bn:
            ctx.stat("bn-recalibrated", recalibrate_bn(module, ([torch.from_numpy(x) for x in xb]
                                                               for xb in binding.input_batches())))
        copy_state_to_model(module, model)
        if tr.losses:
            ctx.stat("final-loss", round(tr.losses[-1], 6))
        return {"history": None, "epochs": tr.history, "steps": tr.steps, "zero-mask": np.asarray(tr.zero_groups),
                "module": module}

    # -- per-epoch held-out accuracy (history=true) ---------------------------------------------
    def _history_inputs(self, binding):
        """(recalibration feeds, held-out feeds, held-out labels) for the per-epoch history, or None."""
        if not self.history or self.loss != "cross-entropy":
            return None
        held_out = binding.source.validation()
        if held_out is None or held_out[1] is None:
            return None
        recal, _ = binding.source.samples(HISTORY_RECAL_SAMPLES)
        return binding.feeds(recal), binding.feeds(held_out[0]), np.asarray(held_out[1])

    def _ort_epoch_eval(self, binding):
        got = self._history_inputs(binding)
        if got is None:
            return None
        from otoir.train.ort_backend import evaluate, recalibrate_bn

        recal, vx, vy = got

        def on_epoch(model) -> float | None:
            if self.recalibrate_bn:  # the next write-back restores the training run's statistics
                recalibrate_bn(model, recal, threads=self.threads or None)
            return evaluate(model, vx, vy, batch=max(self.batch, 256), threads=self.threads or None).accuracy

        return on_epoch

    def _torch_epoch_eval(self, binding):
        got = self._history_inputs(binding)
        if got is None:
            return None
        import copy

        import torch

        from otoir.train.torch_backend import _first_output, recalibrate_bn, unwrap

        recal = tuple(torch.from_numpy(a) for a in got[0])
        vx = [torch.from_numpy(a) for a in got[1]]
        vy = torch.from_numpy(got[2])

        @torch.no_grad()
        def on_epoch(module) -> float | None:
            m = copy.deepcopy(unwrap(module))
            if self.recalibrate_bn:
                recalibrate_bn(m, [recal])
            m.eval()
            device = next(m.parameters()).device
            n = len(vy)
            right = 0
            for i in range(0, n, 256):
                out = _first_output(m(*(v[i:i + 256].to(device) for v in vx)))
                right += int((out.argmax(1).cpu() == vy[i:i + 256]).sum())
            return right / max(n, 1)

        return on_epoch
