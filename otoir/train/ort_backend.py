"""ONNX Runtime training backend: the model stays ONNX; a numpy optimizer does the update.

:class:`OrtTrainer` generates onnxruntime-training artifacts for an onnx-ir model into a
temporary folder, runs forward+backward steps with ``onnxruntime.training.api.Module``, reads
every trainable parameter's gradient, lets an optimizer (see
:mod:`otoir.train.optimizers`) update the parameters in place on ORT's buffers, and finally
writes the trained parameters *and* BatchNorm running statistics back into the model's
initializers (same names, shapes and dtypes).

BatchNorm running statistics. The training graph updates them itself: ORT's training-mode
``BatchNormalization`` writes ``momentum * old + (1 - momentum) * batch`` into the checkpoint
state at every step (checked with onnxruntime-training 1.19.2: exactly one update per step).
It uses the *biased* batch variance, as the ONNX spec says, whereas torch uses the unbiased one
(``n / (n - 1)`` with ``n`` = elements per channel). With ``bn_unbiased_var=True`` (default) the
trainer corrects the variance after every step, so the statistics equal torch's. The eval model
of the artifacts is not used (it fails to load with training-mode BatchNorm); evaluate the
trained model with :func:`evaluate`, which runs its inference form
(:func:`otoir.train.inference.to_inference`) in an ``InferenceSession``.

Known traps handled here (see ``research/environment-notes.md`` §3): LayerNormalization
nodes get their Mean / InvStdDev outputs (fix A), Dropout nodes their mask output; no eval or optimizer model is loaded (fixes
B and C are not needed); gradients accumulate, so ``lazy_reset_grad`` runs before every step.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_ir as ir

from otoir import runtime
from otoir.runtime import EvalResult
from otoir.train.optimizers import Optimizer, group_sparsity
from otoir.train.ort_common import (
    LOSSES,
    BackendUnavailable,
    TrainingError,
    _as_list,
    _captured_stderr,
    _prep,
    _require_ort,
    batchnorm_stats,
    require_ort_training,
    trainable_names,
)
from otoir.train.ort_eval import evaluate, recalibrate_bn

if TYPE_CHECKING:
    from otoir.data import Binding

__all__ = [
    "BackendUnavailable",
    "TrainingError",
    "LOSSES",
    "OrtTrainer",
    "EvalResult",
    "TrainHistory",
    "evaluate",
    "trainable_names",
    "batchnorm_stats",
    "train_ort",
    "require_ort_training",
    "recalibrate_bn",
]

# ---------------------------------------------------------------------------------------------
# The trainer


class OrtTrainer:
    """Trains an onnx-ir model with onnxruntime-training and a numpy optimizer.

    Args:
        model: The model (a training-mode export). It is not modified until :meth:`write_back`.
        loss: ``cross-entropy`` (labels: int64 class indices), ``mse`` (labels: float targets of
            the output's shape; int labels are one-hot encoded) or ``output`` (the output
            already is a scalar loss; no labels).
        output: Name of the graph output the loss is computed from (default: the first). Other
            graph outputs are dropped from the training graph.
        trainable: Names of the initializers to train (default :func:`trainable_names`).
        threads: Intra-op threads of the ORT session (default: ORT's choice).
        bn_unbiased_var: Correct BatchNorm running variances to torch's unbiased estimate.
        batch_size: Fix the symbolic batch dimension of the training graph to this size (every
            step must then use it). Required for models with ``AveragePool``: onnxruntime-training
            1.19.2's AveragePool gradient crashes the process (SIGFPE) on a symbolic batch.
        workdir: Folder for the artifacts (default: a temporary folder removed by :meth:`close`).

    Raises:
        BackendUnavailable: onnxruntime-training is not installed.
        TrainingError: Bad loss/output names, nothing trainable, or artifact generation failed.
    """

    def __init__(
        self,
        model: ir.Model,
        *,
        loss: str = "cross-entropy",
        output: str | None = None,
        trainable: Sequence[str] | None = None,
        threads: int | None = None,
        bn_unbiased_var: bool = True,
        batch_size: int | None = None,
        workdir: str | None = None,
    ) -> None:
        training = require_ort_training()
        import onnxruntime as ort

        if loss not in LOSSES:
            raise TrainingError(f"unknown loss '{loss}' (choose one of: {', '.join(LOSSES)})")
        self.model = model
        self.loss = loss
        self.bn_unbiased_var = bn_unbiased_var
        outputs = [v.name for v in model.graph.outputs]
        if not outputs:
            raise TrainingError("the model has no graph output")
        if output is None:
            output = outputs[0]
        if output not in outputs:
            raise TrainingError(f"the model has no output '{output}' (outputs: {', '.join(outputs)})")
        self.output = output
        self.batch_size = int(batch_size) if batch_size else None
        if self.batch_size is None:
            pools = [n.name for n in model.graph if n.op_type == "AveragePool"]
            if pools:
                raise TrainingError(
                    f"the model has AveragePool ({pools[0]!r}): give batch_size= (onnxruntime-training's "
                    "AveragePool gradient crashes the process on a symbolic batch dimension)"
                )
        inits = model.graph.initializers
        self.trainable = list(trainable) if trainable is not None else trainable_names(model)
        missing = [n for n in self.trainable if n not in inits]
        if missing:
            raise TrainingError(f"trainable names are not initializers: {', '.join(missing[:5])}")
        if not self.trainable:
            raise TrainingError("the model has no trainable initializer")
        self.frozen = [n for n in inits if n not in set(self.trainable)]
        self._bn = [
            (mean, var, node.attributes["momentum"].as_float() if "momentum" in node.attributes else 0.9,
             node.inputs[0], node.inputs[1])
            for node, mean, var in batchnorm_stats(model)
        ]
        self.buffers = [n for m, v, *_ in self._bn for n in (m, v)]
        self.input_names = [v.name for v in model.graph.inputs if v.name not in inits]
        self._n_per_channel: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        self._owns_dir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="otoir-ort-")
        os.makedirs(self.workdir, exist_ok=True)
        self.steps = 0

        proto = self._training_proto()
        loss_arg = {
            "cross-entropy": training.artifacts.LossType.CrossEntropyLoss,
            "mse": training.artifacts.LossType.MSELoss,
            "output": None,
        }[loss]
        ort.set_default_logger_severity(3)
        with _captured_stderr() as log:
            try:
                training.artifacts.generate_artifacts(
                    proto,
                    requires_grad=self.trainable,
                    frozen_params=self.frozen,
                    loss=loss_arg,
                    optimizer=None,
                    artifact_directory=self.workdir,
                )
            except Exception as exc:  # onnxruntime raises several types
                tail = "\n".join(log().strip().splitlines()[-5:])
                self.close()
                raise TrainingError(f"generating the ORT training artifacts failed: {exc}\n{tail}".rstrip()) from exc
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        self.state = training.api.CheckpointState.load_checkpoint(os.path.join(self.workdir, "checkpoint"))
        try:
            self.module = training.api.Module(
                os.path.join(self.workdir, "training_model.onnx"), self.state, device="cpu", session_options=so
            )
        except Exception as exc:
            text = str(exc)
            detail = text[text.find("NOT_IMPLEMENTED"):] if "NOT_IMPLEMENTED" in text else text[-500:]
            self.close()
            raise TrainingError(
                f"onnxruntime-training cannot train this model on CPU: {detail.strip()} "
                "(onnxruntime-training 1.19.2 has no CPU gradient kernel for e.g. ConvTranspose and Resize; "
                "use the torch backend for such models)"
            ) from exc
        self.module.train()
        self._label_shape = None

    # -- artifacts -----------------------------------------------------------------------
    def _training_proto(self) -> onnx.ModelProto:
        proto = ir.to_proto(self.model)
        proto.ir_version = min(proto.ir_version or 10, 10)
        g = proto.graph
        keep = [o for o in g.output if o.name == self.output]
        del g.output[:]
        g.output.extend(keep)
        if self.batch_size is not None:
            self._fix_batch_dim(g)
        for i, n in enumerate(g.node):  # fix A: LayerNorm gradients need Mean / InvStdDev outputs
            if n.op_type == "LayerNormalization" and n.domain in ("", "ai.onnx") and len(n.output) == 1:
                n.output.extend([f"{n.name or 'ln'}_{i}_otoir_mean", f"{n.name or 'ln'}_{i}_otoir_invstd"])
            # the Dropout gradient needs its mask output (torch's attention dropout exports without it)
            if n.op_type == "Dropout" and n.domain in ("", "ai.onnx") and len(n.output) == 1:
                n.output.append(f"{n.name or 'dropout'}_{i}_otoir_mask")
        return proto

    def _fix_batch_dim(self, g: onnx.GraphProto) -> None:
        """Replaces the symbolic batch dimension (dim 0 of the data inputs) by ``batch_size``."""
        inits = {t.name for t in g.initializer}
        symbols = {
            vi.type.tensor_type.shape.dim[0].dim_param
            for vi in g.input
            if vi.name not in inits
            and vi.type.tensor_type.HasField("shape")
            and len(vi.type.tensor_type.shape.dim) > 0
            and vi.type.tensor_type.shape.dim[0].dim_param
        }
        for vi in [*g.input, *g.output, *g.value_info]:
            if not vi.type.tensor_type.HasField("shape"):
                continue
            for d in vi.type.tensor_type.shape.dim:
                if d.dim_param and d.dim_param in symbols:
                    d.ClearField("dim_param")
                    d.dim_value = self.batch_size  # type: ignore[assignment]

    # -- parameters ----------------------------------------------------------------------
    def params(self) -> dict[str, np.ndarray]:
        """Writable numpy views of the trainable parameters on ORT's buffers (write in place)."""
        ps = self.state.parameters
        return {n: ps[n].data for n in self.trainable}

    def grads(self) -> dict[str, np.ndarray]:
        """The gradients of the last :meth:`forward_backward` (views; copy to keep them)."""
        ps = self.state.parameters
        return {n: ps[n].grad for n in self.trainable}

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the trainable parameters and the BatchNorm running statistics."""
        ps = self.state.parameters
        return {n: np.array(ps[n].data, copy=True) for n in [*self.trainable, *self.buffers]}

    def load(self, values: Mapping[str, np.ndarray]) -> None:
        """Copies ``values`` (name -> array of the same shape) into ORT's buffers."""
        ps = self.state.parameters
        for n, v in values.items():
            dst = ps[n].data
            dst[...] = np.asarray(v, dtype=dst.dtype).reshape(dst.shape)

    # -- steps ---------------------------------------------------------------------------
    def _labels(self, labels: np.ndarray | None) -> list[np.ndarray]:
        if self.loss == "output":
            return []
        if labels is None:
            raise TrainingError(f"loss '{self.loss}' needs labels")
        y = np.asarray(labels)
        if self.loss == "cross-entropy":
            if not np.issubdtype(y.dtype, np.integer):
                raise TrainingError("cross-entropy needs integer class labels")
            return [np.ascontiguousarray(y.astype(np.int64, copy=False))]
        if np.issubdtype(y.dtype, np.integer):  # mse on class labels: one-hot targets
            k = self._num_outputs_classes()
            onehot = np.zeros((y.shape[0], k), np.float32)
            onehot[np.arange(y.shape[0]), y] = 1.0
            return [onehot]
        return [_prep(y)]

    def _num_outputs_classes(self) -> int:
        for v in self.model.graph.outputs:
            if v.name == self.output and v.shape is not None and len(v.shape) == 2 and isinstance(v.shape[1], int):
                return int(v.shape[1])
        raise TrainingError("mse with integer labels needs an output of static shape (N, classes)")

    def _bn_counts(self, xs: list[np.ndarray]) -> list[int]:
        """Elements per channel of every training-mode BatchNorm input, for these input shapes."""
        key = tuple(tuple(x.shape) for x in xs)
        got = self._n_per_channel.get(key)
        if got is not None:
            return got
        _require_ort()
        m = self.model.clone()
        wanted = [x_val.name for _, _, _, x_val, _ in self._bn]
        values = {v.name: v for n in m.graph for v in n.outputs}
        values.update({v.name: v for v in m.graph.inputs})
        outs = list(m.graph.outputs)
        for name in wanted:
            v = values.get(name)
            if v is not None and v not in outs:
                m.graph.outputs.append(v)
                outs.append(v)
        sess = runtime.session(m)
        names = [o.name for o in sess.get_outputs()]
        res = runtime.run(sess, dict(zip(self.input_names, xs, strict=False)))
        shapes = {n: r.shape for n, r in zip(names, res, strict=False)}
        counts = []
        for name in wanted:
            s = shapes[name]
            counts.append(int(np.prod(s)) // int(s[1]) if len(s) > 1 and s[1] else 1)
        self._n_per_channel[key] = counts
        return counts

    def forward_backward(self, inputs: np.ndarray | Sequence[np.ndarray], labels: np.ndarray | None = None) -> float:
        """Runs one forward+backward pass (gradients are reset first); returns the loss.

        BatchNorm running statistics are updated as a training step updates them (see the
        module docstring).
        """
        xs = [_prep(x) for x in _as_list(inputs)]
        if self.batch_size is not None and xs[0].shape[0] != self.batch_size:
            raise TrainingError(f"this trainer was built for batches of {self.batch_size}, got {xs[0].shape[0]}")
        ys = self._labels(labels)
        fix = self.bn_unbiased_var and self._bn
        if fix:
            counts = self._bn_counts(xs)
            ps = self.state.parameters
            old = [np.array(ps[var].data, copy=True) for _, var, *_ in self._bn]
        self.module.lazy_reset_grad()
        loss = self.module(*xs, *ys)
        if fix:
            for (_, var, mom, _, _), n, before in zip(self._bn, counts, old, strict=False):
                if n <= 1:
                    continue
                cur = ps[var].data
                # ORT: cur = m*before + (1-m)*v_biased; torch: m*before + (1-m)*v_biased*n/(n-1)
                cur += (cur - np.float32(mom) * before) * np.float32(1.0 / (n - 1))
        self.steps += 1
        return float(np.asarray(loss).reshape(-1)[0])

    def step(self, inputs: np.ndarray | Sequence[np.ndarray], labels: np.ndarray | None, optimizer: Optimizer) -> float:
        """One training step: forward+backward, then ``optimizer.step(params, grads)``; returns the loss."""
        loss = self.forward_backward(inputs, labels)
        optimizer.step(self.params(), self.grads())
        return loss

    # -- results -------------------------------------------------------------------------
    def write_back(self, model: ir.Model | None = None) -> None:
        """Writes trained parameters and BatchNorm running statistics into ``model``'s initializers.

        Args:
            model: Target (default: the model given to the constructor). Names, shapes and
                dtypes of the initializers are kept; only their values change.
        """
        target = model if model is not None else self.model
        inits = target.graph.initializers
        for name, arr in self.state_dict().items():
            v = inits.get(name)
            if v is None:
                continue
            old = v.const_value
            if old is not None and tuple(old.shape) != arr.shape:
                raise TrainingError(f"initializer '{name}' has shape {tuple(old.shape)}, trained value {arr.shape}")
            v.const_value = ir.tensor(arr, name=name)

    def close(self) -> None:
        """Releases the session and removes the temporary artifacts folder."""
        self.module = None  # type: ignore[assignment]
        self.state = None  # type: ignore[assignment]
        if self._owns_dir and os.path.isdir(self.workdir):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OrtTrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# A training loop


@dataclass
class TrainHistory:
    """What :func:`train_ort` did.

    Attributes:
        losses: Training loss of every step.
        epoch_losses: Mean training loss of every epoch.
        val: Validation result after every epoch (when validation data was given).
        steps: Steps run.
        samples_per_second: Training throughput over the whole run (steps + optimizer).
        seconds: Wall time of the training loop.
        epochs: One entry per epoch: ``epoch``, ``loss``, ``lr`` (of the epoch's last step),
            ``group_sparsity`` (when the optimizer has groups) and, when ``evaluate`` was
            given, ``accuracy``.
    """

    losses: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    val: list[EvalResult] = field(default_factory=list)
    steps: int = 0
    samples_per_second: float = 0.0
    seconds: float = 0.0
    epochs: list[dict] = field(default_factory=list)


def train_ort(
    model: ir.Model,
    train_x: np.ndarray | Sequence[np.ndarray] | Binding,
    train_y: np.ndarray | None,
    optimizer: Optimizer,
    *,
    epochs: int = 1,
    batch: int = 64,
    seed: int = 0,
    loss: str = "cross-entropy",
    val_x: np.ndarray | None = None,
    val_y: np.ndarray | None = None,
    max_steps: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    drop_last: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    lr_at: Callable[[int, int], float] | None = None,
    on_epoch: Callable[[ir.Model], float | None] | None = None,
) -> TrainHistory:
    """Trains ``model`` in place with :class:`OrtTrainer` (initializer values change, nothing else).

    Batches are drawn from a ``numpy.random.default_rng(seed)`` permutation per epoch, so the
    run is deterministic under ``seed``. A tqdm bar on stderr shows loss, group sparsity (when
    the optimizer has groups) and samples/s; ``progress=False`` disables it.

    Args:
        model: The training-mode model; its initializers receive the trained values.
        train_x: Training inputs, batch first (an array, or one array per data input), or a
            :class:`otoir.data.Binding` of any data source to ``model`` (then ``train_y`` is
            ignored: the labels come with the batches; a stream is re-batched to its own batch
            size, all data to the model's batch size when it is fixed).
        train_y: Labels (None for ``loss='output'``).
        optimizer: Any object following :class:`~otoir.train.optimizers.Optimizer`.
        epochs: Passes over the data.
        batch: Batch size of array data (a model with a fixed batch dimension trains at that size).
        seed: Seed of the batch order (array data).
        loss: See :class:`OrtTrainer`.
        val_x: Optional validation inputs (evaluated after every epoch).
        val_y: Validation labels.
        max_steps: Stop after this many steps (all epochs otherwise).
        threads: ORT intra-op threads.
        progress: Show the tqdm progress bar.
        drop_last: Skip the last incomplete batch of every epoch (default). The training graph
            then has a static batch dimension (see ``batch_size`` of :class:`OrtTrainer`);
            with ``False`` it keeps a symbolic one, which fails for models with AveragePool.
        on_step: Called as ``on_step(step, loss)`` after every step.
        lr_at: Learning-rate schedule ``lr_at(step, total_steps)`` (e.g.
            :meth:`otoir.train.config.TrainConfig.lr_at`), assigned to ``optimizer.lr``
            before every step. None: the optimizer's ``lr`` throughout.
        on_epoch: Called after every epoch with ``model`` (holding the values trained so far);
            returns held-out accuracy for :attr:`TrainHistory.epochs`. It may change the
            model's BatchNorm statistics: the next write-back replaces them.

    Returns:
        The history.
    """
    from otoir.data import Binding, DataFitError, Dataset, bind

    if isinstance(train_x, Binding):
        binding = train_x
    else:
        xs = tuple(train_x) if isinstance(train_x, (list, tuple)) else train_x
        if (xs[0] if isinstance(xs, tuple) else xs).shape[0] == 0:
            raise TrainingError("no training samples")
        try:
            binding = bind(Dataset(xs, train_y, name="<arrays>"), model)
        except DataFitError as exc:
            raise TrainingError(str(exc)) from None
    if not drop_last and (isinstance(train_x, Binding) or binding.fixed_batch):
        raise TrainingError("drop_last=False needs arrays and a model without a fixed batch dimension")
    size = binding.batch_size(batch, exact=True)
    per_epoch = binding.steps_per_epoch(size) if size else None
    if per_epoch is None:
        raise TrainingError(f"data '{binding.source.name}': the number of batches per epoch is unknown "
                            "(give a DataLoader or another iterable with len())")
    if not drop_last:
        per_epoch = -(-len(binding.source) // size)
    if per_epoch < 1:
        raise TrainingError(f"data '{binding.source.name}' has fewer samples than one batch of {size}")
    total = per_epoch * int(epochs)
    if max_steps is not None:
        total = min(total, int(max_steps))
    rng = np.random.default_rng(seed)
    hist = TrainHistory()
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=total, file=sys.stderr, unit="step", dynamic_ncols=True, leave=True, desc="train")
    t0 = time.perf_counter()
    samples = 0
    with OrtTrainer(model, loss=loss, threads=threads, batch_size=size if drop_last else None) as tr:
        step = 0
        for _epoch in range(int(epochs)):
            if step >= total:
                break
            ep_losses = []
            for xb, yb in binding.batches(size, rng=rng, keep_last=not drop_last):
                if step >= total:
                    break
                if loss == "output":
                    yb = None
                if lr_at is not None:
                    optimizer.lr = lr_at(step, total)
                value = tr.step(xb, yb, optimizer)
                hist.losses.append(value)
                ep_losses.append(value)
                samples += len(xb[0]) if np.ndim(xb[0]) else 1
                step += 1
                if on_step is not None:
                    on_step(step, value)
                if bar is not None:
                    dt = time.perf_counter() - t0
                    post = {"loss": f"{value:.4f}", "samples/s": f"{samples / dt:.0f}" if dt > 0 else "-"}
                    sp = group_sparsity(optimizer)
                    if sp is not None:
                        post["group-sparsity"] = f"{sp:.3f}"
                    bar.set_postfix(post, refresh=False)
                    bar.update(1)
            if ep_losses:
                hist.epoch_losses.append(float(np.mean(ep_losses)))
            entry: dict = {"epoch": _epoch + 1, "loss": hist.epoch_losses[-1] if ep_losses else None,
                           "lr": float(getattr(optimizer, "lr", 0.0))}
            sp = group_sparsity(optimizer)
            if sp is not None:
                entry["group_sparsity"] = float(sp)
            if val_x is not None and val_y is not None:
                tr.write_back()
                hist.val.append(evaluate(model, val_x, val_y, batch=max(size, 256), loss=loss, threads=threads))
            if on_epoch is not None:
                tr.write_back()
                entry["accuracy"] = on_epoch(model)
            hist.epochs.append(entry)
        tr.write_back()
        hist.steps = step
    if bar is not None:
        bar.refresh()  # the last postfix (loss, samples/s) stays on screen
        bar.close()
    hist.seconds = time.perf_counter() - t0
    hist.samples_per_second = samples / hist.seconds if hist.seconds > 0 else 0.0
    return hist
