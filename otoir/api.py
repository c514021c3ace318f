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
        module: The trained **full** torch module (torch backend only): your module, trained in
            place, with the removed groups exactly zero but still present. Not the compressed one.
        pipeline: The pipeline that ran (``otoir-opt -p`` text; the torch module and a
            dataset object, which text cannot name, were lent to it).
        compressed_module: The **compressed** torch module (torch backend, pruning mode): a deep
            copy of ``module`` with the removed channels sliced out, checked against ``model``
            in ONNX Runtime (:func:`otoir.workflow.torch_subnetwork`); None when it could not
            be built (``compressed_module_error`` says why; ``model`` is still the result).
        compressed_module_error: Why there is no ``compressed_module`` (None when there is one).
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
    compressed_module: Any = None
    compressed_module_error: str | None = None
    baseline: ir.Model | None = None
    baseline_module: Any = None
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def __repr__(self) -> str:
        def params(m: Any) -> int:
            return sum(p.numel() for p in m.parameters())

        full = (f"<trained FULL {type(self.module).__name__}: {params(self.module):,} params>"
                if self.module is not None else "None")
        comp = (f"<compressed {type(self.compressed_module).__name__}: {params(self.compressed_module):,} params>"
                if self.compressed_module is not None else repr(self.compressed_module_error))
        return (f"CompressResult(model=<ONNX sub-network: {self.report.compressed.params:,} params>, "
                f"compressed_module={comp}, module={full}, removed {len(self.removed_group_ids)} of "
                f"{len(self.groups)} groups)")


def clone_model(model: ir.Model) -> ir.Model:
    """A deep copy of ``model`` (through the protobuf form; external data is read in)."""
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def _is_torch_module(obj: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _example_from(ds: Any, module: Any) -> Any:
    """Example inputs for exporting ``module``: the data's first two rows as torch tensors.

    Raises:
        OtoirError: The module does not run on them (one line naming the data and the reason).
    """
    import torch

    from otoir.data import DataFitError

    try:
        xs, _ = ds.samples(2)
    except DataFitError as exc:
        raise OtoirError(f"compress: {exc}") from None
    if isinstance(xs, dict):
        example: Any = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in xs.items()}
    else:
        example = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in xs)
    try:
        was_training = module.training
        with torch.no_grad():
            module.eval()  # no running-statistics update
            try:
                module(**example) if isinstance(example, dict) else module(*example)
            finally:
                module.train(was_training)
    except Exception as exc:  # the module's own error: shapes, channels, dtypes
        items = example.items() if isinstance(example, dict) else enumerate(example)
        shapes = ", ".join(f"{'' if isinstance(k, int) else k + ' '}{tuple(v.shape[1:])} {str(v.dtype)[6:]}"
                           for k, v in items)
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise OtoirError(f"compress: data '{ds.name}' (samples of shape {shapes}) does not fit "
                         f"{type(module).__name__}: {first}") from None
    return example[0] if isinstance(example, tuple) and len(example) == 1 else example


