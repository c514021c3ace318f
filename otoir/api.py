"""The few high-level calls: :func:`compress`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from otoir.errors import OtoirError
from otoir.report import CompressReport, build_report

__all__ = ["CompressResult", "compress", "clone_model", "construction_pipeline"]


@dataclass
class CompressResult:
    """What :func:`compress` returns.

    Attributes:
        model: The compressed sub-network (inference form: BatchNorm with running statistics).
        full: The trained full model (inference form), for comparison.
        report: Before/after figures and the output agreement check.
        groups: The groups that were candidates for removal.
        zero_group_ids: Ids of the groups that were zero after training (and removed).
        module: The trained torch module (torch backend only).
    """

    model: ir.Model
    full: ir.Model
    report: CompressReport
    groups: list = field(default_factory=list)
    zero_group_ids: list[str] = field(default_factory=list)
    module: Any = None


def clone_model(model: ir.Model) -> ir.Model:
    """A deep copy of ``model`` (through the protobuf form; external data is read in)."""
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def construction_pipeline(mode: str) -> str:
    """The passes that cut zero groups out of a trained model."""
    return {"erase": "eliminate-dead-branches,cleanup", "prune": "prune-channels,cleanup"}[mode]


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
             loss_fn: Callable | None = None, recalibrate_bn: bool = True) -> CompressResult:
    """Trains ``model`` once with a structured-sparsity optimizer and cuts the zero structures out.

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
        optimizer: ``h2spg`` or ``dhspg`` (default: by mode).
        backend: ``torch``, ``ort`` or ``auto`` (torch for a module, ONNX Runtime otherwise).
        example_inputs: Example inputs for exporting a torch module.
        warmup: Fraction of the steps trained before the redundant groups are chosen.
        projection: Fraction of the steps over which they are driven to zero.
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

    Raises:
        OtoirError: Bad arguments, or the sub-network's outputs differ from the trained model's.
    """
    from otoir.data import Dataset, load_dataset
    from otoir.infra import PassManager
    from otoir.optim.from_groups import groups_for
    from otoir.train.inference import to_inference

    if mode not in ("erase", "prune"):
        raise OtoirError(f"mode must be 'erase' or 'prune', not '{mode}'")
    optimizer = optimizer or ("h2spg" if mode == "erase" else "dhspg")
    kind = "gezig" if mode == "erase" else "zig"
    ds = data if isinstance(data, Dataset) else load_dataset(data)
    torch_module = _is_torch_module(model)
    if backend == "auto":
        backend = "torch" if torch_module else "ort"
    if backend == "torch" and not torch_module:
        raise OtoirError("the torch backend needs a torch.nn.Module")
    steps_per_epoch = max(len(ds.train_x) // batch, 1)
    total = epochs * steps_per_epoch
    warm, proj = int(warmup * total), int(projection * total)
    if warm + max(proj, 1) > total:
        raise OtoirError(f"warm-up ({warm}) + projection ({proj}) steps exceed the {total} training steps")

    t0 = time.perf_counter()
    if torch_module:
        import torch

        from otoir.frontends.torch_export import export_torch

        torch.manual_seed(seed)
        example = example_inputs if example_inputs is not None else torch.from_numpy(ds.train_x[:2])
        onnx_model = export_torch(model, example)
    else:
        import otoir

        onnx_model = otoir.load(model)
    pm = PassManager.from_text("classify-vertices")
    result = pm.run(onnx_model)
    groups = groups_for(onnx_model, kind, result.analyses)
    if not groups:
        raise OtoirError(f"no prunable {kind} groups found: nothing to {mode}")
    opt_kw = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, variant=variant, target=target_sparsity,
                  warmup_steps=warm, projection_steps=proj, epsilon=epsilon, lam=lam)

    if backend == "torch":
        import torch

        from otoir.analyses.validity import select_redundant
        from otoir.train.torch_backend import copy_state_to_model, train_torch

        gen = torch.Generator().manual_seed(seed)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.from_numpy(ds.train_x), torch.from_numpy(ds.train_y)),
            batch_size=batch, shuffle=True, drop_last=True, generator=gen)
        selector = (lambda s, k: select_redundant(groups, s, k)) if optimizer == "h2spg" else None
        tr = train_torch(model, loader, loss_fn or torch.nn.functional.cross_entropy, groups, optimizer=optimizer,
                         epochs=epochs, selector=selector, progress=progress, **opt_kw)
        if recalibrate_bn:
            from otoir.train.torch_backend import recalibrate_bn as recalibrate

            recalibrate(model, torch.from_numpy(ds.train_x))
        copy_state_to_model(model, onnx_model)
        zero_mask = tr.zero_groups
        steps = tr.steps
    elif backend == "ort":
        from otoir.optim.from_groups import make_numpy_stepper
        from otoir.train.ort_backend import train_ort

        kw = dict(opt_kw)
        kw["target_sparsity"] = kw.pop("target")
        stepper = make_numpy_stepper(optimizer, onnx_model, groups, **kw)
        hist = train_ort(onnx_model, ds.train_x, ds.train_y, stepper, epochs=epochs, batch=batch, seed=seed,
                         progress=progress)
        if recalibrate_bn:
            from otoir.train.ort_backend import recalibrate_bn as recalibrate

            recalibrate(onnx_model, ds.train_x)
        zero_mask = stepper.zero_groups
        steps = hist.steps
    else:
        raise OtoirError(f"backend must be torch, ort or auto, not '{backend}'")
    train_seconds = time.perf_counter() - t0

    full = to_inference(onnx_model)
    sub = clone_model(full)
    PassManager.from_text(construction_pipeline(mode)).run(sub)
    zero_ids = [g.id for g, z in zip(groups, np.asarray(zero_mask), strict=True) if z]
    details = {
        "mode": mode, "optimizer": f"{optimizer} ({variant}, lr {lr:g})", "backend": backend, "dataset": ds.name,
        "epochs": epochs, "steps": steps, "groups": f"{len(zero_ids)} of {len(groups)} {kind} groups removed "
        f"(target {target_sparsity:g} -> {int(np.floor(target_sparsity * len(groups) + 1e-9))})",
        "training time": f"{train_seconds:.1f} s",
    }
    removed = [str(g.meta.get("label") or g.id) for g, z in zip(groups, np.asarray(zero_mask), strict=True) if z]
    if mode == "erase":
        details["removed segments"] = "; ".join(removed)
    report = build_report(full, sub, val=(ds.val_x, ds.val_y) if ds.val_x is not None else None,
                          tolerance=tolerance, latency_runs=latency_runs, details=details)
    res = CompressResult(model=sub, full=full, report=report, groups=groups, zero_group_ids=zero_ids,
                         module=model if torch_module else None)
    if report.verified is False:
        raise OtoirError(f"the compressed model's outputs differ from the trained model's: max relative difference "
                         f"{report.max_rel_diff:.3g} > {tolerance:g}")
    return res
