"""The torch training backend: the user's own module, data loader and loss.

otoir exports the module, analyses it, maps groups to the module's parameters by name (the
exporter keeps ``state_dict`` names), trains with the ``torch.optim.Optimizer`` front end
(:class:`otoir.optim.DHSPG` / :class:`otoir.optim.H2SPG`) on CPU or CUDA, and copies the
trained values back into the ONNX model so the construction passes can cut the zero groups out.
Works unchanged under ``torch.nn.parallel.DistributedDataParallel`` (every rank sees the same
all-reduced gradients, so every rank makes the same partition and projection).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    import onnx_ir as ir

    from otoir.analyses.groups import Group

__all__ = ["TorchTrainResult", "make_torch_optimizer", "train_torch", "copy_state_to_model", "unwrap", "recalibrate_bn",
           "torch_batches"]


@dataclass
class TorchTrainResult:
    """What :func:`train_torch` did.

    Attributes:
        losses: Mean loss of every epoch.
        steps: Optimizer steps taken.
        zero_groups: Boolean mask over the groups: exactly zero at the end.
        optimizer: The optimizer (for its state or further steps).
        seconds: Wall time.
        history: One entry per epoch: ``epoch``, ``loss``, ``lr`` (of the epoch's last step),
            ``group_sparsity`` (fraction of the groups at zero) and, when ``evaluate`` was
            given, ``on_epoch``'s ``accuracy``.
    """

    losses: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    zero_groups: np.ndarray | None = None
    optimizer: Any = None
    seconds: float = 0.0


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or the module)."""
    return getattr(module, "module", module) if isinstance(
        module, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else module


def make_torch_optimizer(module: torch.nn.Module, groups: Sequence[Group], *, optimizer: str = "dhspg",
                         selector: Callable[[np.ndarray, int], list[int]] | None = None,
                         total_steps: int | None = None, params: Any = None, **kwargs: Any):
    """Builds a DHSPG or H2SPG ``torch.optim.Optimizer`` over ``module``'s trainable parameters.

    The optimizer comes from the one factory, :func:`otoir.optim.build_optimizer`.

    Safe defaults: no group is zeroed at initialisation. The warm-up and projection windows
    default to the fractions ``warmup`` (0.25) and ``projection`` (0.35) of ``total_steps``;
    without ``total_steps`` both ``warmup_steps`` and ``projection_steps`` (or a ``schedule``)
    must be given — zeroing at the first step takes an explicit ``warmup_steps=0``.

    Args:
        module: The module (DDP-wrapped or not). Group tensor names must be its parameter names.
        groups: The prunable groups.
        optimizer: ``"dhspg"`` (top-K partition) or ``"h2spg"`` (validity-checked partition).
        selector: Redundant-set selection ``selector(scores, k) -> indices`` (default: the
            validity-checked :func:`otoir.analyses.validity.select_redundant` over ``groups``).
        total_steps: Optimizer steps the training will take (sets the default windows).
        params: Param groups (``[{"params": [...], "weight_decay": 0.0}, ...]``, tensors of
            ``module`` or ``(name, tensor)`` pairs); default: every trainable parameter.
        **kwargs: ``lr``, ``base``, ``schedule``, ``warmup``, ``projection`` and the flat
            options of :mod:`otoir.optim.options` (``momentum``, ``target``, ``warmup_steps``, ...).

    Raises:
        ValueError: Unknown optimizer; neither ``total_steps`` nor both windows given; windows
            that do not fit in ``total_steps``.
    """
    from otoir.optim import build_optimizer

    if optimizer not in ("dhspg", "h2spg"):
        raise ValueError(f"unknown optimizer '{optimizer}' (dhspg or h2spg)")
    inner = unwrap(module)
    if params is None:
        params = [(n, p) for n, p in inner.named_parameters() if p.requires_grad]
    try:
        return build_optimizer(optimizer, params, groups=groups, selector=selector, front="torch", module=inner,
                               total_steps=total_steps, **kwargs)
    except ValueError as exc:
        raise ValueError(f"make_torch_optimizer: {exc}") from None


def train_torch(module: torch.nn.Module, loader: Iterable, loss_fn: Callable, groups: Sequence[Group], *,
                optimizer: str = "dhspg", epochs: int = 1, device: str | torch.device = "cpu",
                selector: Callable[[np.ndarray, int], list[int]] | None = None, progress: bool = True,
                lr_at: Callable[[int, int], float] | None = None,
                on_epoch: Callable[[torch.nn.Module], float | None] | None = None,
                **opt_kwargs: Any) -> TorchTrainResult:
    """Trains ``module`` with DHSPG/H2SPG until exactly the target number of groups is zero.

    Args:
        module: The module (may be DDP-wrapped); trained in place.
        loader: Iterable of ``(inputs, targets)`` batches (a ``DataLoader``); ``inputs`` is a
            tensor, a tuple of tensors (the forward's positional arguments) or a dict (keyword
            arguments).
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor`` (``outputs``: the module's
            output, or its first element / ``logits`` when it returns a tuple / dict).
        groups: Groups from the analysis (tensor names = parameter names).
        optimizer: ``"dhspg"`` or ``"h2spg"``.
        epochs: Passes over ``loader``.
        device: Where to train.
        selector: Validity selector (H2SPG).
        progress: Show a progress bar on stderr (rank 0 only under DDP).
        lr_at: Learning-rate schedule ``lr_at(step, total_steps)`` (e.g.
            :meth:`otoir.train.config.TrainConfig.lr_at`), set before every step; needs a
            sized ``loader``. None: the optimizer's ``lr`` throughout.
        on_epoch: Called after every epoch with the module; returns held-out accuracy for the
            history (it must not change the module's state: recalibrate BatchNorm on a copy;
            training resumes in train mode).
        **opt_kwargs: Optimizer options; ``warmup_steps`` and ``projection_steps`` must fit in
            ``epochs × len(loader)`` steps for the target to be reached.
    """
    from tqdm import tqdm

    module.to(device)
    total = epochs * len(loader) if hasattr(loader, "__len__") else None
    opt = make_torch_optimizer(module, groups, optimizer=optimizer, selector=selector, total_steps=total, **opt_kwargs)
    rank0 = not torch.distributed.is_available() or not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    result = TorchTrainResult(optimizer=opt)
    t0 = time.perf_counter()
    n_groups = opt.layout.num_groups
    if lr_at is not None and total is None:
        raise ValueError("an lr schedule needs a loader with a length (the total number of steps)")
    base_lr = float(opt.param_groups[0]["lr"]) or 1.0
    ratios = [float(pg["lr"]) / base_lr for pg in opt.param_groups]
    for epoch in range(epochs):
        module.train()
        epoch_loss, count = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not (progress and rank0), leave=False)
        for x, y in bar:
            x, y = _to_device(x, device), _to_device(y, device)
            if lr_at is not None:  # the schedule scales every param group alike (their lr ratios kept)
                rate = lr_at(result.steps, total)
                for pg, r in zip(opt.param_groups, ratios):
                    pg["lr"] = rate * r
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(_first_output(_forward(module, x)), y)
            loss.backward()
            opt.step()
            result.steps += 1
            rows = _rows(x)
            epoch_loss += float(loss.detach()) * rows
            count += rows
            bar.set_postfix(loss=f"{epoch_loss / max(count, 1):.4f}", zero=f"{opt.num_zero_groups}/{n_groups}")
        result.losses.append(epoch_loss / max(count, 1))
        entry: dict[str, Any] = {"epoch": epoch + 1, "loss": result.losses[-1],
                                 "lr": float(opt.param_groups[0]["lr"]),
                                 "group_sparsity": opt.num_zero_groups / max(n_groups, 1)}
        if on_epoch is not None:
            entry["accuracy"] = on_epoch(module)
        result.history.append(entry)
    result.zero_groups = opt.zero_groups
    result.seconds = time.perf_counter() - t0
    return result


class _TorchBatches:
    """Epochs of torch batches from an :class:`otoir.data.Binding` (see :func:`torch_batches`)."""

    def __init__(self, binding: Any, size: int | None, steps: int, seed: int) -> None:
        self.binding, self.size, self.steps = binding, size, int(steps)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for i, (xs, y) in enumerate(self.binding.batches(self.size, rng=self.rng)):
            if i >= self.steps:
                break
            yield tuple(torch.from_numpy(x) for x in xs), None if y is None else torch.from_numpy(np.asarray(y))


def torch_batches(binding: Any, size: int | None, *, steps: int, seed: int = 0) -> Iterable:
    """A re-iterable of ``(inputs tuple, labels)`` torch batches for :func:`train_torch`.

    Args:
        binding: Data fitted to the model (:func:`otoir.data.bind`); inputs come in the model's
            input order, which is the module's positional argument order.
        size: Rows per batch (None: a stream's own batches).
        steps: Batches per epoch (``len()``; an epoch stops there).
        seed: Seed of the batch order of array data (one generator for all epochs).
    """
    return _TorchBatches(binding, size, steps, seed)


def _to_device(x: Any, device: str | torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to_device(v, device) for v in x)
    return x


def _forward(module: torch.nn.Module, x: Any) -> Any:
    """``module`` on one batch's inputs: a tensor, positional tuple or keyword dict."""
    if isinstance(x, dict):
        return module(**x)
    if isinstance(x, (tuple, list)):
        return module(*x)
    return module(x)


def _first_output(out: Any) -> Any:
    """The output the loss is computed from: the first of a tuple, ``logits`` of a dict-like output."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "keys"):
        return out["logits"] if "logits" in out.keys() else next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def _rows(x: Any) -> int:
    first = next(iter(x.values())) if isinstance(x, dict) else (x[0] if isinstance(x, (tuple, list)) else x)
    return len(first) if getattr(first, "ndim", 0) else 1


def copy_state_to_model(module: torch.nn.Module, model: ir.Model, aliases: dict[str, str] | None = None) -> int:
    """Copies the module's parameters and buffers into the ONNX model's initializers by name.

    Returns the number of initializers updated.
    """
    from otoir.analyses.groups import set_tensor_array

    state = unwrap(module).state_dict()
    n = 0
    for name, value in model.graph.initializers.items():
        key = name if name in state else (aliases or {}).get(name)
        if key is None or key not in state:
            continue
        arr = state[key].detach().cpu().numpy()
        old = value.const_value
        if old is not None and tuple(old.shape) != arr.shape:
            raise ValueError(f"initializer '{name}' has shape {tuple(old.shape)}, the module's is {arr.shape}")
        set_tensor_array(model, name, arr.astype(old.dtype.numpy() if old is not None else arr.dtype, copy=False))
        n += 1
    return n


@torch.no_grad()
def recalibrate_bn(module: torch.nn.Module, inputs: torch.Tensor | Iterable, batch: int = 256) -> int:
    """Re-estimates every BatchNorm's running statistics from ``inputs`` (no parameter changes).

    Running averages taken while the weights move lag behind the final weights; this replaces
    them by the plain average over batches of the batch statistics (``momentum=None``), as in
    ``torch.optim.swa_utils.update_bn``. ``inputs`` is one tensor (cut into batches of
    ``batch``) or an iterable of batches' inputs (tensors, positional tuples or keyword dicts;
    streamed). Returns the number of BatchNorm modules recalibrated.
    """
    bns = [m for m in unwrap(module).modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    was_training = module.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    device = next(unwrap(module).parameters()).device
    batches = ((inputs[i : i + batch] for i in range(0, len(inputs), batch)) if isinstance(inputs, torch.Tensor)
               else inputs)
    for xb in batches:
        _forward(module, _to_device(xb, device))
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom
    module.train(was_training)
    return len(bns)
