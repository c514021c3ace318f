"""Before/after reports of a compression: parameters, FLOPs, accuracy, latency, agreement."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["ModelFigures", "CompressReport", "build_report", "measure", "measure_latency", "time_interleaved",
           "turn_ratios", "KernelTime", "kernel_profile", "kernel_efficiency", "work_scaled_us", "output_agreement",
           "fixed_batch", "batch_feeds", "default_threads", "random_inputs"]


@dataclass
class ModelFigures:
    """Figures of one model.

    Attributes:
        params: Parameters (initializer elements).
        flops: Forward FLOPs per sample (multiply and add counted separately).
        accuracy: Top-1 accuracy on the held-out split, if a dataset was given.
        latency_ms: Median onnxruntime CPU latency of one inference at ``latency_batch``.
        nodes: Number of nodes.
        flops_uncounted: Nodes whose FLOPs could not be counted (shapes unknown; ``flops`` is
            then a lower bound).
        latency_batch: The batch size ``latency_ms`` was measured at: the model's own batch
            when its batch dimension is fixed, else 1.
        latency_at_batch: ``{batch: median ms}`` of every batch size measured (``latency_ms``'s
            included), e.g. batch 1 and the training batch.
    """

    params: int
    flops: int
    accuracy: float | None = None
    latency_ms: float | None = None
    nodes: int = 0
    flops_uncounted: int = 0
    latency_batch: int | None = None
    latency_at_batch: dict[int, float] = field(default_factory=dict)


@dataclass
class CompressReport:
    """The report of :func:`otoir.compress` and of ``otoir-opt --report``.

    Attributes:
        full: Figures of the trained full model (or the input, when nothing was trained).
        compressed: Figures of the result.
        max_rel_diff: ``max|y_full - y_sub| / max|y_full|`` on held-out inputs.
        verified: Whether ``max_rel_diff`` is within ``tolerance``.
        tolerance: The tolerance used.
        details: Free-form extras (mode, optimizer, groups, epochs, dataset, timings).
        provider: The ONNX Runtime execution provider latency was measured with.
        threads: Intra-op threads latency was measured with.
        runtime_version: The onnxruntime version latency was measured with (kernels, fusions and
            layout passes change between versions, and latency with them).
    """

    full: ModelFigures
    compressed: ModelFigures
    max_rel_diff: float | None = None
    verified: bool | None = None
    tolerance: float = 1e-4
    details: dict[str, Any] = field(default_factory=dict)
    provider: str | None = None
    threads: int | None = None
    runtime_version: str | None = None
    baseline: ModelFigures | None = None
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``columns`` names the figures' keys in table order)."""
        d = asdict(self)
        d["columns"] = (["baseline"] if self.baseline is not None else []) + ["full", "compressed"]
        if self.baseline is not None:
            d["deltas_vs_baseline"] = {k: self.deltas(getattr(self, k)) for k in ("full", "compressed")}
        return d

    def deltas(self, fig: ModelFigures) -> dict[str, float | None]:
        """``fig`` against the dense baseline: accuracy in points, the rest as ratios (None: unknown).

        Raises:
            ValueError: The report has no baseline.
        """
        b = self.baseline
        if b is None:
            raise ValueError("the report has no dense baseline")

        def ratio(x: float | None, y: float | None) -> float | None:
            return None if x is None or y is None or y == 0 else x / y

        out: dict[str, float | None] = {
            "accuracy_pt": None if fig.accuracy is None or b.accuracy is None else 100 * (fig.accuracy - b.accuracy),
            "params_ratio": ratio(fig.params, b.params), "flops_ratio": ratio(fig.flops, b.flops),
        }
        for n in sorted(set(fig.latency_at_batch) & set(b.latency_at_batch)):
            out[f"latency_ratio_batch{n}"] = ratio(fig.latency_at_batch[n], b.latency_at_batch[n])
        return out

    def to_json(self) -> str:
        """JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    def to_text(self, labels: tuple[str, ...] | None = None) -> str:
        """The table: two columns (full, compressed) and their ratio, or, with a dense
        baseline, three columns (dense baseline, otoir full, otoir compressed) and the full and
        compressed models' deltas against the baseline; ``labels`` head the model columns."""

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{100 * v:.2f}%"

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f} ms"

        def ratio(a: float | None, b: float | None) -> str:
            return "-" if a is None or b is None or a == 0 else f"{b / a:.3f}x"

        def points(a: float | None, b: float | None) -> str:
            return "-" if a is None or b is None else f"{100 * (b - a):+.2f} pt"

        figs = ([self.baseline] if self.baseline is not None else []) + [self.full, self.compressed]
        if labels is None:
            labels = (("dense baseline", "otoir full", "otoir compressed") if self.baseline is not None
                      else ("full (trained)", "compressed"))
        if len(labels) != len(figs):
            raise ValueError(f"{len(figs)} columns need {len(figs)} labels, got {len(labels)}")
        ref = figs[0]
        batches = sorted(set().union(*(f.latency_at_batch for f in figs))) or [ref.latency_batch or 1]
        rows: list[tuple[str, list[str], Any]] = [
            ("parameters", [_human(f.params) for f in figs], lambda f: ratio(ref.params, f.params)),
            ("FLOPs / sample", [_human(f.flops) for f in figs], lambda f: ratio(ref.flops, f.flops)),
            ("nodes", [str(f.nodes) for f in figs], lambda f: ratio(ref.nodes, f.nodes)),
            ("accuracy (held-out)", [pct(f.accuracy) for f in figs], lambda f: points(ref.accuracy, f.accuracy)),
        ]
        for n in batches:
            def lat(f: ModelFigures, n: int = n) -> float | None:
                return f.latency_at_batch.get(n, f.latency_ms if (f.latency_batch or 1) == n else None)

            rows.append((f"ORT CPU latency, batch {n}", [ms(lat(f)) for f in figs],
                         lambda f, lat=lat: ratio(lat(ref), lat(f))))
        delta_heads = ([f"{labels[1]} vs dense", f"{labels[2]} vs dense"] if self.baseline is not None
                       else ["ratio"])
        others = figs[1:]
        w = max(len(r[0]) for r in rows)
        cw = max(16, *(len(x) for x in labels))
        dw = max(10, *(len(x) for x in delta_heads))
        lines = ["  ".join([f"{'':<{w}}", *(f"{x:>{cw}}" for x in labels), *(f"{x:>{dw}}" for x in delta_heads)])]
        for name, cells, delta in rows:
            lines.append("  ".join([f"{name:<{w}}", *(f"{c:>{cw}}" for c in cells),
                                    *(f"{delta(f):>{dw}}" for f in others)]))
        if self.max_rel_diff is not None:
            verdict = "OK" if self.verified else "MISMATCH"
            lines.append(f"outputs: max |full - compressed| / output scale = {self.max_rel_diff:.3g} "
                         f"(tolerance {self.tolerance:g}): {verdict}")
        if any(f.latency_ms is not None for f in figs) and self.provider:
            ver = f"{self.runtime_version} " if self.runtime_version else ""
            lines.append(f"latency: ONNX Runtime {ver}{self.provider}, {self.threads or 'default'} intra-op threads "
                         f"(pools spinning within runs only), median of runs taken in alternating blocks")
        for k, v in self.details.items():
            lines.append(f"{k}: {v}")
        return "\n".join(lines)


