"""``train``: train the model's parameters with ONNX Runtime training (values change, nothing else)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from otoir.infra.analysis import PRESERVE_ALL
from otoir.infra.passes import Pass, option
from otoir.infra.registry import register_pass

__all__ = ["Train"]


def _static_dims(value: Any) -> tuple[int | None, ...] | None:
    if value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else None for d in value.shape.dims)


@register_pass
@dataclass(frozen=True)
class Train(Pass):
    """Trains the model with onnxruntime-training and an otoir optimizer.

    Only initializer values change (parameters and BatchNorm running statistics): the nodes,
    initializer names, shapes and dtypes stay as they are. The data is a built-in dataset name
    (``mnist``) or an ``.npz`` file (see :mod:`otoir.data`). The batch order comes from a
    ``numpy.random.default_rng(seed)`` permutation per epoch, so a run is deterministic.
    """

    name = "train"
    values_only = True
    preserves = PRESERVE_ALL  # only initializer values change; the analyses describe structure
    summary = "Train parameter values with ONNX Runtime training (optimizer=sgd|h2spg|dhspg, data=NAME|PATH.npz)"
    statistics = {
        "steps": "training steps run",
        "samples-per-second": "training throughput (forward+backward+optimizer)",
        "final-loss": "mean training loss of the last epoch",
        "val-loss": "validation loss after training",
        "val-accuracy": "validation top-1 accuracy after training",
        "group-sparsity": "fraction of zero groups at the end (structured optimizers)",
    }

    optimizer: str = option("sgd", "sgd | h2spg | dhspg")
    data: str = option("mnist", "built-in dataset name (mnist) or .npz file with inputs/labels")
    epochs: int = option(1, "passes over the training data")
    batch: int = option(64, "batch size")
    lr: float = option(0.1, "learning rate")
    momentum: float = option(0.9, "momentum")
    weight_decay: float = option(0.0, "L2 weight decay")
    target_sparsity: float = option(0.5, "fraction of groups to zero (h2spg/dhspg)")
    warmup: float = option(0.25, "warm-up before sparsification (h2spg/dhspg): a fraction of all steps, or a step count if >= 1")
    projection: float = option(0.35, "length of the projection window (fraction of all steps, or steps if >= 1)")
    groups: str = option("auto", "groups to sparsify: auto (gezig for h2spg, zig for dhspg) | gezig | zig")
    epsilon: float = option(0.0, "half-space projection threshold (h2spg/dhspg)")
    lam: float = option(1e-3, "base group-lasso coefficient lambda (h2spg/dhspg)")
    seed: int = option(0, "seed of the batch order")
    loss: str = option("cross-entropy", "cross-entropy | mse | output (the model's output is the loss)")
    max_steps: int = option(0, "stop after this many steps (0: all epochs)")
    threads: int = option(0, "ONNX Runtime intra-op threads (0: default)")
    quiet: bool = option(False, "no progress bar")

    def __post_init__(self) -> None:
        from otoir.train.optimizers import OPTIMIZERS
        from otoir.train.ort_backend import LOSSES

        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got '{self.optimizer}'")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got '{self.loss}'")
        if self.epochs < 1 or self.batch < 1:
            raise ValueError("epochs and batch must be >= 1")
        if not 0.0 <= self.target_sparsity < 1.0:
            raise ValueError(f"target-sparsity must be in [0, 1), got {self.target_sparsity}")

    def _check_data(self, model, ds, ctx) -> bool:
        inits = model.graph.initializers
        inputs = [v for v in model.graph.inputs if v.name not in inits]
        if len(inputs) != 1:
            ctx.error(f"train: the model has {len(inputs)} data inputs; datasets feed exactly one")
            return False
        dims = _static_dims(inputs[0])
        sample = ds.input_shape
        if dims is not None and (
            len(dims) != len(sample) + 1 or any(d is not None and d != s for d, s in zip(dims[1:], sample, strict=False))
        ):
            ctx.error(
                f"train: dataset '{ds.name}' samples have shape {sample}, but model input "
                f"'{inputs[0].name}' has shape {dims}"
            )
            return False
        if self.loss == "cross-entropy" and ds.num_classes:
            out = model.graph.outputs[0]
            od = _static_dims(out)
            if od is not None and len(od) >= 2 and od[1] is not None and od[1] < ds.num_classes:
                ctx.error(
                    f"train: dataset '{ds.name}' has {ds.num_classes} classes but output '{out.name}' has {od[1]}"
                )
                return False
        return True

    def run(self, model, ctx) -> bool:
        from otoir.data import DatasetError, load_dataset
        from otoir.train.optimizers import OptimizerUnavailable, group_sparsity, make_optimizer
        from otoir.train.ort_backend import BackendUnavailable, TrainingError, evaluate, train_ort

        try:
            ds = load_dataset(self.data)
        except DatasetError as exc:
            ctx.error(f"train: {exc}")
            return False
        if not self._check_data(model, ds, ctx):
            return False
        groups = None
        n = int(np.shape(ds.train_x)[0])
        total = self.epochs * max(n // self.batch, 1)
        if self.max_steps:
            total = min(total, self.max_steps)
        extra = {}
        if self.optimizer in ("h2spg", "dhspg"):
            kind = self.groups if self.groups != "auto" else ("gezig" if self.optimizer == "h2spg" else "zig")
            from otoir.optim.from_groups import groups_for

            try:
                groups = groups_for(model, kind, ctx.analyses)
            except (ImportError, ValueError) as exc:
                ctx.error(f"train: cannot get the {kind} groups: {exc}")
                return False
            warm = int(self.warmup) if self.warmup >= 1 else int(self.warmup * total)
            proj = int(self.projection) if self.projection >= 1 else int(self.projection * total)
            if warm + max(proj, 1) > total:
                ctx.error(f"train: warm-up ({warm}) + projection ({proj}) steps exceed the {total} training steps")
                return False
            extra = dict(target_sparsity=self.target_sparsity, warmup_steps=warm, projection_steps=proj,
                         epsilon=self.epsilon, lam=self.lam)
        try:
            opt = make_optimizer(self.optimizer, model, groups, lr=self.lr, momentum=self.momentum,
                                 weight_decay=self.weight_decay, **extra)
        except (OptimizerUnavailable, ValueError) as exc:
            ctx.error(f"train: {exc}")
            return False
        labels = None if self.loss == "output" else ds.train_y
        try:
            hist = train_ort(
                model,
                ds.train_x,
                labels,
                opt,
                epochs=self.epochs,
                batch=self.batch,
                seed=self.seed,
                loss=self.loss,
                max_steps=self.max_steps or None,
                threads=self.threads or None,
                progress=not self.quiet,
            )
        except (BackendUnavailable, TrainingError) as exc:
            ctx.error(f"train: {exc}")
            return False
        ctx.stat("steps", hist.steps)
        ctx.stat("samples-per-second", round(hist.samples_per_second, 1))
        if hist.epoch_losses:
            ctx.stat("final-loss", round(hist.epoch_losses[-1], 6))
        sp = group_sparsity(opt)
        if sp is not None:
            ctx.stat("group-sparsity", round(sp, 6))
        val = None
        if ds.val_x is not None and self.loss != "output":
            val = evaluate(model, ds.val_x, ds.val_y, batch=max(self.batch, 256), loss=self.loss,
                           threads=self.threads or None)
            ctx.stat("val-loss", round(val.loss, 6))
            if val.accuracy is not None:
                ctx.stat("val-accuracy", round(val.accuracy, 6))
        ctx.results[self.name] = {"history": hist, "validation": val, "dataset": ds.name,
                                  "train-samples": int(np.shape(ds.train_x)[0])}
        return hist.steps > 0
