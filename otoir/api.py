"""The few high-level calls: :func:`compress`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from otoir.errors import OtoirError
from otoir.report import CompressReport, build_report

__all__ = ["CompressResult", "compress", "clone_model"]


@dataclass
class CompressResult:
    """What :func:`compress` returns.

    Attributes:
        model: The compressed sub-network (inference form: BatchNorm with running statistics).
        full: The trained full model (inference form), for comparison.
        report: Before/after figures and the output agreement check.
        groups: The groups that were candidates for removal.
        zero_group_ids: Ids of the groups that were zero after training.
        removed_group_ids: Ids of the groups the construction removed (zero groups it had to
            keep, e.g. the last channel of a tensor, are in ``kept_groups``).
        kept_groups: ``{id: reason}`` of zero groups that were not removed.
        module: The trained torch module (torch backend only).
        pipeline: The pipeline that ran (``otoir-opt -p`` text; the torch module and a
            dataset object, which text cannot name, were lent to it).
        baseline: The trained dense baseline (inference form, as ``full``; ``dense_baseline=True``),
            else None.
        baseline_module: The trained dense torch module (torch backend, ``dense_baseline=True``).
        history: Per-epoch training history by run (``"otoir"``, ``"dense"``; ``history=True``).
    """

    model: ir.Model
    full: ir.Model
    report: CompressReport
    groups: list = field(default_factory=list)
    zero_group_ids: list[str] = field(default_factory=list)
    removed_group_ids: list[str] = field(default_factory=list)
    kept_groups: dict[str, str] = field(default_factory=dict)
    module: Any = None
    pipeline: str = ""
    baseline: ir.Model | None = None
    baseline_module: Any = None
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def clone_model(model: ir.Model) -> ir.Model:
    """A deep copy of ``model`` (through the protobuf form; external data is read in)."""
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def _is_torch_module(obj: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def compress(model: Any, data: Any = "mnist", *, mode: str = "erase", target_sparsity: float = 0.5,
             epochs: int = 1, batch: int = 64, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 0.0,
             variant: str = "sgd",
             optimizer: str | None = None, backend: str = "auto", example_inputs: Any = None,
             warmup: float = 0.25, projection: float = 0.35, epsilon: float = 0.0, lam: float = 1e-3,
             seed: int = 0, progress: bool = True, tolerance: float = 1e-4, latency_runs: int = 50,
             loss_fn: Callable | None = None, recalibrate_bn: bool = True, ignore: tuple[str, ...] = (),
             max_layer_ratio: float = 1.0, round_to: int = 1, lr_schedule: str = "constant",
             lr_warmup: float = 0.0, history: bool = False, dense_baseline: bool = False) -> CompressResult:
    """Trains ``model`` once with a structured-sparsity optimizer and cuts the zero structures out.

    This is the ``otoir-erase{…}`` / ``otoir-prune{…}`` pipeline (see
    :mod:`otoir.passes.otoir_erase`) run on the loaded or exported model, plus a report: the
    same options give the same result as ``otoir-opt -p 'otoir-erase{…}'``. Defaults are
    :class:`otoir.train.config.TrainConfig`'s; a torch module, ``loss_fn`` and a
    :class:`~otoir.data.Dataset` object are lent to the ``train`` pass
    (:class:`~otoir.train.config.TrainInputs`). ``CompressResult.pipeline`` is the pipeline text.

    Args:
        model: A ``torch.nn.Module`` (torch backend; needs ``example_inputs``, or a dataset
            sample is used), or anything :func:`otoir.load` reads (ONNX Runtime backend).
        data: A built-in dataset name (``mnist``), an ``.npz`` path, or an
            :class:`otoir.data.Dataset`.
        mode: ``erase`` (remove whole segments: GeZIGs, H2SPG) or ``prune`` (remove channels:
            ZIGs, DHSPG).
        target_sparsity: Fraction of the groups to remove; exactly ``⌊target·#groups⌋`` are.
        epochs: Training epochs.
        batch: Batch size.
        lr: Learning rate (SGD with ``momentum`` and ``weight_decay``).
        momentum: SGD momentum.
        weight_decay: L2 weight decay (decoupled for ``adamw``).
        variant: Base update: ``sgd``, ``adam`` or ``adamw`` (OTO's suggested lr for Adam: 1e-3).
        optimizer: ``h2spg`` or ``dhspg`` (default: by mode, H2SPG for erase, DHSPG for prune).
        backend: ``torch``, ``ort`` or ``auto`` (torch for a module, ONNX Runtime otherwise).
        example_inputs: Example inputs for exporting a torch module.
        warmup: Fraction of the steps trained before the redundant groups are chosen (a step
            count if >= 1).
        projection: Fraction of the steps over which they are driven to zero (a count if >= 1).
        epsilon: Half-space projection threshold.
        lam: Base group-lasso coefficient.
        seed: Seed for initial batch order (and torch's RNG on the torch backend).
        progress: Show progress bars on stderr.
        tolerance: Allowed ``max|y_full - y_sub| / output scale`` on held-out inputs.
        latency_runs: Batch-1 latency measurements per model (0 to skip).
        loss_fn: Torch loss (default cross-entropy); the ORT backend uses cross-entropy.
        recalibrate_bn: After training, re-estimate BatchNorm running statistics with a forward
            pass over the training inputs (parameters are not changed). Running averages taken
            while the weights move lag behind the final weights and can cost many points of
            held-out accuracy; the sub-network is built from the recalibrated full model.
        ignore: Node or parameter name globs (``fnmatch``, e.g. ``("conv1*", "fc.*")``); groups
            touching a match are kept.
        max_layer_ratio: At most ``floor(F * n)`` of the ``n`` channel groups of one tensor are
            removed (1.0: no cap).
        lr_schedule: ``constant`` or ``cosine`` (annealed to 0 after the warm-up).
        lr_warmup: Linear learning-rate warm-up: a fraction of the steps, or a count if >= 1.
        history: Record held-out accuracy and group sparsity after every epoch
            (``CompressResult.history``, ``report.history``).
        dense_baseline: Also train the same network densely with the identical budget — the
            same pipeline with ``target-sparsity=0`` (so the same optimizer and base rule,
            lr schedule, epochs, seed and batch order, initial values and BatchNorm
            recalibration, and no group zeroed) — and report it as the first column, with the
            full and compressed models' deltas against it. Doubles the training time.
        round_to: The kept channel count of every pruned tensor is a multiple of this, or the
            full count (whole groups: attention heads stay whole); chosen in the selection, with
            exactly ``⌊target·#groups⌋`` groups when such a set exists, else the nearest count that
            does (``report.details["groups"]`` says so). 1: no rounding.

    Raises:
        OtoirError: Bad arguments, or the sub-network's outputs differ from the trained model's.
    """
    from otoir.data import Dataset, load_dataset
    from otoir.infra import PassManager
    from otoir.infra.registry import get_pass
    from otoir.train.config import TrainInputs

    if mode not in ("erase", "prune"):
        raise OtoirError(f"mode must be 'erase' or 'prune', not '{mode}'")
    ds = data if isinstance(data, Dataset) else load_dataset(data)
    torch_module = _is_torch_module(model)
    if backend == "torch" and not torch_module:
        raise OtoirError("the torch backend needs a torch.nn.Module")
    try:
        p = get_pass(f"otoir-{mode}")(
            data=ds.name, optimizer=optimizer or "auto", variant=variant, epochs=epochs, batch=batch, lr=lr,
            momentum=momentum, weight_decay=weight_decay, target_sparsity=target_sparsity, warmup=warmup,
            projection=projection, lam=lam, epsilon=epsilon, recalibrate_bn=recalibrate_bn, backend=backend,
            seed=seed, verify=True, tolerance=tolerance, quiet=not progress,
            ignore=(ignore,) if isinstance(ignore, str) else tuple(ignore), max_layer_ratio=max_layer_ratio,
            round_to=round_to, lr_schedule=lr_schedule, lr_warmup=lr_warmup, history=history)
    except (TypeError, ValueError) as exc:
        raise OtoirError(f"compress: {exc}") from None

    dense_src = None
    if torch_module:
        import copy

        import torch

        from otoir.frontends.torch_export import export_torch

        dense_src = copy.deepcopy(model) if dense_baseline else None  # the same initial values
        torch.manual_seed(seed)
        example = example_inputs if example_inputs is not None else torch.from_numpy(ds.train_x[:2])
        onnx_model = export_torch(model, example)
    else:
        import otoir

        onnx_model = otoir.load(model)
    dense_model = clone_model(onnx_model) if dense_baseline else None
    lent = TrainInputs(module=model if torch_module else None, loss_fn=loss_fn, datasets=(ds,))
    run = PassManager([p]).run(onnx_model, resources={TrainInputs.KEY: lent})  # PassFailure is an OtoirError
    out = run.results[p.name]
    train = out["train"]
    histories = {"otoir": list(train.get("epochs") or [])} if history else {}
    if dense_model is not None:
        import dataclasses

        dp = dataclasses.replace(p, target_sparsity=0.0)  # every other option, the seed included, the same
        dense_lent = TrainInputs(module=dense_src, loss_fn=loss_fn, datasets=(ds,))
        dense_run = PassManager([dp]).run(dense_model, resources={TrainInputs.KEY: dense_lent})
        dense_train = dense_run.results[dp.name]["train"]
        # the trained dense network in the form of the otoir full column (inference form), so the
        # two differ only in their values; its construction removed nothing
        dense_model = dense_run.results[dp.name]["full"]
        if history:
            histories["dense"] = list(dense_train.get("epochs") or [])
    full, sub, groups = out["full"], onnx_model, list(train["groups"])
    zero_mask = np.asarray(train["zero-mask"], dtype=bool)
    zero_ids = [g.id for g, z in zip(groups, zero_mask, strict=True) if z]
    removed_ids, kept = out.get("removed", zero_ids), out.get("kept", {})
    details = {
        "mode": mode, "optimizer": f"{train['optimizer']} ({variant}, lr {lr:g}"
                                   + (f", {lr_schedule}" if lr_schedule != "constant" else "")
                                   + (f", lr warm-up {lr_warmup:g}" if lr_warmup else "") + ")", "backend": train["backend"],
        "dataset": ds.name, "epochs": epochs, "steps": train["steps"],
        "groups": f"{len(removed_ids)} of {len(groups)} {p.group_kind} groups removed "
                  f"(target {target_sparsity:g} -> {train['target-count']}"
                  + (f" with round-to={p.round_to}" if p.round_to > 1 else "") + ")",
        "training time": f"{train['seconds']:.1f} s",
    }
    if kept:
        details["kept"] = "; ".join(f"{gid}: {why}" for gid, why in sorted(kept.items()))
    if out.get("channels"):  # kept counts of the sliced tensors (round-to multiples show here)
        details["kept channels"] = "; ".join(f"{t}[{a}] {b}->{c}" for t, lost in sorted(out["channels"].items())
                                             for a, b, c in lost)
    if mode == "erase":
        details["removed segments"] = "; ".join(str(g.meta.get("label") or g.id)
                                                for g, z in zip(groups, zero_mask, strict=True) if z)
    if dense_model is not None:
        details["dense baseline"] = (f"the same pipeline with target-sparsity 0: {dense_train['optimizer']} with no "
                                     f"group zeroed, {dense_train['steps']} steps, same seed and batch order")
    report = build_report(full, sub, val=(ds.val_x, ds.val_y) if ds.val_x is not None else None,
                          tolerance=tolerance, latency_runs=latency_runs, details=details, baseline=dense_model,
                          latency_batches=(batch,), history=histories)
    if report.verified is False:  # the pass checked 512 held-out inputs; the report checks them all
        raise OtoirError(f"the compressed model's outputs differ from the trained model's: max relative difference "
                         f"{report.max_rel_diff:.3g} > {tolerance:g}")
    return CompressResult(model=sub, full=full, report=report, groups=groups, zero_group_ids=zero_ids,
                          removed_group_ids=list(removed_ids), kept_groups=dict(kept),
                          module=model if torch_module else None, pipeline=p.to_text(), baseline=dense_model,
                          baseline_module=dense_src, history=histories)