def _human(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


#: A compressed model whose measured latency exceeds the full model's by more than this factor
#: gets a warning in its report (below it, interleaved medians of equal models can differ).
SLOWER_THAN_FULL = 1.05


def default_threads() -> int:
    """The intra-op thread count reports measure latency with: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def fixed_batch(model: ir.Model) -> int | None:
    """The model's own batch size: axis 0 of its data inputs when fixed there, else None.

    None also for a model without data inputs or with only scalar ones; when inputs disagree
    the first fixed one wins (the others keep their own sizes in :func:`batch_feeds`).
    """
    from otoir.runtime import data_inputs

    for v in data_inputs(model):
        dims = v.shape.dims if v.shape is not None else ()
        if dims and isinstance(dims[0], int):
            return int(dims[0])
    return None


def _rows(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` cut or cycled along axis 0 to exactly ``n`` rows."""
    x = np.asarray(x)
    if x.ndim == 0 or len(x) == n:
        return x
    if len(x) > n:
        return x[:n]
    if len(x) == 0:
        raise ValueError("an input has no rows")
    return np.take(x, np.arange(n) % len(x), axis=0)


def batch_feeds(model: ir.Model, sample: np.ndarray | Mapping[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """Feeds for every data input of ``model`` with ``batch`` rows taken (or cycled) from ``sample``.

    ``sample`` is one array (a model with one data input) or input name -> array, batch first.
    An input whose axis 0 is fixed gets that many rows whatever ``batch`` is.

    Raises:
        InputError: ``sample`` is one array but the model has several data inputs, or it lacks
            one of the model's inputs.
    """
    from otoir.errors import InputError
    from otoir.runtime import data_inputs

    inputs = data_inputs(model)
    if not isinstance(sample, Mapping):
        if len(inputs) != 1:
            raise InputError(f"the model has {len(inputs)} data inputs; give one array per input name")
        sample = {inputs[0].name: sample}
    feeds = {}
    for v in inputs:
        if v.name not in sample:
            raise InputError(f"no values for the model's input '{v.name}'")
        dims = v.shape.dims if v.shape is not None else ()
        n = dims[0] if dims and isinstance(dims[0], int) else batch
        feeds[v.name] = _rows(sample[v.name], n) if dims else np.asarray(sample[v.name])
    return feeds


def random_inputs(model: ir.Model, rows: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """At least ``rows`` random rows for every data input, in whole batches of a fixed batch size.

    Values and dtypes as :func:`otoir.runtime.random_feeds` (float normal, integers small).
    """
    from otoir.runtime import random_feeds

    fixed = fixed_batch(model)
    if not fixed:
        return random_feeds(model, seed=seed, batch=rows)
    parts = [random_feeds(model, seed=seed + i, batch=fixed) for i in range(-(-rows // fixed))]
    return {k: np.concatenate([p[k] for p in parts]) if np.ndim(parts[0][k]) else parts[0][k] for k in parts[0]}


def measure_latency(models: list[ir.Model], sample: np.ndarray | Mapping[str, np.ndarray], *, runs: int = 50,
                    warmup: int = 5, threads: int | None = None, batch: int = 1) -> list[float]:
    """Median latency (ms) of each model at ``batch``, measured interleaved in one process.

    Args:
        models: The models (same data inputs).
        sample: One array (single data input) or input name -> array, batch first; rows are
            taken, or cycled, to make ``batch`` (inputs with a fixed axis 0 keep their size).
        runs: Timed runs per model.
        warmup: Untimed runs per model first.
        threads: Intra-op threads (None: ORT's default).
        batch: Batch size of the dynamic inputs.

    Raises:
        RuntimeModelError: ONNX Runtime cannot run one of the models.
    """
    times = time_interleaved(models, sample, runs=runs, warmup=warmup, threads=threads, batch=batch)
    return [float(v) for v in np.median(times, axis=1)]


def timing_session(model: ir.Model, sample: np.ndarray | Mapping[str, np.ndarray], *, threads: int | None = None,
                   batch: int = 1) -> tuple[Any, dict[str, np.ndarray]]:
    """The ``(session, feeds)`` :func:`time_interleaved` builds for ``model``, to pass again as
    one of its ``prepared`` entries (a model compared many times: its session is built once)."""
    from otoir.runtime import TIMING_SPIN, session

    return session(model, threads=threads, spinning=TIMING_SPIN), batch_feeds(model, sample, batch)


def time_interleaved(models: list[ir.Model], sample: np.ndarray | Mapping[str, np.ndarray], *, runs: int = 50,
                     warmup: int = 5, threads: int | None = None, batch: int = 1,
                     block: int | None = None,
                     prepared: Mapping[int, tuple[Any, dict[str, np.ndarray]]] | None = None) -> np.ndarray:
    """Every timed run (ms) of each model, ``(models, runs)``, the models taking turns in blocks.

    Each turn is one untimed run (it brings the model's weights back into the caches the
    others used) and then ``block`` timed runs (default: 5, fewer when that would leave fewer
    than 10 turns), so a figure is the model's steady-state latency, run after run, as a
    deployed session sees it; the turns alternate, so load from other processes falls on every
    model alike, and column ``j`` of every model was timed in the same turn
    (:func:`turn_ratios`). The sessions' thread pools spin within a run and stop when it
    returns (:data:`otoir.runtime.TIMING_SPIN`). Timed one run of each in turn instead, every
    run starts with the caches the other models left (MobileNetV2, 224x224, 1 thread: the
    pruned network's ratio 0.51 one run in turn, 0.47 in blocks). Arguments as
    :func:`measure_latency`; ``block`` is the timed runs per turn; ``prepared`` maps a position
    in ``models`` to the :func:`timing_session` of that model at the same ``threads`` and
    ``batch``, used instead of building it again (BERT-base, 4 layers: 1.7 s a session).
    """
    prepared = prepared or {}
    sessions = [prepared[i] if i in prepared else timing_session(m, sample, threads=threads, batch=batch)
                for i, m in enumerate(models)]
    for s, feeds in sessions:
        for _ in range(warmup):
            s.run(None, feeds)
    block = max(1, int(block) if block is not None else min(5, runs // 10))
    times = np.empty((len(models), runs))
    for start in range(0, runs, block):
        for i, (s, feeds) in enumerate(sessions):
            s.run(None, feeds)
            for r in range(start, min(start + block, runs)):
                t0 = time.perf_counter()
                s.run(None, feeds)
                times[i, r] = (time.perf_counter() - t0) * 1e3
    return times


time_interleaved.takes_prepared = True  # injected stand-ins (tests) are called without ``prepared``


def turn_ratios(times: np.ndarray) -> np.ndarray:
    """Each model's time over the first model's in the same turn, per timed run: ``times[i] / times[0]``.

    ``times`` as :func:`time_interleaved` returns them (column ``j`` of every model timed in
    the same turn). Their median is a paired estimate of the latency ratio: a slow spell that
    lasts a turn or more (another tenant of the machine, a clock change) slows both sides of a
    pair, so it cancels in the ratio, where it spreads each model's own times.
    """
    t = np.asarray(times, dtype=np.float64)
    return t / np.maximum(t[:1], 1e-9)


@dataclass(frozen=True)
class KernelTime:
    """One node of ONNX Runtime's optimised graph, from its profile.

    Attributes:
        op_type: The kernel's op type (after ORT's fusions: a Conv may carry its activation).
        us: Mean time per run, microseconds.
        work: Multiply-accumulates for Conv, Gemm and MatMul (from the shapes ORT recorded);
            output elements for every other kernel (what its time scales with).
    """

    op_type: str
    us: float
    work: float


def _work(args: Mapping[str, Any]) -> float:
    def shapes(key: str) -> list[list[int]]:
        return [next(iter(d.values())) for d in args.get(key) or []]

    ins, outs = shapes("input_type_shape"), shapes("output_type_shape")
    out = [int(d) for d in outs[0]] if outs else []
    op = args.get("op_name", "")
    if op in ("Conv", "FusedConv") and len(ins) >= 2 and len(out) >= 3:
        # weight (M, C/groups, k...) once per output position: N * prod(spatial out) * prod(W)
        return float(np.prod(ins[1], dtype=np.float64) * out[0] * np.prod(out[2:], dtype=np.float64))
    if op in ("Gemm", "MatMul", "FusedMatMul", "FusedGemm") and ins and out:
        return float(np.prod(ins[0], dtype=np.float64) * out[-1])
    return float(np.prod(out, dtype=np.float64)) if out else 0.0


#: Op types ONNX Runtime fuses into the Conv/Gemm that produces their input (FusedConv, NCHWc).
_FUSED_AFTER = frozenset({"Relu", "Clip", "Sigmoid", "HardSigmoid", "LeakyRelu", "Tanh", "Add", "Sum"})


def _kernel_keys(model: ir.Model) -> Any:
    """``ORT kernel name -> key``: the ONNX node it computes, the same in a model and its sub-networks.

    ORT names a kernel after the node (``/layer1/conv1/Conv``), or, after its NCHWc layout
    transform, after the output value (``/layer1/Relu_output_0_nchwc``) of the last op it fused
    (an activation, a residual Add); both are traced back to the Conv/Gemm that heads the fused
    chain. Names that are not the model's (layout reorders) are kept as they are.
    """
    nodes = {n.name: n for n in model.graph if n.name}
    producer = {o.name: n for n in model.graph for o in n.outputs}

    def head(n: Any) -> Any:
        while n.op_type in _FUSED_AFTER:
            src = [v.producer() for v in n.inputs if v is not None and v.producer() is not None]
            # a layer that feeds it first (a residual Add's other input is the stream), else the op before
            nxt = ([p for p in src if p.op_type in ("Conv", "Gemm", "MatMul")]
                   or [p for p in src if p.op_type in _FUSED_AFTER])
            if not nxt:
                break
            n = nxt[0]
        return n

    def key(name: str) -> str:
        n = nodes.get(name) or producer.get(name.removesuffix("_nchwc"))
        if n is None:
            return name
        n = head(n)
        return n.name or n.outputs[0].name

    return key


def kernel_profile(models: Sequence[ir.Model], sample: np.ndarray | Mapping[str, np.ndarray], *, runs: int = 30,
                   warmup: int = 5, threads: int | None = None, batch: int = 1) -> list[dict[str, KernelTime]]:
    """ONNX Runtime's per-node kernel times of each model (its optimised graph), keyed by ONNX node.

    The models run interleaved, one run of each in turn (thread pools spinning as in
    :func:`time_interleaved`), so load from other processes falls on all of them alike. Arguments as
    :func:`measure_latency`; the first ``warmup`` runs are not counted. Keys are
    the model's node names (:func:`_kernel_keys`), the same in a model and its sub-networks. The
    profile files ORT writes are read and removed.
    """
    import tempfile

    from otoir.runtime import TIMING_SPIN, session

    out: list[dict[str, KernelTime]] = []
    with tempfile.TemporaryDirectory(prefix="otoir-profile-") as tmp:
        sessions = [(session(m, threads=threads, spinning=TIMING_SPIN, profile=os.path.join(tmp, f"p{i}")),
                     batch_feeds(m, sample, batch)) for i, m in enumerate(models)]
        for _ in range(warmup + runs):
            for s, feeds in sessions:
                s.run(None, feeds)
        for m, (s, _) in zip(models, sessions, strict=True):
            with open(s.end_profiling()) as f:
                out.append(_kernel_times(json.load(f), _kernel_keys(m), warmup, runs))
    return out


def _kernel_times(events: list[dict], key_of: Any, warmup: int, runs: int) -> dict[str, KernelTime]:
    """Mean µs per run of each kernel (by key) over the runs after the first ``warmup``."""
    ends = sorted(float(e["ts"]) + float(e.get("dur", 0)) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    start = ends[warmup - 1] if 0 < warmup <= len(ends) else float("-inf")  # end of the last warm-up run
    total: dict[str, float] = {}
    seen: dict[str, KernelTime] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        key = key_of(name[: -len("_kernel_time")])
        if key not in seen:
            args = e.get("args") or {}
            seen[key] = KernelTime(str(args.get("op_name", "")), 0.0, _work(args))
        if float(e["ts"]) >= start:
            total[key] = total.get(key, 0.0) + float(e.get("dur", 0))
    return {k: KernelTime(v.op_type, total.get(k, 0.0) / max(runs, 1), v.work) for k, v in seen.items()}


def kernel_efficiency(full: Mapping[str, KernelTime], sub: Mapping[str, KernelTime]) -> float:
    """The sub-network's kernel time over the time its kernels would take at the full model's
    efficiency (:func:`work_scaled_us`).

    1.0: every kept kernel runs as efficiently per unit of work as in the full model, so a
    latency ratio above the FLOPs ratio comes from *which* layers kept their work (late layers
    read more weight bytes per multiply-accumulate at batch 1; element-wise kernels' work is
    linear in the channels kept where a convolution's is often bilinear), not from the runtime;
    above 1: narrower kernels are slower per unit of work (fixed costs per kernel).
    """
    expected = work_scaled_us(full, sub)
    measured = sum(k.us for k in sub.values())
    return measured / expected if expected > 0 else float("inf")


def work_scaled_us(full: Mapping[str, KernelTime], sub: Mapping[str, KernelTime]) -> float:
    """The µs ``sub``'s kernels would take at the full model's efficiency per unit of work.

    Each kernel of ``sub`` is expected to take its full-model time scaled by its work
    (multiply-accumulates, or output elements) kept. Kernels that are not the model's nodes
    (ORT's layout reorders, named by token) are matched by op type as a pool: the full model's
    pool time scaled by the pool's work kept; a reorder the full model has no pool of is
    expected to take no time. Over the full model's total kernel time: the latency ratio
    kernels whose time followed their work would give.
    """
    expected = 0.0
    pools: dict[str, list[float]] = {}  # op type -> [full us, full work, sub work] of unmatched kernels
    for name, k in sub.items():
        f = full.get(name)
        if f is not None:
            if f.work > 0:
                expected += f.us * min(k.work / f.work, 1.0)
        else:
            pools.setdefault(k.op_type, [0.0, 0.0, 0.0])[2] += k.work
    for name, f in full.items():
        if name not in sub and f.op_type in pools:
            pools[f.op_type][0] += f.us
            pools[f.op_type][1] += f.work
    for us, fwork, swork in pools.values():
        if fwork > 0:
            expected += us * min(swork / fwork, 1.0)
    return expected


def output_agreement(full: ir.Model, sub: ir.Model, inputs: np.ndarray | Mapping[str, np.ndarray],
                     batch: int = 256) -> float:
    """``max|y_full - y_sub| / max|y_full|`` over all outputs and batches.

    See :func:`otoir.runtime.output_agreement`; a model whose batch dimension is fixed is run in
    batches of exactly that size (rows cycled to fill the last one).
    """
    from otoir.runtime import output_agreement as agreement

    fixed = fixed_batch(full)
    if fixed:
        n = len(next(iter(inputs.values()))) if isinstance(inputs, Mapping) else len(inputs)
        total = max(1, -(-n // fixed)) * fixed
        inputs = batch_feeds(full, inputs, total)
        batch = fixed
    return agreement(full, sub, inputs, batch)


def measure(model: ir.Model, *, val: tuple[np.ndarray, np.ndarray] | None = None,
            latency: float | None = None) -> ModelFigures:
    """Parameters, FLOPs, node count and (with ``val``) accuracy of an inference-form model."""
    from otoir.stats import stats

    st = stats(model)
    acc = None
    if val is not None:
        from otoir.train.ort_backend import evaluate  # its inference form, through otoir.runtime

        acc = evaluate(model, val[0], val[1]).accuracy
    return ModelFigures(params=st.params, flops=st.flops, accuracy=acc, latency_ms=latency, nodes=len(model.graph),
                        flops_uncounted=len(st.uncounted))


def build_report(full: ir.Model, sub: ir.Model, *, val: tuple[np.ndarray, np.ndarray] | None = None,
                 verify_inputs: np.ndarray | Mapping[str, np.ndarray] | None = None, tolerance: float = 1e-4,
                 latency_runs: int = 50, threads: int | None = None,
                 details: Mapping[str, Any] | None = None, baseline: ir.Model | None = None,
                 latency_batches: Sequence[int] = (),
                 history: Mapping[str, list[dict[str, Any]]] | None = None) -> CompressReport:
    """Measures the models side by side and checks that the full and compressed outputs agree.

    Latency is measured at the model's own batch when its batch dimension is fixed, else at
    batch 1 and at every size in ``latency_batches`` (a fifth of ``latency_runs`` timed runs, at
    least 5, there), with ``threads`` intra-op threads (None:
    :func:`default_threads`), on ONNX Runtime's CPU execution provider, the models interleaved.

    Args:
        full: The reference model (inference form).
        sub: The compressed model (inference form, same inputs and outputs).
        val: Held-out ``(inputs, labels)`` for accuracy (a single-input model).
        verify_inputs: Inputs for agreement and latency: one array, or input name -> array.
        tolerance: Allowed ``max_rel_diff``.
        latency_runs: Timed runs per model (0: no latency).
        threads: Intra-op threads for latency.
        details: Extras shown in the report.
        baseline: The dense baseline (same inputs and outputs), measured alike as a third column.
        latency_batches: More batch sizes to measure latency at (ignored for a fixed batch).
        history: Per-epoch training histories by run name, kept in the report.
    """
    from otoir.runtime import version as runtime_version

    sample = verify_inputs if verify_inputs is not None else (val[0] if val is not None else None)
    models = ([baseline] if baseline is not None else []) + [full, sub]
    fixed = fixed_batch(full)
    batches = [fixed] if fixed else sorted({1, *(int(b) for b in latency_batches if int(b) >= 1)})
    lat_batch = batches[0]
    threads = threads or default_threads()
    lat: dict[int, list[float]] = {}
    if sample is not None and latency_runs > 0:
        for n in batches:  # a batch of n costs ~n single runs: fewer timed runs there
            runs = latency_runs if n == lat_batch else max(5, latency_runs // 5)
            lat[n] = measure_latency(models, sample, runs=runs, threads=threads, batch=n)
    figs = []
    for i, m in enumerate(models):
        f = measure(m, val=val, latency=lat[lat_batch][i] if lat else None)
        f.latency_batch = lat_batch if f.latency_ms is not None else None
        f.latency_at_batch = {n: v[i] for n, v in lat.items()}
        figs.append(f)
    rep = CompressReport(figs[-2], figs[-1], tolerance=tolerance, details=dict(details or {}),
                         provider="CPUExecutionProvider" if lat else None, threads=threads if lat else None,
                         runtime_version=runtime_version() if lat else None,
                         baseline=figs[0] if baseline is not None else None, history=dict(history or {}))
    uncounted = [f"{f.flops_uncounted} node(s) of the {name} model"
                 for f, name in zip(figs[-2:], ("full", "compressed"), strict=True) if f.flops_uncounted]
    if uncounted:
        rep.details["flops"] = ("FLOPs are lower bounds: " + ", ".join(uncounted)
                                + " have no static shape, so their FLOPs are not counted")
    slower = [(n, v[-1] / v[-2]) for n, v in sorted(lat.items()) if v[-2] > 0 and v[-1] > SLOWER_THAN_FULL * v[-2]]
    if slower:
        at = ", ".join(f"{r:.2f}x at batch {n}" for n, r in slower)
        rep.details["warning"] = (f"the compressed model is slower than the full model ({at}); on ONNX Runtime CPU "
                                  f"the usual cause is kept channel counts that leave its blocked kernels: "
                                  f"round-to=runtime (or 8, 16), or target-latency=F, keeps them aligned")
    if sample is not None:
        rep.max_rel_diff = output_agreement(full, sub, sample)
        rep.verified = rep.max_rel_diff <= tolerance
    return rep
