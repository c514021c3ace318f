"""Before/after reports of a compression: parameters, FLOPs, accuracy, latency, agreement."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["ModelFigures", "CompressReport", "measure", "measure_latency", "output_agreement", "fixed_batch",
           "batch_feeds", "default_threads", "random_inputs"]


@dataclass
class ModelFigures:
    """Figures of one model.

    Attributes:
        params: Parameters (initializer elements).
        flops: Forward FLOPs per sample (multiply and add counted separately).
        accuracy: Top-1 accuracy on the held-out split, if a dataset was given.
        latency_ms: Median onnxruntime CPU latency of one inference at ``latency_batch``.
        nodes: Number of nodes.
        latency_batch: The batch size ``latency_ms`` was measured at: the model's own batch
            when its batch dimension is fixed, else 1.
    """

    params: int
    flops: int
    accuracy: float | None = None
    latency_ms: float | None = None
    nodes: int = 0
    latency_batch: int | None = None


@dataclass
class CompressReport:
    """The report of :func:`otoir.compress` and of ``otoir-opt --report``.

    Attributes:
        full: Figures of the trained full model (or the input, when nothing was trained).
        compressed: Figures of the result.
        max_rel_diff: ``max|y_full - y_sub| / max(1, max|y_full|)`` on held-out inputs.
        verified: Whether ``max_rel_diff`` is within ``tolerance``.
        tolerance: The tolerance used.
        details: Free-form extras (mode, optimizer, groups, epochs, dataset, timings).
        provider: The ONNX Runtime execution provider latency was measured with.
        threads: Intra-op threads latency was measured with.
    """

    full: ModelFigures
    compressed: ModelFigures
    max_rel_diff: float | None = None
    verified: bool | None = None
    tolerance: float = 1e-4
    details: dict[str, Any] = field(default_factory=dict)
    provider: str | None = None
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)

    def to_json(self) -> str:
        """JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    def to_text(self, labels: tuple[str, str] = ("full (trained)", "compressed")) -> str:
        """A before/after table; ``labels`` head its two columns."""

        def num(v: float | None, fmt: str) -> str:
            return "-" if v is None else format(v, fmt)

        def human(n: int) -> str:
            for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
                if n >= div:
                    return f"{n / div:.3g}{unit}"
            return str(n)

        def ratio(a: float | None, b: float | None) -> str:
            return "-" if a is None or b is None or a == 0 else f"{b / a:.3f}x"

        f, c = self.full, self.compressed
        rows = [
            ("parameters", human(f.params), human(c.params), ratio(f.params, c.params)),
            ("FLOPs / sample", human(f.flops), human(c.flops), ratio(f.flops, c.flops)),
            ("nodes", str(f.nodes), str(c.nodes), ratio(f.nodes, c.nodes)),
            ("accuracy (held-out)", num(None if f.accuracy is None else 100 * f.accuracy, ".2f") + ("%" if f.accuracy is not None else ""),
             num(None if c.accuracy is None else 100 * c.accuracy, ".2f") + ("%" if c.accuracy is not None else ""),
             "-" if f.accuracy is None or c.accuracy is None else f"{100 * (c.accuracy - f.accuracy):+.2f} pt"),
            (f"ORT CPU latency, batch {f.latency_batch or 1}", num(f.latency_ms, ".3f") + " ms",
             num(c.latency_ms, ".3f") + " ms", ratio(f.latency_ms, c.latency_ms)),
        ]
        w = max(len(r[0]) for r in rows)
        lines = [f"{'':<{w}}  {labels[0]:>16}  {labels[1]:>16}  {'ratio':>10}"]
        lines += [f"{a:<{w}}  {b:>16}  {cc:>16}  {d:>10}" for a, b, cc, d in rows]
        if self.max_rel_diff is not None:
            verdict = "OK" if self.verified else "MISMATCH"
            lines.append(f"outputs: max |full - compressed| / output scale = {self.max_rel_diff:.3g} "
                         f"(tolerance {self.tolerance:g}): {verdict}")
        if f.latency_ms is not None and self.provider:
            lines.append(f"latency: ONNX Runtime {self.provider}, {self.threads or 'default'} intra-op threads, "
                         f"median of interleaved runs")
        for k, v in self.details.items():
            lines.append(f"{k}: {v}")
        return "\n".join(lines)


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
    from otoir.runtime import session

    sessions = [(session(m, threads=threads), batch_feeds(m, sample, batch)) for m in models]
    for s, feeds in sessions:
        for _ in range(warmup):
            s.run(None, feeds)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(runs):
        for i, (s, feeds) in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, feeds)
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [float(np.median(t)) for t in times]


def output_agreement(full: ir.Model, sub: ir.Model, inputs: np.ndarray | Mapping[str, np.ndarray],
                     batch: int = 256) -> float:
    """``max|y_full - y_sub| / max(1, max|y_full|)`` over all outputs and batches.

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
    return ModelFigures(params=st.params, flops=st.flops, accuracy=acc, latency_ms=latency, nodes=len(model.graph))


def build_report(full: ir.Model, sub: ir.Model, *, val: tuple[np.ndarray, np.ndarray] | None = None,
                 verify_inputs: np.ndarray | Mapping[str, np.ndarray] | None = None, tolerance: float = 1e-4,
                 latency_runs: int = 50, threads: int | None = None,
                 details: Mapping[str, Any] | None = None) -> CompressReport:
    """Measures both models side by side and checks that their outputs agree.

    Latency is measured at the model's own batch when its batch dimension is fixed, else at
    batch 1, with ``threads`` intra-op threads (None: :func:`default_threads`), on ONNX
    Runtime's CPU execution provider.

    Args:
        full: The reference model (inference form).
        sub: The compressed model (inference form, same inputs and outputs).
        val: Held-out ``(inputs, labels)`` for accuracy (a single-input model).
        verify_inputs: Inputs for agreement and latency: one array, or input name -> array.
        tolerance: Allowed ``max_rel_diff``.
        latency_runs: Timed runs per model (0: no latency).
        threads: Intra-op threads for latency.
        details: Extras shown in the report.
    """
    sample = verify_inputs if verify_inputs is not None else (val[0] if val is not None else None)
    lat = [None, None]
    lat_batch = fixed_batch(full) or 1
    threads = threads or default_threads()
    if sample is not None and latency_runs > 0:
        lat = measure_latency([full, sub], sample, runs=latency_runs, threads=threads, batch=lat_batch)
    figs = [measure(m, val=val, latency=t) for m, t in ((full, lat[0]), (sub, lat[1]))]
    for f in figs:
        f.latency_batch = lat_batch if f.latency_ms is not None else None
    rep = CompressReport(figs[0], figs[1], tolerance=tolerance, details=dict(details or {}),
                         provider="CPUExecutionProvider" if lat[0] is not None else None,
                         threads=threads if lat[0] is not None else None)
    if sample is not None:
        rep.max_rel_diff = output_agreement(full, sub, sample)
        rep.verified = rep.max_rel_diff <= tolerance
    return rep
