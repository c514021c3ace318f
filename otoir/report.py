"""Before/after reports of a compression: parameters, FLOPs, accuracy, latency, agreement."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["ModelFigures", "CompressReport", "measure", "measure_latency", "output_agreement"]


@dataclass
class ModelFigures:
    """Figures of one model.

    Attributes:
        params: Parameters (initializer elements).
        flops: Forward FLOPs per sample (multiply and add counted separately).
        accuracy: Top-1 accuracy on the held-out split, if a dataset was given.
        latency_ms: Median onnxruntime CPU latency of one batch-1 inference.
        nodes: Number of nodes.
    """

    params: int
    flops: int
    accuracy: float | None = None
    latency_ms: float | None = None
    nodes: int = 0


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
    """

    full: ModelFigures
    compressed: ModelFigures
    max_rel_diff: float | None = None
    verified: bool | None = None
    tolerance: float = 1e-4
    details: dict[str, Any] = field(default_factory=dict)

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
            ("ORT CPU latency, batch 1", num(f.latency_ms, ".3f") + " ms", num(c.latency_ms, ".3f") + " ms",
             ratio(f.latency_ms, c.latency_ms)),
        ]
        w = max(len(r[0]) for r in rows)
        lines = [f"{'':<{w}}  {labels[0]:>16}  {labels[1]:>16}  {'ratio':>10}"]
        lines += [f"{a:<{w}}  {b:>16}  {cc:>16}  {d:>10}" for a, b, cc, d in rows]
        if self.max_rel_diff is not None:
            verdict = "OK" if self.verified else "MISMATCH"
            lines.append(f"outputs: max |full - compressed| / output scale = {self.max_rel_diff:.3g} "
                         f"(tolerance {self.tolerance:g}): {verdict}")
        for k, v in self.details.items():
            lines.append(f"{k}: {v}")
        return "\n".join(lines)


def _feed_name(model: ir.Model) -> str:
    from otoir.runtime import data_inputs

    return data_inputs(model)[0].name


def measure_latency(models: list[ir.Model], sample: np.ndarray, *, runs: int = 50, warmup: int = 5,
                    threads: int | None = None) -> list[float]:
    """Median batch-1 latency (ms) of each model, measured interleaved in one process.

    Raises:
        RuntimeModelError: ONNX Runtime cannot run one of the models.
    """
    from otoir.runtime import session

    sessions = [(session(m, threads=threads), _feed_name(m)) for m in models]
    x = sample[:1]
    for s, name in sessions:
        for _ in range(warmup):
            s.run(None, {name: x})
    times: list[list[float]] = [[] for _ in models]
    for _ in range(runs):
        for i, (s, name) in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, {name: x})
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [float(np.median(t)) for t in times]


def output_agreement(full: ir.Model, sub: ir.Model, inputs: np.ndarray, batch: int = 256) -> float:
    """``max|y_full - y_sub| / max(1, max|y_full|)`` over all outputs and batches.

    See :func:`otoir.runtime.output_agreement` (this is it, for one data input).
    """
    from otoir.runtime import output_agreement as agreement

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
                 verify_inputs: np.ndarray | None = None, tolerance: float = 1e-4, latency_runs: int = 50,
                 details: Mapping[str, Any] | None = None) -> CompressReport:
    """Measures both models side by side and checks that their outputs agree."""
    sample = verify_inputs if verify_inputs is not None else (val[0] if val is not None else None)
    lat = [None, None]
    if sample is not None and latency_runs > 0:
        lat = measure_latency([full, sub], sample, runs=latency_runs)
    rep = CompressReport(measure(full, val=val, latency=lat[0]), measure(sub, val=val, latency=lat[1]),
                         tolerance=tolerance, details=dict(details or {}))
    if sample is not None:
        rep.max_rel_diff = output_agreement(full, sub, sample)
        rep.verified = rep.max_rel_diff <= tolerance
    return rep