def compress(model: Any, data: Any = "mnist", *, mode: str = "erase", target_sparsity: float = 0.5,
             epochs: int = 1, batch: int = 64, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 0.0,
             variant: str = "sgd",
             optimizer: str | None = None, backend: str = "auto", example_inputs: Any = None,
             warmup: float = 0.25, projection: float = 0.35, epsilon: float = 0.0, lam: float = 1e-3,
             decay: str = "linear",
             seed: int = 0, progress: bool = True, tolerance: float = 1e-4, latency_runs: int = 50,
             latency_threads: int | None = None, latency_batch: int = 1,
             loss_fn: Callable | None = None, recalibrate_bn: bool = True, ignore: tuple[str, ...] = (),
             max_layer_ratio: float = 1.0, round_to: int | str = "auto", target_latency: float = 0.0, target_flops: float = 0.0,
             lr_schedule: str = "constant", lr_warmup: float = 0.0, history: bool = False,
             dense_baseline: bool = False) -> CompressResult:
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
        data: A built-in dataset name (``mnist``), an ``.npz`` path, numpy arrays (``x`` or
            ``(x, y)``; ``x`` a tuple or dict for several inputs), an :class:`otoir.data.Dataset`,
            or a torch ``DataLoader`` / any iterable of batches (streamed, never collected; see
            :mod:`otoir.data.sources` for the batch forms). Integer inputs (token ids, masks) stay
            integer. Data that do not fit the model raise an :class:`OtoirError` naming both.
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
        example_inputs: Example inputs for exporting a torch module (default: the data's first
            two rows; a dict batch exports with its keys as input names).
        warmup: Fraction of the steps trained before the redundant groups are chosen (a step
            count if >= 1).
        projection: Fraction of the steps over which they are driven to zero (a count if >= 1).
        epsilon: Half-space projection threshold.
        decay: ``linear``: the redundant groups are scaled down every step of the projection
            window, reaching exactly zero at its end; ``none``: penalty and half-space
            projection only, the rest zeroed at the window's end.
        lam: Base group-lasso coefficient.
        seed: Seed for initial batch order (and torch's RNG on the torch backend).
        progress: Show progress bars on stderr.
        tolerance: Allowed ``max|y_full - y_sub| / output scale`` on held-out inputs.
        latency_runs: Batch-1 latency measurements per model (0 to skip).
        latency_threads: ONNX Runtime intra-op threads for the latency figures (None: the CPUs
            this process may use). A network that runs in a fraction of a millisecond is often
            faster on one thread: handing work to a thread pool costs more than the work.
            With ``target_latency``, also the threads the selection is measured with (None: 1).
        latency_batch: The batch size ``target_latency`` is measured at (the deployment's; a
            fixed batch dimension of the model wins). 1 by default.
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
            does (``report.details["groups"]`` says so). 1: no rounding. ``"auto"`` (the default):
            multiples of 16 for tensors of at least 32 channels, of 8 for 16 to 31, smaller ones not rounded
            (:class:`otoir.train.config.TrainConfig`). ``"runtime"``: N is ONNX Runtime's channel
            block on this machine (16 with AVX-512, 8 with AVX2), and a dense convolution keeping
            more output channels than one work unit of the runtime's threads (4 blocks) keeps
            whole units (:func:`otoir.analyses.validity.controlled_groups`).
        target_latency: Latency-aware selection: groups are ranked by importance per unit of
            ONNX Runtime latency saved (measured on this machine, :mod:`otoir.analyses.latency`;
            importance the redundancy rank, and the rank weighed by the FLOPs the group does:
            of the two selections, the one keeping more FLOPs) and chosen until the
            constructed network's measured latency (deployment form, timed interleaved with the
            full model) is this fraction of the full model's; ``target_sparsity`` is then not
            used. 0: off.
        target_flops: FLOPs-aware selection: groups are ranked by importance per FLOP saved (an
            erased segment's collateral included: consumer columns, branches left dead) and the
            fewest are chosen whose constructed sub-network has at most this fraction of the full
            model's FLOPs (counted by :func:`otoir.stats.stats` on the constructed network, not
            estimated); ``target_sparsity`` is then not used. Not with ``target_latency``. 0: off.

    Raises:
        OtoirError: Bad arguments, or the sub-network's outputs differ from the trained model's.
    """
    from otoir.analyses.validity import ROUND_TO_DEFAULT
    from otoir.data import DataFitError, DatasetError, as_data, bind
    from otoir.infra import PassManager
    from otoir.infra.registry import get_pass
    from otoir.train.config import TrainInputs

    if mode not in ("erase", "prune"):
        raise OtoirError(f"mode must be 'erase' or 'prune', not '{mode}'")
    try:
        ds = as_data(data)
    except DatasetError as exc:
        raise OtoirError(f"compress: {exc}") from None
    torch_module = _is_torch_module(model)
    if backend == "torch" and not torch_module:
        raise OtoirError("the torch backend needs a torch.nn.Module")
    try:
        p = get_pass(f"otoir-{mode}")(
            data=ds.name, optimizer=optimizer or "auto", variant=variant, epochs=epochs, batch=batch, lr=lr,
            momentum=momentum, weight_decay=weight_decay, target_sparsity=target_sparsity, warmup=warmup,
            projection=projection, lam=lam, epsilon=epsilon, decay=decay, recalibrate_bn=recalibrate_bn, backend=backend,
            seed=seed, verify=True, tolerance=tolerance, quiet=not progress,
            ignore=(ignore,) if isinstance(ignore, str) else tuple(ignore), max_layer_ratio=max_layer_ratio,
            round_to=round_to, target_latency=target_latency, target_flops=target_flops, lr_schedule=lr_schedule, lr_warmup=lr_warmup,
            history=history, latency_threads=1 if latency_threads is None else latency_threads,
            latency_batch=latency_batch)
    except (TypeError, ValueError) as exc:
        raise OtoirError(f"compress: {exc}") from None

    dense_src = None
    if torch_module:
        import copy

        import torch

        from otoir.frontends.torch_export import export_torch, positional_inputs

        dense_src = copy.deepcopy(model) if dense_baseline else None  # the same initial values
        torch.manual_seed(seed)
        example = example_inputs if example_inputs is not None else _example_from(ds, model)
        try:
            onnx_model = export_torch(model, example)
        except OtoirError:
            raise
        except Exception as exc:  # the module's own error on the example (shapes, channels, dtypes)
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise OtoirError(f"compress: exporting {type(model).__name__} with the example inputs failed: "
                             f"{first}") from None
        if isinstance(example, dict):  # from here on positional, in forward's order (as exported)
            example = positional_inputs(model, example)[0]
    else:
        import otoir

        onnx_model = otoir.load(model)
    try:
        binding = bind(ds, onnx_model)  # the data fit the model: checked once, before training
    except DataFitError as exc:
        raise OtoirError(f"compress: {exc}") from None
    dense_model = clone_model(onnx_model) if dense_baseline else None
    lent = TrainInputs(module=model if torch_module else None, loss_fn=loss_fn, datasets=(ds,))
    run = PassManager([p]).run(onnx_model, resources={TrainInputs.KEY: lent})  # PassFailure is an OtoirError
    out = run.results[p.name]
    train = out["train"]
    histories = {"otoir": list(train.get("epochs") or [])} if history else {}
    if dense_model is not None:
        import dataclasses

        # every other option, the seed included, the same; no cost target (it would choose groups)
        dp = dataclasses.replace(p, target_sparsity=0.0, target_latency=0.0, target_flops=0.0)
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
                  + (f"({p.cost_target[0]} {p.cost_target[1]:g} -> {train['target-count']}" if p.cost_target else
                     f"(target {target_sparsity:g} -> {train['target-count']}")
                  + (f" with round-to={p.round_to}" if p.round_to not in (1, ROUND_TO_DEFAULT) and p.group_kind == "zig"
                     else "")
                  + ")",
        "training time": f"{train['seconds']:.1f} s",
    }
    if kept:
        details["kept"] = "; ".join(f"{gid}: {why}" for gid, why in sorted(kept.items()))
    if out.get("channels"):  # kept counts of the sliced weights (round-to multiples show here)
        # the layers' weights (rank >= 2) only: their BatchNorm vectors and biases follow them
        rank = {v.name: len(v.shape) for v in full.graph.initializers.values() if v.shape is not None}
        details["kept channels"] = "; ".join(f"{t}[{a}] {b}->{c}" for t, lost in sorted(out["channels"].items())
                                             if rank.get(t, 2) >= 2 for a, b, c in lost)
    if mode == "erase":
        details["removed segments"] = "; ".join(str(g.meta.get("label") or g.id)
                                                for g, z in zip(groups, zero_mask, strict=True) if z)
    if dense_model is not None:
        details["dense baseline"] = (f"the same pipeline with no group zeroed (target-sparsity 0, no FLOPs or latency "
                                     f"budget): {dense_train['optimizer']}, {dense_train['steps']} steps, same seed and "
                                     f"batch order")
    held_out = ds.validation()
    val = None if held_out is None or held_out[1] is None else (binding.feeds(held_out[0]), held_out[1])
    report = build_report(full, sub, val=val, verify_inputs=binding.check_inputs(10**9 if val else 512),
                          tolerance=tolerance, latency_runs=latency_runs, threads=latency_threads, details=details,
                          baseline=dense_model,
                          latency_batches=(batch,), history=histories)
    if report.verified is False:  # the pass checked 512 held-out inputs; the report checks them all
        raise OtoirError(f"the compressed model's outputs differ from the trained model's: max relative difference "
                         f"{report.max_rel_diff:.3g} > {tolerance:g}")
    compressed, compressed_error = None, None
    if torch_module:
        from otoir.workflow import torch_subnetwork

        by_id = {g.id: g for g in groups}
        compressed, compressed_error, _, _ = torch_subnetwork(
            model, [by_id[i] for i in removed_ids], sub, example if isinstance(example, (tuple, list)) else (example,),
            tolerance)
    return CompressResult(model=sub, full=full, report=report, groups=groups, zero_group_ids=zero_ids,
                          removed_group_ids=list(removed_ids), kept_groups=dict(kept),
                          module=model if torch_module else None, pipeline=p.to_text(),
                          compressed_module=compressed, compressed_module_error=compressed_error,
                          baseline=dense_model, baseline_module=dense_src, history=histories)
