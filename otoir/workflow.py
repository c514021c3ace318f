"""The torch user's own training loop: analyse, get an optimizer, train, construct.

Shaped like the public OTO library (``OTO(model, dummy_input)`` → ``oto.dhspg(...)`` →
``oto.construct_subnet()``)::

    job = otoir.analyze(model, example_inputs, mode="prune", target_sparsity=0.5)
    print(job.groups_table())                  # what can be removed, and why not
    opt = job.optimizer(total_steps=N, lr=0.1) # a torch.optim.Optimizer (DHSPG / H2SPG)
    ...                                        # your loop: loss.backward(); opt.step(); scheduler.step()
    out = job.construct()                      # out.module: the compressed torch module
                                               # out.onnx: the ONNX sub-network; out.report

The analysis and the construction are the named pipeline ``otoir-prune{…}`` / ``otoir-erase{…}``
(:mod:`otoir.passes.otoir_erase`) split around its ``train`` step: the passes before it run on
the export, your loop replaces it, the passes after it build the sub-network. The compressed
torch module is a deep copy of your module with the removed channels sliced out
(:mod:`otoir.frontends.torch_slice`) and is checked against the ONNX sub-network in ONNX
Runtime. Erasing mode removes whole branches, which slicing cannot do: there
``out.module`` raises :class:`~otoir.frontends.torch_slice.TorchSliceError` and the ONNX
sub-network is the result.

Example (a small ResNet, two param groups, a cosine schedule; a few steps):

>>> import torch, otoir
>>> from otoir.zoo import build
>>> _ = torch.manual_seed(0)
>>> model, x = build("resnet_basic", width=4, layers=(1, 1, 1, 1))   # x: an example batch
>>> job = otoir.analyze(model, x, mode="prune", target_sparsity=0.5)
>>> job.num_groups > 0
True
>>> decay = [p for n, p in model.named_parameters() if p.dim() > 1]
>>> no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
>>> steps = 8
>>> opt = job.optimizer([{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
...                     total_steps=steps, lr=0.05)
>>> sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
>>> for _ in range(steps):
...     xb, yb = torch.randn(8, *x.shape[1:]), torch.randint(0, 10, (8,))
...     opt.zero_grad()
...     torch.nn.functional.cross_entropy(model(xb), yb).backward()
...     _ = opt.step()
...     sched.step()
>>> opt.num_zero_groups == job.target_count
True
>>> out = job.construct()
>>> out.torch_max_rel_diff <= 1e-4, out.report.verified
(True, True)
>>> sum(p.numel() for p in out.module.parameters()) == out.num_params < sum(p.numel() for p in model.parameters())
True
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from otoir.errors import OtoirError

if TYPE_CHECKING:  # pragma: no cover
    import onnx_ir as ir
    import torch

    from otoir.report import CompressReport

__all__ = ["Compression", "Constructed", "analyze", "torch_subnetwork"]


def analyze(module: torch.nn.Module, example_inputs: Any, *, mode: str = "prune", target_sparsity: float = 0.5,
            ignore: Sequence[str] | str = (), max_layer_ratio: float = 1.0, round_to: int | str = "auto") -> Compression:
    """Exports ``module`` and finds its removable groups (the own-loop API's first step).

    Args:
        module: The torch module you will train (not copied: your loop trains it in place).
        example_inputs: A tensor or a tuple of tensors, the forward's positional arguments
            (give token models an explicit ``attention_mask``).
        mode: ``prune`` (channel groups, DHSPG) or ``erase`` (whole segments, H2SPG; the result
            is ONNX only, see :meth:`Compression.construct`).
        target_sparsity: Fraction of the groups to remove; exactly ``⌊target·#groups⌋`` are.
        ignore: Node or parameter name globs (``fnmatch``) whose groups are kept.
        max_layer_ratio: At most ``floor(F·n)`` of the ``n`` channel groups of one tensor are removed.
        round_to: Kept channel count of every pruned tensor a multiple of N, or all (``auto``, the
            default: 16 for tensors of at least 32 channels, 8 for 16 to 31; ``1``: no rounding; ``runtime``; see
            :class:`otoir.train.config.TrainConfig`). K becomes the nearest reachable count when
            ``⌊target·#groups⌋`` is not (:attr:`Compression.target_count`).

    Raises:
        OtoirError: Bad arguments, an export otoir cannot use, or no prunable group.
    """
    return Compression(module, example_inputs, mode=mode, target_sparsity=target_sparsity, ignore=ignore,
                       max_layer_ratio=max_layer_ratio, round_to=round_to)


@dataclass
class Constructed:
    """What :meth:`Compression.construct` returns.

    Attributes:
        onnx: The ONNX sub-network (deployment form: BatchNorm folded; same outputs).
        full: The trained full model as ONNX (inference form), the reference of the report.
        report: Parameters, FLOPs, latency of both and their output agreement.
        removed_group_ids: Ids of the groups cut out.
        kept_groups: ``{id: reason}`` of zero groups that were kept (e.g. a tensor's last channel).
        num_params: Parameters of the compressed torch module as the ONNX sub-network counts
            them (its initializers that are module parameters, before BatchNorm folding).
        torch_max_rel_diff: ``max|y_onnx − y_torch| / max|y_onnx|`` of the compressed torch
            module against the ONNX sub-network (None when there is no torch module).
        slicing: ``{module name: {attribute: new value}}`` of the modules changed.
        module_error: Why there is no compressed torch module (None when there is one).
    """

    onnx: ir.Model
    full: ir.Model
    report: CompressReport
    removed_group_ids: list[str] = field(default_factory=list)
    kept_groups: dict[str, str] = field(default_factory=dict)
    num_params: int | None = None
    torch_max_rel_diff: float | None = None
    slicing: dict[str, dict[str, Any]] = field(default_factory=dict)
    module_error: str | None = None
    _module: Any = field(default=None, repr=False)

    @property
    def module(self) -> torch.nn.Module:
        """The compressed torch module (a sliced deep copy of yours, eval mode).

        Raises:
            TorchSliceError: It could not be built verifiably (``module_error`` says why).
        """
        if self._module is None:
            from otoir.frontends.torch_slice import TorchSliceError

            raise TorchSliceError(self.module_error or "no compressed torch module")
        return self._module


class Compression:
    """One own-loop compression of a torch module: groups, optimizer, construction.

    Build it with :func:`analyze`. Attributes: ``module`` (yours), ``mode``, ``groups`` (the
    prunable groups, optimizer order), ``onnx`` (the analysed export), ``pipeline`` (the named
    pipeline whose steps run here).
    """

    def __init__(self, module: torch.nn.Module, example_inputs: Any, *, mode: str = "prune",
                 target_sparsity: float = 0.5, ignore: Sequence[str] | str = (), max_layer_ratio: float = 1.0,
                 round_to: int | str = "auto") -> None:
        import torch

        import otoir
        from otoir.infra import PassManager
        from otoir.infra.analysis import AnalysisManager
        from otoir.infra.registry import get_pass
        from otoir.optim.from_groups import check_valid_target, groups_for
        from otoir.train.torch_backend import unwrap

        if mode not in ("prune", "erase"):
            raise OtoirError(f"mode must be 'prune' or 'erase', not '{mode}'")
        if not isinstance(module, torch.nn.Module):
            raise OtoirError(f"analyze: expected a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.mode = mode
        self.example_inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
        try:
            self.pipeline = get_pass(f"otoir-{mode}")(target_sparsity=target_sparsity, ignore=ignore,
                                                      max_layer_ratio=max_layer_ratio, round_to=round_to,
                                                      backend="torch", quiet=True)
        except (TypeError, ValueError) as exc:
            raise OtoirError(f"analyze: {exc}") from None
        passes = self.pipeline.children()
        cut = [p.name for p in passes].index("train")
        self._analysis_passes, self._construction_passes = passes[:cut], passes[cut + 1:]
        self.onnx = otoir.load(unwrap(module), self.example_inputs)
        self._analyses = AnalysisManager(self.onnx)
        PassManager(self._analysis_passes).run(self.onnx, analyses=self._analyses)
        kind = self.pipeline.group_kind
        try:
            self.groups = groups_for(self.onnx, kind, self._analyses, ignore=ignore, max_layer_ratio=max_layer_ratio,
                                     round_to=self.pipeline.round_to)
        except ValueError as exc:
            raise OtoirError(f"analyze: {exc}") from None
        if not self.groups:
            raise OtoirError(f"analyze: the model has no prunable {kind} groups: nothing to compress "
                             f"({self.groups_table(only_prunable=False).splitlines()[0]})")
        try:  # under round-to, the nearest reachable count (the optimizer zeroes the same)
            self.target_count = check_valid_target(self.groups, target_sparsity)
        except ValueError as exc:
            raise OtoirError(f"analyze: {exc}") from None
        self._optimizer: Any = None

    @property
    def num_groups(self) -> int:
        """Prunable groups (the optimizer's)."""
        return len(self.groups)

    def groups_table(self, *, only_prunable: bool = False, collapse: bool = True) -> str:
        """The groups as a table (the ``print-groups`` pass's format): id, kind, tensors,
        parameters, FLOPs, and "yes" or why a group is not prunable.

        Args:
            only_prunable: Leave out the groups that cannot be removed.
            collapse: One row for consecutive channel groups of one tensor with equal figures.
        """
        from otoir.analyses.validity import controlled_groups
        from otoir.passes.print_groups import format_groups

        if self.mode == "prune":
            from otoir.analyses.zig import ChannelGroups

            allg = self._analyses.get(ChannelGroups).groups
        else:
            from otoir.analyses.gezig import GeZIGPartition

            allg = self._analyses.get(GeZIGPartition).groups
        shown = controlled_groups(allg, self.onnx, ignore=self.pipeline.ignore,
                                  max_layer_ratio=self.pipeline.max_layer_ratio)
        if only_prunable:
            shown = [g for g in shown if g.prunable]
        return format_groups(list(shown), f"{self.pipeline.group_kind} groups", collapse=collapse)

    def optimizer(self, params: Any = None, *, total_steps: int, lr: float | None = None, variant: str | None = None,
                  momentum: float | None = None, weight_decay: float | None = None, warmup: float | None = None,
                  projection: float | None = None, **options: Any) -> torch.optim.Optimizer:
        """A ``torch.optim.Optimizer`` for your loop: H2SPG (erase) or DHSPG (prune).

        Defaults are :class:`otoir.train.config.TrainConfig`'s (lr 0.05, SGD momentum 0.9,
        warm-up 25 % and projection 35 % of ``total_steps``). Nothing is zeroed before the
        warm-up ends; exactly :attr:`target_count` groups are zero after the projection window.

        Args:
            params: Param groups as for any torch optimizer (``[{"params": [...], "weight_decay": 0}]``,
                tensors of the module), or None for every trainable parameter. ``lr``,
                ``momentum``, ``dampening``, ``weight_decay``, ``betas`` and ``eps`` may differ
                per group; each group's lr is used (LR schedulers work on any group).
            total_steps: Optimizer steps your loop will take (required).
            lr: Default learning rate.
            variant: Base update: ``sgd``, ``adam`` or ``adamw``.
            momentum: SGD momentum.
            weight_decay: Default weight decay (decoupled for ``adamw``).
            warmup: Steps before the redundant groups are chosen: a fraction of ``total_steps``
                (a count if >= 1).
            projection: Steps over which they are driven to zero (fraction or count).
            **options: Further optimizer options (``lam``, ``epsilon``, ``betas``, ...; see
                :mod:`otoir.optim.options`).

        Raises:
            OtoirError: Bad options, or windows that do not fit in ``total_steps``.
        """
        from otoir.train.config import TrainConfig
        from otoir.train.torch_backend import make_torch_optimizer

        cfg = self.pipeline
        defaults = TrainConfig()
        kw = dict(lr=defaults.lr if lr is None else lr, variant=variant or defaults.variant,
                  momentum=defaults.momentum if momentum is None else momentum,
                  weight_decay=defaults.weight_decay if weight_decay is None else weight_decay,
                  warmup=defaults.warmup if warmup is None else warmup,
                  projection=defaults.projection if projection is None else projection,
                  target=cfg.target_sparsity, lam=defaults.lam, epsilon=defaults.epsilon)
        if kw["variant"] != "sgd" and momentum is None:
            kw.pop("momentum")
        kw.update(options)
        try:
            self._optimizer = make_torch_optimizer(self.module, self.groups, optimizer=cfg.structured_optimizer(
                cfg.group_kind), total_steps=total_steps, params=params, **kw)
        except (TypeError, ValueError) as exc:
            raise OtoirError(f"optimizer: {exc}") from None
        return self._optimizer

    def construct(self, *, bn_inputs: Any = None, verify_inputs: Any = None, tolerance: float = 1e-4,
                  latency_runs: int = 0) -> Constructed:
        """Builds the ONNX sub-network and the compressed torch module from the trained module.

        The module's current values are copied into the analysed export, the construction
        steps of the named pipeline run (``to-inference``, ``prune-channels`` or
        ``eliminate-dead-branches``, ``cleanup``, ``check``, ``to-deployment``), and a deep copy
        of the module is sliced alike and checked against the ONNX sub-network in ONNX Runtime.

        Args:
            bn_inputs: Training inputs (one tensor) to re-estimate BatchNorm running statistics
                from first (:func:`otoir.train.torch_backend.recalibrate_bn`; changes your
                module's running statistics, not its parameters). None: keep them.
            verify_inputs: Inputs (a tensor or tuple, batch first) for the torch/ONNX check;
                default: the example inputs.
            tolerance: Allowed ``max|difference| / output scale``.
            latency_runs: Latency measurements per model in the report (0: none).

        Raises:
            OtoirError: The ONNX sub-network's outputs differ from the trained model's.
        """
        from otoir.api import clone_model
        from otoir.infra import PassManager
        from otoir.report import build_report
        from otoir.train.torch_backend import copy_state_to_model, recalibrate_bn, unwrap

        if bn_inputs is not None:
            recalibrate_bn(self.module, bn_inputs)
        model = clone_model(self.onnx)
        copy_state_to_model(self.module, model)
        passes = self._construction_passes
        cut = [p.name for p in passes].index("to-inference") + 1
        pm_results = []
        pm_results.append(PassManager(passes[:cut]).run(model))
        full = clone_model(model)
        last = [p.name for p in passes].index("to-deployment")
        pm_results.append(PassManager(passes[cut:last]).run(model))
        inference_sub = clone_model(model)
        pm_results.append(PassManager(passes[last:]).run(model))
        zero = self._zero_mask(full)
        removed, kept = self._removed(zero, pm_results)
        inputs = self.example_inputs if verify_inputs is None else (
            tuple(verify_inputs) if isinstance(verify_inputs, (tuple, list)) else (verify_inputs,))
        feeds = _feeds(model, inputs)
        details = {"mode": self.mode, "groups": f"{len(removed)} of {len(self.groups)} {self.pipeline.group_kind} "
                                                f"groups removed (target {self.pipeline.target_sparsity:g} -> "
                                                f"{self.target_count})"}
        if kept:
            details["kept"] = "; ".join(f"{gid}: {why}" for gid, why in sorted(kept.items()))
        if int(zero.sum()) < self.target_count:
            details["warning"] = (f"only {int(zero.sum())} of the {self.target_count} target groups are zero: "
                                  "training stopped before the projection window ended (see total_steps)")
        report = build_report(full, model, verify_inputs=feeds, tolerance=tolerance, latency_runs=latency_runs,
                              details=details)
        if report.verified is False:
            raise OtoirError(f"the ONNX sub-network's outputs differ from the trained model's: max relative "
                             f"difference {report.max_rel_diff:.3g} > {tolerance:g}")
        by_id = {g.id: g for g in self.groups}
        sliced, error, diff, changes = torch_subnetwork(unwrap(self.module), [by_id[i] for i in removed], model,
                                                        inputs, tolerance)
        out = Constructed(onnx=model, full=full, report=report, removed_group_ids=removed, kept_groups=kept,
                          num_params=_module_params(inference_sub, unwrap(self.module)), torch_max_rel_diff=diff,
                          slicing=changes, module_error=error, _module=sliced)
        if sliced is not None:
            report.details["torch module"] = (f"{sum(p.numel() for p in sliced.parameters()):,} parameters, "
                                              f"max rel. difference to the ONNX sub-network {diff:.2g}")
        else:
            report.details["torch module"] = f"none: {error}"
        return out

    def _zero_mask(self, model: ir.Model) -> np.ndarray:
        from otoir.analyses.groups import zero_mask

        return zero_mask(model, self.groups)

    def _removed(self, zero: np.ndarray, runs: list[Any]) -> tuple[list[str], dict[str, str]]:
        """Removed ids / kept reasons, by the named pipeline's own rule (``_Compress._removed``)."""

        class _Ctx:  # what _Compress._removed reads from a pass context
            @staticmethod
            def earlier_results(key: str) -> list[Any]:
                return [r for run in runs for r in run.results_of(key)]

        train = {"groups": self.groups, "zero-mask": zero}
        out = self.pipeline._removed(_Ctx(), train)
        return list(out["removed"]), dict(out["kept"])


def _flat_tensors(obj: Any) -> list[Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _flat_tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _flat_tensors(v)]
    return []


def _feeds(model: ir.Model, inputs: Sequence[Any]) -> dict[str, np.ndarray]:
    from otoir.runtime import data_inputs

    names = [v.name for v in data_inputs(model)]
    arrays = [t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t) for t in inputs]
    if len(names) > len(arrays):
        raise OtoirError(f"the ONNX sub-network has {len(names)} inputs, {len(arrays)} example inputs were given")
    return dict(zip(names, arrays[: len(names)], strict=True))


def _module_params(inference_sub: ir.Model, module: Any) -> int:
    """Parameters of the module as the inference-form sub-network holds them (by state_dict name)."""
    names = {n for n, _ in module.named_parameters()}
    return int(sum(v.const_value.size for n, v in inference_sub.graph.initializers.items()
                   if n in names and v.const_value is not None))


def torch_subnetwork(module: torch.nn.Module, removed: Sequence[Any], sub: ir.Model, inputs: Sequence[Any],
                     tolerance: float = 1e-4) -> tuple[Any, str | None, float | None, dict[str, dict[str, Any]]]:
    """A deep copy of ``module`` with the ``removed`` groups sliced out, checked against ``sub``.

    Args:
        module: The trained module (not changed).
        removed: The groups the ONNX construction removed.
        sub: The ONNX sub-network.
        inputs: Inputs (tensors, batch first) the two are compared on.
        tolerance: Allowed ``max|y_onnx − y_torch| / max|y_onnx|``.

    Returns:
        ``(module or None, error or None, max relative difference or None, changes)``: the
        error is one line naming the module that could not be sliced verifiably.
    """
    import torch

    from otoir.frontends.torch_slice import TorchSliceError, slice_module
    from otoir.runtime import max_rel_diff, run_model

    work = copy.deepcopy(module).eval()
    try:
        changes = slice_module(work, removed)
    except TorchSliceError as exc:
        return None, str(exc), None, {}
    with torch.no_grad():
        got = [t.detach().float().cpu().numpy() for t in _flat_tensors(work(*inputs))]
    want = run_model(sub, _feeds(sub, inputs))
    diff = max_rel_diff(want, got) if len(got) == len(want) else float("inf")
    if diff > tolerance:
        names = ", ".join(sorted(changes)[:3]) or "none"
        return None, (f"the sliced torch module's outputs differ from the ONNX sub-network's ({diff:.3g} > "
                      f"{tolerance:g}; modules sliced: {names}); the ONNX sub-network is still available"), diff, changes
    return work, None, diff, changes
