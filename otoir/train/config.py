"""The training configuration: the one source of training defaults and their validation.

:class:`TrainConfig` is used three ways, always with the same defaults:

* the ``train`` pass *is* a ``TrainConfig`` (its pass options are these fields, so
  ``train{lr=0.001 variant=adam}`` parses as before);
* ``otoir-erase`` / ``otoir-prune`` are ``TrainConfig`` s too and hand their fields to the
  ``train`` pass they build;
* :func:`otoir.compress` builds ``otoir-erase`` / ``otoir-prune`` from its keyword arguments.

The target sparsity is validated once, here, by the optimizer library's own
:class:`~otoir.optim.core.SparsitySchedule`, which is also the one place that turns it into a
group count K = ⌊target·G⌋ (:meth:`TrainConfig.target_count`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from otoir.analyses.validity import LATENCY_BATCH_HELP, LATENCY_THREADS_HELP, ROUND_TO_DEFAULT, ROUND_TO_HELP
from otoir.infra.passes import option

if TYPE_CHECKING:
    from otoir.data import DataSource

__all__ = ["TrainConfig", "TrainInputs", "OPTIMIZER_CHOICES", "BACKENDS", "LR_SCHEDULES", "resolve_dataset"]

#: Values of :attr:`TrainConfig.optimizer`.
OPTIMIZER_CHOICES = ("auto", "sgd", "h2spg", "dhspg")
#: Values of :attr:`TrainConfig.backend`.
BACKENDS = ("auto", "torch", "ort")
#: Values of :attr:`TrainConfig.lr_schedule`.
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """How to train: optimizer, base rule, schedule, data, backend.

    Attributes:
        data: Built-in dataset name (``mnist``) or ``.npz`` file (a :class:`TrainInputs`
            may lend any :class:`~otoir.data.DataSource` of that name instead: arrays, a
            ``DataLoader`` or an iterable of batches, see :mod:`otoir.data.sources`).
        optimizer: ``h2spg``, ``dhspg``, ``sgd`` (plain training) or ``auto``: the structured
            optimizer of the groups being sparsified (H2SPG for GeZIGs, DHSPG for ZIGs), plain
            SGD when none are.
        variant: Base update of the structured optimizers: ``sgd``, ``adam`` or ``adamw``
            (OTO suggests lr 1e-3 for Adam).
        epochs: Passes over the training data.
        batch: Batch size (the last incomplete batch of an epoch is skipped).
        lr: Learning rate (the peak of the schedule).
        lr_schedule: ``constant`` or ``cosine`` (annealed from ``lr`` to 0 over the steps after
            the learning-rate warm-up, as OTOv3 trains); see :meth:`TrainConfig.lr_at`.
        lr_warmup: Steps of linear learning-rate warm-up from ``lr / n`` to ``lr``: a fraction
            of all steps if < 1, a step count if >= 1 (0: none).
        momentum: SGD momentum.
        weight_decay: L2 weight decay (decoupled for ``adamw``).
        target_sparsity: Fraction of the groups to zero, in [0, 1); exactly ⌊target·G⌋ are.
        warmup: Steps before the redundant groups are chosen: a fraction of all steps if < 1,
            a step count if >= 1.
        projection: Steps over which they are driven to zero (fraction or count, as warmup).
        lam: Base group-lasso coefficient λ.
        epsilon: Half-space projection threshold ε in [0, 1).
        decay: ``linear`` (default): the redundant groups are scaled down every step of the
            projection window and reach exactly zero at its end, so the kept groups take over
            their work gradually; ``none``: the λ penalty and half-space projection only, and the
            groups still non-zero at the window's end are zeroed at once (DHSPG as published; the
            accuracy can collapse at that step). See :attr:`otoir.optim.core.SparsitySchedule.decay`.
        recalibrate_bn: After training, re-estimate BatchNorm running statistics from the
            training inputs (running averages taken while the weights moved lag behind them).
        backend: ``torch`` (the module the model was exported from, lent as
            :class:`TrainInputs`), ``ort`` (ONNX Runtime training) or ``auto`` (torch when a
            module is lent, ONNX Runtime otherwise).
        seed: Seed of the batch order (and of torch's RNG on the torch backend).
        ignore: Node or parameter name globs (``fnmatch``); groups touching a match are kept
            (never selected), with the reason ``ignored by ignore=PATTERN``.
        max_layer_ratio: At most ``floor(F * n)`` of the ``n`` channel groups of one tensor are
            zeroed (1.0: no cap); the global target is still met exactly, or refused up front.
        history: After every epoch, record held-out accuracy (BatchNorm statistics re-estimated
            on a training subset first, when ``recalibrate_bn``) and the group sparsity; costs one
            evaluation per epoch.
        round_to: The kept channel count of every pruned tensor is a multiple of N, or the full
            count (whole groups: attention heads stay whole). Acts in the selection; K is still
            ⌊target·G⌋ when a valid set of that size exists, else the nearest count that does
            (with a warning). 1: no rounding. ``"auto"`` (the default): multiples of 16 for
            tensors of at least 32 channels, of 8 for 16 to 31, smaller tensors any count: a fixed rule (the same result on every
            machine) that keeps kept counts on the blocked kernels' fast paths — with round-to=1
            a MobileNetV2 pruned to half its FLOPs ran 1.15x to 1.8x *slower* than the full network
            on ONNX Runtime CPU (its depthwise convolutions left the 16-wide NCHWc kernels). ``"runtime"``: N is ONNX Runtime's channel
            block on this machine (16 with AVX-512, 8 with AVX2), and a dense convolution keeping
            more output channels than one work unit of the runtime's threads (4 blocks) keeps
            whole units (:func:`otoir.analyses.validity.controlled_groups`).
        target_latency: Latency-aware selection (:mod:`otoir.analyses.latency`): the redundant
            groups are ranked by importance per unit of measured ONNX Runtime latency saved
            (importance the redundancy rank, and the rank weighed by the FLOPs the group does,
            so that the channels costing most time for their work go first: of the two
            selections, the one keeping more FLOPs) and chosen until the constructed network's
            measured latency is this fraction of the full model's (``target_sparsity`` is then not used); FLOPs stand in, with a remark, when ONNX
            Runtime is not available. 0 (the default): off.
        target_flops: FLOPs-aware selection: the redundant groups are ranked by importance per
            FLOP saved (a segment's collateral included) and the smallest valid selection whose
            constructed sub-network has at most this fraction of the full model's FLOPs
            (:func:`otoir.stats.stats`, both in inference form) is taken (``target_sparsity`` is
            then not used). Not together with ``target_latency``. 0 (the default): off.
        latency_threads: ONNX Runtime intra-op threads ``target_latency`` is measured with (the
            latency table and every timed candidate): the deployment's. 1 by default.
        latency_batch: Batch size ``target_latency`` is measured at (a fixed batch dimension of
            the model wins). At batch 1 a CPU convolution's late, weight-heavy layers cost more
            per multiply-accumulate than its early ones; at larger batches they do not, so the
            selection depends on the batch served. 1 by default.
    """

    data: str = option("mnist", "built-in dataset name (mnist) or .npz file with inputs (or inputs.NAME per model "
                                "input) and labels")
    optimizer: str = option("auto", "auto | sgd | h2spg | dhspg (auto: h2spg for gezig groups, dhspg for zig, else sgd)")
    variant: str = option("sgd", "base update of h2spg/dhspg: sgd | adam | adamw (OTO's lr for adam: 1e-3)")
    epochs: int = option(1, "passes over the training data")
    batch: int = option(64, "batch size")
    lr: float = option(0.05, "learning rate (the peak of the schedule)")
    lr_schedule: str = option("constant", "constant | cosine (annealed to 0 after lr-warmup, as OTOv3 trains)")
    lr_warmup: float = option(0.0, "steps of linear lr warm-up: a fraction of all steps, or a count if >= 1 (0: none)")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(0.0, "L2 weight decay (decoupled for adamw)")
    target_sparsity: float = option(0.5, "fraction of the groups to zero, in [0, 1): exactly floor(target * groups)")
    warmup: float = option(0.25, "steps before the redundant groups are chosen: a fraction of all steps, or a count if >= 1")
    projection: float = option(0.35, "steps over which they are driven to zero: a fraction, or a count if >= 1")
    lam: float = option(1e-3, "base group-lasso coefficient lambda")
    epsilon: float = option(0.0, "half-space projection threshold, in [0, 1)")
    decay: str = option("linear", "how the redundant groups reach zero in the projection window: linear (scaled "
                                  "down every step to exactly 0 at its end) | none (penalty, then projected at once)")
    recalibrate_bn: bool = option(True, "re-estimate BatchNorm running statistics from the training inputs after training")
    backend: str = option("auto", "auto | torch | ort (auto: torch when the caller lends a torch module, else ort)")
    seed: int = option(0, "seed of the batch order (and of torch's RNG)")
    ignore: tuple[str, ...] = option((), "node or parameter name globs whose groups are kept (comma-separated)")
    max_layer_ratio: float = option(1.0, "most fraction of one tensor's channel groups zeroed, in (0, 1] (1: no cap)")
    history: bool = option(False, "record held-out accuracy and group sparsity after every epoch (one evaluation each)")
    round_to: int | str = option(ROUND_TO_DEFAULT, ROUND_TO_HELP)
    target_latency: float = option(0.0, "latency-aware selection: zero groups until the predicted ONNX Runtime "
                                        "latency is this fraction of the full model's, in (0, 1); 0: off "
                                        "(target-sparsity counts groups)")
    target_flops: float = option(0.0, "FLOPs-aware selection: zero the fewest groups (ranked by importance per FLOP "
                                      "saved) that leave the constructed network at most this fraction of the full "
                                      "model's FLOPs, in (0, 1); 0: off (not with target-latency)")
    latency_threads: int = option(1, LATENCY_THREADS_HELP)
    latency_batch: int = option(1, LATENCY_BATCH_HELP)

    def __post_init__(self) -> None:
        from otoir.optim.core import BaseRule, SparsitySchedule

        if self.optimizer not in OPTIMIZER_CHOICES:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZER_CHOICES)}, got '{self.optimizer}'")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got '{self.backend}'")
        if self.epochs < 1 or self.batch < 1:
            raise ValueError("epochs and batch must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup < 0 or self.projection < 0:
            raise ValueError("warmup and projection must be >= 0")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got '{self.lr_schedule}'")
        if not self.lr_warmup >= 0:
            raise ValueError(f"lr-warmup must be >= 0, got {self.lr_warmup}")
        if not (0.0 < self.max_layer_ratio <= 1.0):
            raise ValueError(f"max-layer-ratio must be in (0, 1], got {self.max_layer_ratio}")
        from otoir.analyses.validity import check_cost_target, check_latency_point, check_round_to

        object.__setattr__(self, "round_to", check_round_to(self.round_to, runtime=True))
        check_cost_target(self.target_latency, self.target_flops)
        check_latency_point(self.latency_threads, self.latency_batch)
        if isinstance(self.ignore, str):
            object.__setattr__(self, "ignore", tuple(p.strip() for p in self.ignore.split(",") if p.strip()))
        else:
            object.__setattr__(self, "ignore", tuple(self.ignore))
        if isinstance(self.target_sparsity, int) and not isinstance(self.target_sparsity, bool):
            object.__setattr__(self, "target_sparsity", float(self.target_sparsity))
        try:  # the optimizer library's own checks: one validation of the target, ε, the base rule
            BaseRule(variant=self.variant, momentum=self.momentum, weight_decay=self.weight_decay)
            SparsitySchedule(target=self.target_sparsity, epsilon=self.epsilon, decay=self.decay)
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc).replace("target", "target-sparsity", 1)) from None

    # -- derived values: each computed here and nowhere else ----------------------------------
    @property
    def cost_target(self) -> tuple[str, float] | None:
        """``(option, fraction)`` of the cost target that chooses the group count, or None
        (``target_sparsity`` counts groups)."""
        from otoir.analyses.validity import check_cost_target

        return check_cost_target(self.target_latency, self.target_flops)

    def structured_optimizer(self, group_kind: str | None) -> str:
        """The optimizer to build for groups of ``group_kind`` (``gezig``, ``zig`` or None)."""
        if self.optimizer != "auto":
            return self.optimizer
        return {"gezig": "h2spg", "zig": "dhspg"}.get(group_kind or "", "sgd")

    def schedule_steps(self, total: int) -> tuple[int, int]:
        """(warm-up steps, projection steps) in a run of ``total`` steps.

        Raises:
            ValueError: They do not fit in ``total`` steps.
        """
        warm = int(self.warmup) if self.warmup >= 1 else int(self.warmup * total)
        proj = int(self.projection) if self.projection >= 1 else int(self.projection * total)
        if warm + max(proj, 1) > total:
            raise ValueError(f"warm-up ({warm}) + projection ({proj}) steps exceed the {total} training steps")
        return warm, proj

    def lr_warmup_steps(self, total: int) -> int:
        """Steps of linear learning-rate warm-up in a run of ``total`` steps (at most ``total``)."""
        n = int(self.lr_warmup) if self.lr_warmup >= 1 else int(self.lr_warmup * total)
        return max(0, min(n, total))

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate of step ``step`` (0-based) of ``total``: the one schedule both backends use.

        Linear warm-up over the first :meth:`lr_warmup_steps` steps (``lr·(step+1)/n``), then
        ``lr`` (``constant``) or ``lr·½(1 + cos(π·t/T))`` with ``t`` the steps since the warm-up
        and ``T`` those left after it (``cosine``; the last step's rate is small but not 0).
        """
        import math

        warm = self.lr_warmup_steps(total)
        if step < warm:
            return self.lr * (step + 1) / warm
        if self.lr_schedule == "constant":
            return self.lr
        span = max(total - warm, 1)
        t = min(step - warm, span)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * t / span))

    def target_count(self, num_groups: int) -> int:
        """K = ⌊target·G⌋, the number of groups training zeroes (the optimizers use the same rule)."""
        from otoir.optim.core import SparsitySchedule

        return SparsitySchedule(target=self.target_sparsity).target_count(num_groups)

    def optimizer_kwargs(self, total: int) -> dict[str, Any]:
        """Keyword arguments of the structured optimizers (numpy and torch front ends alike)."""
        warm, proj = self.schedule_steps(total)
        return dict(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, variant=self.variant,
                    target=self.target_sparsity, warmup_steps=warm, projection_steps=proj, epsilon=self.epsilon,
                    lam=self.lam, decay=self.decay)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The configuration fields, in order."""
        return tuple(f.name for f in dataclasses.fields(TrainConfig))

    @classmethod
    def of(cls, obj: Any) -> TrainConfig:
        """The plain configuration held by ``obj`` (a pass deriving from TrainConfig, say)."""
        return TrainConfig(**config_values(obj))


def config_values(obj: Any) -> dict[str, Any]:
    """``{field: value}`` of the TrainConfig fields of ``obj``."""
    return {n: getattr(obj, n) for n in TrainConfig.field_names()}


@dataclass(frozen=True)
class TrainInputs:
    """Non-IR training inputs a caller lends the ``train`` pass.

    Pass it as ``PassManager.run(model, resources={TrainInputs.KEY: TrainInputs(...)})``.

    Attributes:
        module: The ``torch.nn.Module`` the model was exported from (the torch backend trains
            it in place and copies its values into the model).
        loss_fn: Torch loss ``loss_fn(outputs, labels)`` (default: cross-entropy).
        datasets: Data sources (:class:`~otoir.data.DataSource`: arrays, a ``DataLoader``, an
            iterable of batches); the ``train`` pass uses the one whose ``name`` equals its
            ``data`` option instead of loading that name.
    """

    KEY = "train"

    module: Any = None
    loss_fn: Callable | None = None
    datasets: Sequence[DataSource] = field(default_factory=tuple)


def resolve_dataset(name: str, resources: Mapping[str, Any]) -> DataSource:
    """The data ``name``: a source lent in ``resources`` (:class:`TrainInputs`), or loaded.

    Raises:
        DatasetError: Not lent, and not a built-in name or a readable ``.npz`` file.
    """
    from otoir.data import load_dataset

    lent = resources.get(TrainInputs.KEY)
    for ds in getattr(lent, "datasets", ()):
        if ds.name == name:
            return ds
    return load_dataset(name)
