"""A measured latency model of the target runtime, and latency-aware selection of redundant groups.

FLOPs say little about time on a real runtime: ONNX Runtime's CPU convolutions run in a blocked
``NCHWc`` layout only when channel counts are multiples of its block size (depthwise kernels
fall back to a slow path otherwise), small layers are dominated by fixed costs, and GEMM
packing rounds sizes up. So the cost of a kept channel count is *measured*:

* :func:`build_latency_table` times every layer of the model — each ``Conv``, ``ConvTranspose``,
  ``Gemm`` and ``MatMul`` with a constant weight, as a one-node sub-model of the model's own
  shapes (batch and spatial size) with ONNX Runtime on this machine — at a few kept
  output-channel and input-channel counts: multiples of :func:`channel_multiple` (the runtime's
  NCHWc block, probed) and, beside each, one count half a block off (the misaligned cost).
  Layers with the same signature are timed once; sessions are timed in interleaved rounds and
  the median kept. The whole model is timed once too, and profiled (ONNX Runtime's per-node
  times): each layer's samples are scaled to its time *inside* the network
  (:meth:`LayerCost.calibrate`; alone, a layer pays layout reorders and keeps its weights
  cached, so alone-times misrank early against late layers), and what the layers do not
  explain (element-wise ops, pooling, layout reorders) is a residual that shrinks with the kept
  activations. The table is cached on disk per model structure (shapes and attributes, not
  values), ONNX Runtime version, thread count and batch (:func:`cache_dir`).
* :class:`LayerCost` predicts a layer's time at any ``(kept inputs, kept outputs)`` by
  interpolating the measured points (separable in the two counts; each series made
  non-decreasing), choosing the aligned or the misaligned series by the counts.
* :class:`CostModel` maps channel groups (and GeZIGs: whole tensors) to the layers whose
  counts they reduce and predicts the latency of the model with any set of groups removed,
  incrementally (:class:`CostTracker`). Without ONNX Runtime the same model runs on FLOPs
  (:func:`flops_cost_model`; ``CostModel.source == "flops"``), with a remark saying so.
* :func:`latency_select` is the latency-aware selection: groups are ranked by importance per
  unit of (smoothly estimated) latency saved, and the walk is the validity-checked
  :func:`~otoir.analyses.validity.select_redundant` (caps, never a whole tensor, GeZIG
  validity, round-to). With ``target_latency=F`` it takes the smallest count whose selection
  costs at most ``F`` times the full model's; with a count ``K`` it takes ``K``. The table alone
  is optimistic (it times layers, not the network), so ``target-latency`` *measures* the
  candidates (:func:`measured_cost_model`, :class:`LatencyCounter`): each count the search
  tries is constructed as the pipelines construct it, put in deployment form and timed
  interleaved against the full model; the table ranks the groups and proposes the first counts
  (rescaled by what the measurement said), so a search costs a handful of constructions, and
  the answer is timed twice.
* :func:`flops_select` (``target-flops=F``) is the same selection on FLOPs: ranked by importance
  per FLOP saved (:func:`flops_cost_model`; a GeZIG's saving includes the region it ends and the
  segments it leaves dead), with every candidate selection's FLOPs *counted* on the constructed
  sub-network (:class:`FlopsCounter`: the named pipelines' construction and
  :func:`otoir.stats.stats`), so the selection taken meets ``F`` exactly, not by an estimate.

Every ONNX Runtime session comes from :func:`otoir.runtime.session`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from otoir.ops.rules import attr

if TYPE_CHECKING:
    import onnx_ir as ir

    from otoir.analyses.groups import Group
    from otoir.infra.analysis import AnalysisManager

__all__ = [
    "CostModel",
    "CostTracker",
    "LatencyTable",
    "LayerCost",
    "build_latency_table",
    "cache_dir",
    "channel_multiple",
    "channel_work_unit",
    "misaligned_depthwise",
    "work_units",
    "CONSTRUCTION",
    "FlopsCounter",
    "LatencyCounter",
    "SubnetCounter",
    "measured_cost_model",
    "cost_model",
    "cost_selector",
    "exact_flops_cost_model",
    "flops_cost_model",
    "flops_select",
    "flops_selector",
    "latency_select",
    "latency_selector",
    "LatencySelector",
    "runtime_aligned",
    "smallest_selection",
]

#: Bumped when the table's format or the way it is measured changes (old cache files are ignored).
TABLE_VERSION = 6
#: Op types timed as layers (when their weight is a constant initializer).
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Kept fractions sampled per axis (the full count is always sampled).
SAMPLE_FRACTIONS = (0.25, 0.5, 0.75)


def cache_dir() -> Path:
    """Where latency tables are cached: ``$OTOIR_CACHE_DIR/latency``, else ``~/.cache/otoir/latency``."""
    base = os.environ.get("OTOIR_CACHE_DIR")
    root = Path(base) if base else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "otoir"
    return root / "latency"


# ---------------------------------------------------------------------------------------------
# Per-layer cost


def _isotonic(ys: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to ``ys`` in least squares (pool adjacent violators).

    A timing outlier is averaged with its neighbours instead of lifting every later point.
    """
    blocks: list[list[float]] = []  # [sum, count]
    for y in ys:
        blocks.append([float(y), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, n = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += n
    out: list[float] = []
    for s, n in blocks:
        out += [s / n] * int(n)
    return out


def _series_value(points: Sequence[tuple[int, float]], c: float) -> float:
    """Piecewise-linear interpolation through ``(0, 0)`` and ``points`` made non-decreasing, clamped."""
    if not points:
        return 0.0
    xs = np.array([0.0] + [float(p[0]) for p in points])
    ys = np.array([0.0] + _isotonic([p[1] for p in points]))
    return float(np.interp(c, xs, ys))


@dataclass
class LayerCost:
    """Measured time (ms) of one layer as a function of its kept input and output channels.

    Attributes:
        name: Node name.
        op_type: Node op type.
        weight: The weight initializer's name.
        cin: Full input-channel count (the weight axis that follows the input channels).
        cout: Full output-channel count.
        in_axis: Weight axis of the input channels (None: tied to the outputs, depthwise).
        out_axis: Weight axis of the output channels.
        align: Channel multiple of the aligned series.
        full_ms: Time at full counts.
        out_aligned: ``[(kept outputs, ms)]`` at full inputs, aligned counts (sorted).
        out_misaligned: The same at counts that are not multiples of ``align``.
        in_aligned: ``[(kept inputs, ms)]`` at full outputs.
        in_misaligned: The same, misaligned.
        activation: Output elements per sample at full counts (weights the residual).
        kind: ``"onnxruntime"`` (measured) or ``"flops"`` (proportional to FLOPs).
        calibration: In-graph time over the one-node model's time at full counts (every
            sample is scaled by it; 1.0 when the layer was not found in the whole model's
            profile). A layer alone runs its input and output through layout reorders and
            keeps its weights in the caches between runs; inside the network it does neither,
            so early wide-activation layers are cheaper and late weight-heavy ones dearer
            than alone (ResNet-18 at 32x32, batch 1: 0.6x to 1.8x).
    """

    name: str
    op_type: str
    weight: str
    cin: int
    cout: int
    in_axis: int | None
    out_axis: int
    align: int = 8
    full_ms: float = 0.0
    out_aligned: list[tuple[int, float]] = field(default_factory=list)
    out_misaligned: list[tuple[int, float]] = field(default_factory=list)
    in_aligned: list[tuple[int, float]] = field(default_factory=list)
    in_misaligned: list[tuple[int, float]] = field(default_factory=list)
    activation: int = 0
    kind: str = "onnxruntime"
    calibration: float = 1.0

    def _aligned(self, c: int, full: int) -> bool:
        return c == full or c % max(self.align, 1) == 0

    def calibrate(self, graph_ms: float) -> None:
        """Scales every sample so that the full-count time is ``graph_ms`` (the in-graph time)."""
        if self.full_ms <= 0 or graph_ms <= 0:
            return
        f = graph_ms / self.full_ms
        self.calibration *= f
        self.full_ms = graph_ms
        for s in ("out_aligned", "out_misaligned", "in_aligned", "in_misaligned"):
            setattr(self, s, [(c, t * f) for c, t in getattr(self, s)])

    def _axis(self, c: int, full: int, aligned: list, misaligned: list, smooth: bool) -> float:
        if c >= full:
            return self.full_ms
        if c <= 0:
            return 0.0
        if self.kind == "flops":
            return self.full_ms * c / full
        series = aligned if smooth or self._aligned(c, full) or not misaligned else misaligned
        pts = sorted(series + ([(full, self.full_ms)] if series is aligned else []))
        if series is misaligned:  # beyond the last misaligned sample: scale the aligned value
            last = pts[-1]
            if c > last[0]:
                base = _series_value(sorted(aligned + [(full, self.full_ms)]), c)
                ref = _series_value(sorted(aligned + [(full, self.full_ms)]), last[0])
                return base * (last[1] / ref if ref > 0 else 1.0)
        return _series_value(pts, c)

    def predict(self, kept_in: int, kept_out: int, *, smooth: bool = False) -> float:
        """Predicted ms at ``kept_in`` input and ``kept_out`` output channels.

        Args:
            kept_in: Kept input channels (ignored for depthwise layers).
            kept_out: Kept output channels.
            smooth: Use the aligned series only (a smooth trend, for ranking).
        """
        if kept_out <= 0 or (self.in_axis is not None and kept_in <= 0):
            return 0.0
        if self.full_ms <= 0:
            return 0.0
        t = self._axis(kept_out, self.cout, self.out_aligned, self.out_misaligned, smooth)
        work = min(kept_out / self.cout, 1.0) if self.cout else 1.0
        if self.in_axis is not None:
            t *= self._axis(kept_in, self.cin, self.in_aligned, self.in_misaligned, smooth) / self.full_ms
            work *= min(kept_in / self.cin, 1.0) if self.cin else 1.0
        # never cheaper per multiply-accumulate than at full counts: alone, a thinner layer's
        # weights fit the caches better (its time falls faster than its work), but inside the
        # network they are evicted between runs as the full layer's are (kernel profiles of
        # pruned ResNets: most kept kernels take their full time scaled by the work kept, +-10%)
        return max(t, self.full_ms * work)


@dataclass
class LatencyTable:
    """The measured layers of one model on one runtime configuration.

    Attributes:
        key: Cache key (model structure, runtime version, threads, batch, format).
        runtime: ``onnxruntime X.Y.Z`` (or ``flops``).
        threads: Intra-op threads the times were measured with.
        batch: Batch size of the sub-models (the model's own when its batch is fixed).
        align: The channel multiple of the aligned samples (:func:`channel_multiple`).
        full_ms: The whole model's time (0 when not measured).
        layers: Node name -> :class:`LayerCost`.
        timings: Sessions timed to build the table (0 when it came from the cache).
    """

    key: str
    runtime: str
    threads: int
    batch: int
    align: int
    full_ms: float
    layers: dict[str, LayerCost]
    timings: int = 0

    def to_json(self) -> str:
        """The table as JSON (the cache file's content)."""
        d = asdict(self)
        d["timings"] = 0
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> LatencyTable:
        """Reads :meth:`to_json` output."""
        d = json.loads(text)
        layers = {}
        for k, v in d["layers"].items():
            for s in ("out_aligned", "out_misaligned", "in_aligned", "in_misaligned"):
                v[s] = [(int(a), float(b)) for a, b in v[s]]
            layers[k] = LayerCost(**v)
        d["layers"] = layers
        return cls(**d)

    @property
    def layer_ms(self) -> float:
        """Sum of the layers' full times."""
        return sum(lc.full_ms for lc in self.layers.values())


# ---------------------------------------------------------------------------------------------
# Layers of a model


def _layer_axes(node: ir.Node, wshape: tuple[int, ...]) -> tuple[int | None, int] | None:
    """(input-channel axis or None when tied to the outputs, output-channel axis) of the weight."""
    op = node.op_type
    if op == "Conv" and len(wshape) >= 3:
        group = int(attr(node, "group", 1))
        if group > 1 and wshape[1] == 1 and group == wshape[0]:
            return None, 0  # depthwise: inputs follow outputs
        if group > 1:
            return None, 0  # grouped: removing channels shrinks both sides alike
        return 1, 0
    if op == "ConvTranspose" and len(wshape) >= 3 and int(attr(node, "group", 1)) == 1:
        return 0, 1
    if op == "Gemm" and len(wshape) == 2 and not int(attr(node, "transA", 0)):
        return (1, 0) if int(attr(node, "transB", 0)) else (0, 1)
    if op == "MatMul" and len(wshape) == 2:
        return 0, 1
    return None


def model_layers(model: ir.Model) -> list[tuple[ir.Node, ir.Value, tuple[int | None, int]]]:
    """The layers timed by the table: ``(node, weight initializer, (in axis, out axis))``.

    A ``MatMul`` whose weight is a ``Transpose`` of a 2-D initializer (torch's ``Linear`` in a
    training export) counts with the initializer itself and its axes swapped.
    """
    out = []
    inits = model.graph.initializers
    for node in model.graph:
        if node.op_type not in LAYER_OPS or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            continue
        w = node.inputs[1]
        swap = False
        if node.op_type == "MatMul" and w is not None and w.name not in inits:
            p = w.producer()
            if (p is not None and p.op_type == "Transpose" and p.inputs and p.inputs[0] is not None
                    and p.inputs[0].name in inits and list(attr(p, "perm", [1, 0])) == [1, 0]):
                w, swap = p.inputs[0], True
        if w is None or w.name not in inits or inits[w.name].const_value is None:
            continue
        axes = _layer_axes(node, tuple(inits[w.name].const_value.shape))
        if axes is not None:
            out.append((node, w, (axes[1], axes[0]) if swap else axes))
    return out


def structure_hash(model: ir.Model, *extra: Any) -> str:
    """A hash of the model's structure: ops, attributes, value shapes; weight values excluded."""
    h = hashlib.sha256()
    for v in model.graph.inputs:
        h.update(f"in {v.name} {v.dtype} {v.shape}\n".encode())
    for name, v in sorted(model.graph.initializers.items()):
        shape = tuple(v.const_value.shape) if v.const_value is not None else v.shape
        h.update(f"init {name} {v.dtype} {shape}\n".encode())
    for node in model.graph:
        attrs = sorted((k, repr(a.value)) for k, a in node.attributes.items())
        h.update(f"{node.domain}::{node.op_type} {[i.name if i else '' for i in node.inputs]} "
                 f"{[o.name for o in node.outputs]} {attrs}\n".encode())
    h.update(repr(extra).encode())
    return h.hexdigest()[:32]


# ---------------------------------------------------------------------------------------------
# Timing


def _measure(sess: Any, feeds: Mapping[str, np.ndarray], runs: int, *, fastest: bool = False) -> float:
    """Median ms of ``runs`` consecutive runs of ``sess`` (the one timer: tests count its calls);
    with ``fastest``, the fastest run's.

    Each run is timed on its own, so a time slice lost to another process spoils one run, not
    the figure.
    """
    out = np.empty(max(runs, 1))
    clock = time.perf_counter
    for i in range(out.size):
        t0 = clock()
        sess.run(None, feeds)
        out[i] = clock() - t0
    return float(np.min(out) if fastest else np.median(out)) * 1e3


def time_sessions(items: Sequence[tuple[Any, Mapping[str, np.ndarray]]], *, rounds: int = 7,
                  min_ms: float = 1.0) -> list[float]:
    """Median ms per run of each session, timed in interleaved rounds.

    Each session runs enough times per round to last about ``min_ms`` (found from a warm-up
    run; the round's figure is the median of those runs), and the rounds visit the sessions in
    turn, so load changes hit them alike; the median over the rounds is kept.
    """
    runs = []
    for sess, feeds in items:
        _measure(sess, feeds, 1)  # warm-up (allocations, first-run costs)
        first = _measure(sess, feeds, 1)
        runs.append(max(3, min(200, int(min_ms / max(first, 1e-3)))))
    times: list[list[float]] = [[] for _ in items]
    for _ in range(max(1, rounds)):
        for i, (sess, feeds) in enumerate(items):
            if runs[i] < 4:  # a long run: warm its weights into the caches the others used
                sess.run(None, feeds)
            times[i].append(_measure(sess, feeds, runs[i]))
    return [float(np.median(t)) for t in times]


def _one_layer_proto(node: ir.Node, x_shape: tuple[int, ...], wshape: tuple[int, ...], in_axis: int | None,
                     out_axis: int, kin: int, kout: int, opset: int) -> Any:
    """A one-node model: ``node`` with ``kin`` input and ``kout`` output channels (random weights)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    op = node.op_type
    ws = list(wshape)
    xs = list(x_shape)
    attrs = {k: a.value for k, a in node.attributes.items()}
    if in_axis is None:  # depthwise / grouped: both sides shrink
        group = int(attrs.get("group", 1))
        per = ws[0] // max(group, 1)
        ngroups = max(1, kout // max(per, 1))
        ws[0] = ngroups * per
        xs[1] = ngroups * (x_shape[1] // max(group, 1))
        attrs["group"] = ngroups
    else:
        ws[out_axis] = kout
        ws[in_axis] = kin
        if op in ("Conv", "ConvTranspose"):
            xs[1] = kin
        else:  # Gemm (transA=0) / MatMul: the last axis of x is the contraction
            xs[-1] = kin
            if op == "MatMul":
                ws = [kin, kout]  # the weight as MatMul reads it (a transposed initializer included)
    inits = [numpy_helper.from_array(rng.standard_normal(ws).astype(np.float32) * 0.01, "w")]
    inputs = ["x", "w"]
    nb = {"Conv": ws[0], "ConvTranspose": ws[1] * int(attrs.get("group", 1)),
          "Gemm": ws[0] if attrs.get("transB", 0) else ws[1]}.get(op)
    if nb is not None:  # deployed layers carry the folded BatchNorm as a bias
        inits.append(numpy_helper.from_array(np.zeros(nb, np.float32), "b"))
        inputs.append("b")
    n = helper.make_node(op, inputs, ["y"], **attrs)
    g = helper.make_graph([n], "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, xs)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    return m, np.asarray(rng.standard_normal(xs), dtype=np.float32)


def _identity_proto() -> Any:
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "overhead",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _sample_counts(full: int, align: int) -> tuple[list[int], list[int]]:
    """(aligned counts, misaligned counts) to time for an axis of ``full`` channels (full excluded)."""
    aligned = sorted({max(align, int(f * full) // align * align) for f in SAMPLE_FRACTIONS} - {full})
    aligned = [c for c in aligned if 0 < c < full]
    if full <= 2 * align:  # small axes: just halve
        aligned = sorted({max(1, full // 2)} - {full})
    mis = sorted({c + align // 2 for c in aligned if c + align // 2 < full and (c + align // 2) % align})
    return aligned, mis


_ALIGN_CACHE: dict[tuple[str | None, int], int] = {}


def misaligned_depthwise(model: ir.Model, channels: Mapping[str, Sequence[tuple[int, int, int]]],
                         multiple: int = 8) -> list[tuple[str, int, int]]:
    """The depthwise convolutions that pruning took off the runtime's channel lattice.

    ``channels`` is ``prune-channels``' record, ``{tensor: [(axis, before, after), ...]}``. A
    depthwise convolution (``group`` equal to its channels, weight ``[C, 1, k, k]``) whose
    channel count was a multiple of ``multiple`` and no longer is leaves ONNX Runtime's blocked
    CPU kernels, which need whole 8- or 16-channel blocks (a MobileNetV2 pruned to half its
    FLOPs that way ran 1.15x to 1.84x slower than the full network).

    Returns:
        ``(node name, channels before, channels after)`` for each, in graph order.
    """
    out = []
    for n in model.graph:
        if n.op_type != "Conv" or len(n.inputs) < 2 or n.inputs[1] is None:
            continue
        g = n.attributes.get("group")
        if g is None or g.value <= 1:
            continue
        for axis, before, after in channels.get(n.inputs[1].name, ()):
            if axis == 0 and g.value == after and before % multiple == 0 and after % multiple:
                out.append((n.name or n.inputs[1].name, before, after))
    return out


def channel_multiple(threads: int = 1) -> int:
    """The channel multiple ONNX Runtime's CPU convolutions want here: its NCHWc block size.

    Probed, not assumed: ORT runs a convolution in the blocked layout (``com.microsoft.nchwc``
    nodes) with its input reordered into blocks only when the input has at least one block of
    channels, so the block is the smallest of 4, 8, 16, 32 input channels for which ORT inserts
    a ``ReorderInput`` (16 with AVX-512, 8 with AVX2). Channel counts between multiples of the
    block are padded up to the next one, and counts that are not even multiples of 4 leave the
    blocked layout altogether (measured on ORT 1.19). 8 when the probe cannot tell (no blocked
    layout on this CPU, or no ONNX Runtime).
    """
    from otoir import runtime

    key = (runtime.version(), threads)
    if key in _ALIGN_CACHE:
        return _ALIGN_CACHE[key]
    found = 8
    try:
        import tempfile

        import onnx
        from onnx import TensorProto, helper

        ort = runtime.onnxruntime()
        for c in (4, 8, 16, 32):
            w = helper.make_tensor("w", TensorProto.FLOAT, [32, c, 3, 3], [0.0] * (288 * c))
            n = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
            g = helper.make_graph([n], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 8, 8])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
            m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
            with tempfile.TemporaryDirectory() as d:
                opts = ort.SessionOptions()
                opts.log_severity_level = 4
                opts.optimized_model_filepath = os.path.join(d, "o.onnx")
                ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
                ops = {n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node}
            if "ReorderInput" in ops:
                found = c
                break
    except Exception:  # noqa: BLE001 - the probe is advisory: keep the default
        pass
    _ALIGN_CACHE[key] = found
    return found


_UNIT_CACHE: dict[tuple[str | None, int], int] = {}


def channel_work_unit(block: int) -> int:
    """The output channels ONNX Runtime's blocked convolutions hand a thread at a time, in channels.

    Timed, not assumed: ORT's NCHWc convolutions split their output into (set of output-channel
    blocks, output row) pieces shared evenly among the intra-op threads, and a partial last set
    is as many pieces as a whole one, so at 2 threads 5 blocks of outputs take as long as 8 (a
    3x3 convolution, 128 inputs, 28x28: 80 outputs 1.04 ms, 128 outputs 1.16 ms; at 1 thread
    1.33 and 2.36 ms; ORT 1.19, AVX-512). The probe times a 1x1 convolution (8 blocks of inputs,
    56x56: enough work that the threads' hand-off does not hide the step) with 4, 5 and 8 blocks
    of outputs at 2 threads, and 8 at 1 thread, the fastest of each in 15 interleaved rounds:
    when the fifth block costs more than half of what four more do, the unit is 4 blocks, else
    one block (also with fewer than 2 CPUs, when nothing can be timed, or without ONNX
    Runtime). The probe first checks its premise: 2 threads must run the 8 blocks at least
    1.4x faster than 1 thread. Right after torch work they do not (torch's idle OpenMP threads
    still hold a core: measured 0.3 s after exporting a ResNet-18, 0.54 ms for 4 blocks where a
    quiet machine takes 0.29), so the probe waits and tries again (5 tries over about 3 s); a
    probe that never sees two threads at work answers one block and is not cached. At 1 thread
    whole units cost no more per channel than other counts (the same convolution: 15.9 to 18.4
    us per output channel at every count from 64 to 192).
    """
    from otoir import runtime

    key = (runtime.version(), block)
    if key in _UNIT_CACHE:
        return _UNIT_CACHE[key]
    if (os.cpu_count() or 1) < 2 or block <= 1:
        _UNIT_CACHE[key] = block
        return block
    try:
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        cin, side = 8 * block, 56
        items = []
        for blocks, threads in ((4, 2), (5, 2), (8, 2), (8, 1)):
            w = numpy_helper.from_array(rng.standard_normal((blocks * block, cin, 1, 1)).astype(np.float32), "w")
            g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "unit",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, side, side])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
            m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
            items.append((runtime.session(m, threads=threads, spinning=runtime.TIMING_SPIN),
                          {"x": rng.standard_normal((1, cin, side, side)).astype(np.float32)}))
        for attempt in range(5):
            if attempt:
                time.sleep(0.25 * attempt)
            best = [math.inf] * len(items)
            for _ in range(15):  # interleaved rounds; the least disturbed run of each counts
                for i, (sess, feeds) in enumerate(items):
                    best[i] = min(best[i], _measure(sess, feeds, 4, fastest=True))
            t4, t5, t8, t8_one = best
            if t8_one >= 1.4 * t8:  # two threads did run in parallel: the step can be read
                unit = 4 * block if t8 > t4 and t5 - t4 > 0.5 * (t8 - t4) else block
                _UNIT_CACHE[key] = unit
                return unit
    except Exception:  # noqa: BLE001 - the probe is advisory: keep one block
        pass
    return block


def _input_shape(node: ir.Node, shapes: Any, batch: int) -> tuple[int, ...] | None:
    from otoir.analyses.shapes import SENTINEL

    s = shapes.shape(node.inputs[0])
    if s is None:
        return None
    return tuple(batch if d % SENTINEL == 0 and d else int(d) for d in s)


def build_latency_table(model: ir.Model, *, analyses: AnalysisManager | None = None, threads: int = 1,
                        batch: int = 1, cache: bool | str | os.PathLike = True, rounds: int = 7,
                        full_model: bool = True) -> LatencyTable:
    """Times the model's layers with ONNX Runtime (or reads the cached table).

    Args:
        model: The model (training or inference form; only its structure matters).
        analyses: An analysis manager of ``model`` (for static shapes).
        threads: Intra-op threads to time with (part of the cache key).
        batch: Batch size of symbolic batch dimensions (a fixed batch is kept).
        cache: True: :func:`cache_dir`; a path: that directory; False: no cache.
        rounds: Interleaved timing rounds (medians are kept).
        full_model: Also time the whole model (deployment form) for the residual.

    Raises:
        RuntimeUnavailableError: ONNX Runtime is not installed.
    """
    from otoir import runtime
    from otoir.analyses.shapes import StaticShapes
    from otoir.infra.analysis import AnalysisManager

    ort_version = runtime.version()
    if ort_version is None:
        runtime.onnxruntime()  # raises RuntimeUnavailableError with the install hint
    align = channel_multiple(threads)
    key = structure_hash(model, ort_version, threads, batch, align, TABLE_VERSION)
    path = None
    if cache:
        path = (cache_dir() if cache is True else Path(cache)) / f"{key}.json"
        if path.is_file():
            try:
                return LatencyTable.from_json(path.read_text())
            except (ValueError, KeyError, TypeError):
                pass  # a corrupt or old file: rebuild it
    am = analyses or AnalysisManager(model)
    shapes = am.get(StaticShapes)
    opset = max(17, int(model.opset_imports.get("", 17)))
    layers: dict[str, LayerCost] = {}
    # signature -> (layer name, [(kind, count)]); equal signatures are timed once
    plans: dict[tuple, list[str]] = {}
    specs: dict[tuple, tuple] = {}
    for node, w, (in_axis, out_axis) in model_layers(model):
        ws = tuple(int(d) for d in w.const_value.shape)
        xs = _input_shape(node, shapes, batch)
        if xs is None or len(xs) < 2:
            continue
        cout = ws[out_axis]
        cin = ws[in_axis] if in_axis is not None else cout
        ys = shapes.sample_shape(node.outputs[0]) or ()
        act = int(np.prod(ys)) if ys else cout
        name = node.name or f"{node.op_type}:{w.name}"
        layers[name] = LayerCost(name, node.op_type, w.name, cin, cout, in_axis, out_axis, align, activation=act)
        sig = (node.op_type, tuple(sorted((k, repr(a.value)) for k, a in node.attributes.items())), xs, ws,
               in_axis, out_axis)
        plans.setdefault(sig, []).append(name)
        specs[sig] = (node, xs, ws, in_axis, out_axis, cin, cout)
    # every sample of every signature is timed in the same interleaved rounds, so a burst of
    # load from another process lands on one round of many sessions, not on one layer
    jobs: list[tuple[tuple, list[tuple[str, int, int]]]] = []
    items = []
    for sig in plans:
        node, xs, ws, in_axis, out_axis, cin, cout = specs[sig]
        points: list[tuple[str, int, int]] = [("full", cin, cout)]
        oa, om = _sample_counts(cout, align)
        points += [("oa", cin, c) for c in oa] + [("om", cin, c) for c in om]
        if in_axis is not None:
            ia, im = _sample_counts(cin, align)
            points += [("ia", c, cout) for c in ia] + [("im", c, cout) for c in im]
        for _, kin, kout in points:
            proto, x = _one_layer_proto(node, xs, ws, in_axis, out_axis, kin, kout, opset)
            items.append((runtime.session(proto, threads=threads, spinning=runtime.TIMING_SPIN), {"x": x}))
        jobs.append((sig, points))
    whole = _whole_session(model, threads, batch) if full_model and items else None
    if whole is not None:
        items.append(whole[:2])
    if items:  # the fixed cost of one run (binding, dispatch), subtracted from every sample
        items.append((runtime.session(_identity_proto(), threads=threads, spinning=runtime.TIMING_SPIN), {"x": np.zeros((1, 1), np.float32)}))
    ms_all = time_sessions(items, rounds=rounds) if items else []
    timings = len(items)
    overhead = ms_all.pop() if ms_all else 0.0
    ms_all = [max(t - overhead, 0.01 * t) for t in ms_all]
    full_ms = ms_all.pop() if whole is not None else 0.0
    pos = 0
    for sig, points in jobs:
        ms = ms_all[pos:pos + len(points)]
        pos += len(points)
        for name in plans[sig]:
            lc = layers[name]
            for (kind, kin, kout), t in zip(points, ms, strict=True):
                if kind == "full":
                    lc.full_ms = t
                elif kind == "oa":
                    lc.out_aligned.append((kout, t))
                elif kind == "om":
                    lc.out_misaligned.append((kout, t))
                elif kind == "ia":
                    lc.in_aligned.append((kin, t))
                else:
                    lc.in_misaligned.append((kin, t))
    if whole is not None:
        for name, ms in _in_graph_ms(whole[2], whole[1], threads, batch, full_ms).items():
            if name in layers:
                layers[name].calibrate(ms)
        timings += 1
    table = LatencyTable(key, f"onnxruntime {ort_version}", threads, batch, align, full_ms, layers, timings)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(table.to_json())
            os.replace(tmp, path)
        except OSError:
            pass  # an unwritable cache only costs a rebuild next time
    return table


def _whole_session(model: ir.Model, threads: int, batch: int) -> tuple[Any, dict, ir.Model] | None:
    """(session, feeds, the clone) of the whole model in deployment form, or None when it cannot run."""
    from otoir import runtime
    from otoir.api import clone_model
    from otoir.infra import PassManager
    from otoir.infra.registry import get_pass

    try:
        m = clone_model(model)
        PassManager([get_pass("to-deployment")(check=False)], verify_each=False).run(m)
        feeds = runtime.random_feeds(m, batch=batch)
        sess = runtime.session(m, threads=threads, spinning=runtime.TIMING_SPIN)
        runtime.run(sess, feeds)
        return sess, feeds, m
    except Exception:  # noqa: BLE001 - the residual is optional: the layers alone still rank groups
        return None


def _in_graph_ms(model: ir.Model, feeds: Mapping[str, np.ndarray], threads: int, batch: int,
                 whole_ms: float) -> dict[str, float]:
    """Each node's time inside the whole (deployment-form) model, ms, from ONNX Runtime's profile.

    Keyed by the node a kernel computes (:func:`otoir.report.kernel_profile`: a fused Conv+Add+Relu
    counts for its Conv). Enough runs for about 200 ms of profile (10 to 50). Empty when the
    profile cannot be taken (the layers then keep their alone-times).
    """
    from otoir.report import kernel_profile

    runs = int(min(50, max(10, 200.0 / max(whole_ms, 1e-3))))
    try:
        (prof,) = kernel_profile([model], dict(feeds), runs=runs, warmup=3, threads=threads, batch=batch)
    except Exception:  # noqa: BLE001 - calibration is optional
        return {}
    return {k: v.us / 1e3 for k, v in prof.items() if v.us > 0}


# ---------------------------------------------------------------------------------------------
# Groups -> layers, and predictions


@dataclass
class CostModel:
    """Predicted latency of a model with groups removed.

    Attributes:
        source: ``"onnxruntime"`` (a measured :class:`LatencyTable`) or ``"flops"``.
        layers: The layers (:class:`LayerCost`), in a fixed order.
        residual: Cost not explained by the layers at full counts (shrinks with the kept
            output activations of the layers).
        effects: Per group (same order as the groups given): ``[(layer index, removed inputs,
            removed outputs)]``.
        table: The measured table (None for FLOPs).
        remark: A note for the user (e.g. why FLOPs are used).
        counter: The cost of a selection on its constructed sub-network (:class:`FlopsCounter`:
            exact FLOPs; :class:`LatencyCounter`: measured latency): when set, :meth:`predict`
            and :attr:`full` are the counter's, and the layer model only ranks
            (:meth:`savings`) and brackets (:meth:`layer_predict`).
        work: The FLOPs model of the same groups (:func:`flops_cost_model`), set on a measured
            model: ``target-latency`` also ranks the groups with each importance weighed by the
            group's share of the work (the FLOPs its removal saves) and keeps, of the two
            selections that meet the target, the one that keeps more FLOPs
            (:func:`latency_select`). None: the redundancy rank alone.
    """

    source: str
    layers: list[LayerCost]
    residual: float
    effects: list[list[tuple[int, int, int]]]
    table: LatencyTable | None = None
    remark: str = ""
    counter: SubnetCounter | None = None
    work: CostModel | None = None

    @property
    def full(self) -> float:
        """Cost of the full model (the counter's figure with a :attr:`counter`)."""
        if self.counter is not None:
            return self.counter.full
        return self.layer_full

    @property
    def layer_full(self) -> float:
        """The layer model's cost of the full model (the layers plus the residual)."""
        return sum(lc.full_ms for lc in self.layers) + self.residual

    def layer_predict(self, removed: Iterable[int]) -> float:
        """The layer model's cost with the groups at these indices removed (never the counter's)."""
        t = self.tracker()
        for i in removed:
            t.remove(i)
        return t.total

    def tracker(self) -> CostTracker:
        """An incremental predictor starting from the full model (the layer model, even with a counter)."""
        return CostTracker(self)

    def predict(self, removed: Iterable[int]) -> float:
        """Predicted cost with the groups at these indices removed (counted, with a :attr:`counter`)."""
        if self.counter is not None:
            return self.counter(removed)
        return self.layer_predict(removed)

    def savings(self) -> np.ndarray:
        """Per group: smooth estimate of the cost saved by removing it (>= 0; for ranking).

        The layers' aligned trend is used (the average slope from the smallest sampled count to
        the full one), so one misaligned channel does not make a group look costly to remove.
        """
        slope_in, slope_out = [], []
        for lc in self.layers:
            lo = max(1, lc.cout // 4)
            a = lc.predict(lc.cin, lo, smooth=True)
            slope_out.append(max(0.0, (lc.full_ms - a) / max(lc.cout - lo, 1)))
            if lc.in_axis is None:
                slope_in.append(0.0)
                continue
            lo = max(1, lc.cin // 4)
            a = lc.predict(lo, lc.cout, smooth=True)
            slope_in.append(max(0.0, (lc.full_ms - a) / max(lc.cin - lo, 1)))
        act_total = sum(lc.activation for lc in self.layers) or 1
        out = np.zeros(len(self.effects))
        for g, eff in enumerate(self.effects):
            s = 0.0
            for li, din, dout in eff:
                lc = self.layers[li]
                if dout >= lc.cout or (lc.in_axis is not None and din >= lc.cin):
                    s += lc.full_ms
                    continue
                s += slope_out[li] * dout + slope_in[li] * din
                s += self.residual * lc.activation * dout / max(lc.cout, 1) / act_total
            out[g] = s
        return out


class CostTracker:
    """Incremental prediction: remove groups one at a time, read :attr:`total`."""

    def __init__(self, model: CostModel) -> None:
        self.model = model
        self.kin = [lc.cin for lc in model.layers]
        self.kout = [lc.cout for lc in model.layers]
        self.times = [lc.full_ms for lc in model.layers]
        self.act_total = sum(lc.activation for lc in model.layers) or 1
        self.act = float(self.act_total)
        self.total = model.layer_full

    def remove(self, g: int) -> float:
        """Removes group ``g``; returns the new total."""
        m = self.model
        for li, din, dout in m.effects[g]:
            lc = m.layers[li]
            old_out = self.kout[li]
            self.kin[li] = max(0, self.kin[li] - din)
            self.kout[li] = max(0, self.kout[li] - dout)
            if lc.in_axis is None:
                self.kin[li] = self.kout[li]
            new = lc.predict(self.kin[li], self.kout[li])
            self.total += new - self.times[li]
            self.times[li] = new
            if lc.cout:
                da = lc.activation * (old_out - self.kout[li]) / lc.cout
                self.total -= m.residual * da / self.act_total
                self.act -= da
        return self.total


def _effects(groups: Sequence[Group], layers: list[LayerCost]) -> list[list[tuple[int, int, int]]]:
    """Per group: ``[(layer index, removed inputs, removed outputs)]``.

    From the group's slices and dependent slices (a whole tensor: the layer goes; an axis: that
    many channels). For GeZIGs judged by a validity checker (a
    :class:`~otoir.analyses.validity.GroupSet`'s ``checker``) every layer in the segments that
    erasing the group removes goes too: the region it ends (DemoSupNet's Conv6 ends the
    Conv2/Conv3/Conv4 branches into its Concat) and the segments it leaves without a path to a
    graph output (:meth:`~otoir.analyses.validity.ValidityChecker.dead`, the collateral).
    """
    by_weight: dict[str, list[int]] = {}
    by_node: dict[str, int] = {}
    for i, lc in enumerate(layers):
        by_weight.setdefault(lc.weight, []).append(i)
        by_node[lc.name] = i
    checker = getattr(groups, "checker", None)
    out = []
    for g in groups:
        eff: dict[int, list[int]] = {}
        if not g.meta.get("exact", True):  # zeroed but kept by the construction: saves nothing
            out.append([])
            continue
        for s in (*g.slices, *g.dependent):
            for li in by_weight.get(s.tensor, ()):
                lc = layers[li]
                d = eff.setdefault(li, [0, 0])
                if s.axis is None:  # the whole tensor: the layer goes
                    d[0], d[1] = lc.cin, lc.cout
                elif s.axis == lc.out_axis:
                    d[1] = max(d[1], len(s.indices or ()))
                elif lc.in_axis is not None and s.axis == lc.in_axis:
                    d[0] = max(d[0], len(s.indices or ()))
        if checker is not None and "segment" in g.meta:
            zero = checker.segments_of([g])
            zero |= checker.interior(zero)
            gone = zero | (checker.dead(zero) - checker.dead_before)
            segs = checker.segments.segments
            for si in gone:
                for node in segs[si].nodes:
                    li = by_node.get(node.name)
                    if li is not None:
                        eff[li] = [layers[li].cin, layers[li].cout]
        out.append([(li, d[0], d[1]) for li, d in eff.items() if d[0] or d[1]])
    return out


def cost_model(model: ir.Model, groups: Sequence[Group], *, analyses: AnalysisManager | None = None,
               threads: int = 1, batch: int = 1, cache: bool | str | os.PathLike = True,
               table: LatencyTable | None = None) -> CostModel:
    """The latency model of ``model`` for ``groups``: measured with ONNX Runtime, else FLOPs.

    Args:
        model: The model.
        groups: The candidate groups (effects are listed in this order).
        analyses: Analysis manager of ``model``.
        threads: Intra-op threads of the target runtime.
        batch: Batch size to time at.
        cache: See :func:`build_latency_table`.
        table: A table already built (skips the timing).

    Returns:
        A :class:`CostModel`; ``source == "flops"`` with a ``remark`` when ONNX Runtime is not
        available.
    """
    from otoir import runtime

    if table is None:
        if not runtime.available():
            cm = flops_cost_model(model, groups, analyses=analyses)
            cm.remark = "no ONNX Runtime: latency is predicted from FLOPs"
            return cm
        table = build_latency_table(model, analyses=analyses, threads=threads, batch=batch, cache=cache)
    layers = list(table.layers.values())
    residual = max(0.0, table.full_ms - table.layer_ms) if table.full_ms else 0.0
    work = flops_cost_model(model, groups, analyses=analyses)
    return CostModel("onnxruntime", layers, residual, _effects(groups, layers), table, work=work)


def flops_cost_model(model: ir.Model, groups: Sequence[Group], *, analyses: AnalysisManager | None = None) -> CostModel:
    """The FLOPs stand-in of :func:`cost_model` (layers' FLOPs, bilinear in the kept counts)."""
    from otoir.analyses.shapes import StaticShapes
    from otoir.infra.analysis import AnalysisManager
    from otoir.ops.rules import node_flops
    from otoir.stats import stats

    am = analyses or AnalysisManager(model)
    shp = am.get(StaticShapes)
    layers = []
    for node, w, (in_axis, out_axis) in model_layers(model):
        ws = tuple(int(d) for d in w.const_value.shape)
        cout = ws[out_axis]
        cin = ws[in_axis] if in_axis is not None else cout
        ys = shp.sample_shape(node.outputs[0]) or ()
        layers.append(LayerCost(node.name or f"{node.op_type}:{w.name}", node.op_type, w.name, cin, cout, in_axis,
                                out_axis, 1, float(node_flops(node, shp.sample_shape)),
                                activation=int(np.prod(ys)) if ys else cout, kind="flops"))
    total = float(stats(model, am).flops)
    residual = max(0.0, total - sum(lc.full_ms for lc in layers))
    return CostModel("flops", layers, residual, _effects(groups, layers))


#: The construction each group kind is removed by (after ``to-inference``; ``cleanup`` follows).
CONSTRUCTION = {"gezig": "eliminate-dead-branches", "zig": "prune-channels"}


class SubnetCounter:
    """The cost of the model with a selection of groups removed, on the constructed sub-network.

    A selection is zeroed on a copy of the model (the trainable slices, as training leaves
    them), the copy is put in inference form and constructed as the named pipelines do
    (``to-inference``, ``eliminate-dead-branches`` for GeZIGs or ``prune-channels`` for channel
    groups, ``cleanup``, then :attr:`finish`), and :meth:`figure` measures it. So the figure
    *is* the compressed network's: every collateral (consumer columns that go, Concats that
    shrink, segments left dead, pooling and normalisation of removed channels) is in the one
    construction, never in a second model of it. :attr:`full` is the empty selection's figure.
    Results are cached per selection; :attr:`constructions` counts the sub-networks built.

    Args:
        model: The model (copied here: later changes to its values do not matter).
        groups: The candidate groups (selections are indices into them).
    """

    #: Pipeline text run after the construction (e.g. ``to-deployment{check=false}``; empty: none).
    finish: str = ""
    #: The option named in errors.
    option = "target-flops"

    def __init__(self, model: ir.Model, groups: Sequence[Group]) -> None:
        from otoir.api import clone_model

        kinds = {g.kind for g in groups}
        if len(kinds) > 1 or not kinds <= set(CONSTRUCTION):
            raise ValueError(f"{self.option} counts gezig or zig groups of one kind, got {sorted(kinds)}")
        self.kind = next(iter(kinds), "zig")
        self.groups = list(groups)
        self._model = clone_model(model)
        self._cache: dict[frozenset[int], float] = {}
        self.constructions = 0
        self.full = self(())

    def model_of(self, removed: Iterable[int]) -> ir.Model:
        """The constructed sub-network without the groups at ``removed`` (inference form, then
        :attr:`finish`)."""
        from otoir.analyses.groups import zero_groups
        from otoir.api import clone_model
        from otoir.infra import PassManager
        from otoir.infra.registry import get_pass

        m = clone_model(self._model)
        zero_groups(m, (self.groups[i] for i in sorted(set(removed))))
        passes = [get_pass(n)() for n in ("to-inference", CONSTRUCTION[self.kind], "cleanup")]
        if self.finish:
            passes += PassManager.from_text(self.finish).passes
        PassManager(passes, verify_each=False).run(m)
        self.constructions += 1
        return m

    def figure(self, key: frozenset[int], sub: ir.Model) -> float:
        """The cost of the constructed sub-network ``sub`` of selection ``key``."""
        raise NotImplementedError

    def __call__(self, removed: Iterable[int]) -> float:
        key = frozenset(int(i) for i in removed)
        if key not in self._cache:
            self._cache[key] = float(self.figure(key, self.model_of(key)))
        return self._cache[key]


class FlopsCounter(SubnetCounter):
    """Exact FLOPs of the model with a selection of groups removed: constructed
    (:class:`SubnetCounter`), then counted by :func:`otoir.stats.stats`."""

    def figure(self, key: frozenset[int], sub: ir.Model) -> float:
        """The FLOPs of ``sub``."""
        from otoir.stats import stats

        return float(stats(sub).flops)


class LatencyCounter(SubnetCounter):
    """Measured ONNX Runtime latency of the model with a selection of groups removed.

    The selection's sub-network is constructed as :class:`SubnetCounter` does and put in
    deployment form (``to-deployment``), then timed interleaved against the full model in the
    same form (:func:`otoir.report.time_interleaved`: the two take turns in blocks of runs,
    ``threads`` intra-op threads, batch ``batch``: the table's settings). The figure
    is ``ratio * full_ms``, where ``ratio`` is the median over the rounds of the sub-network's
    time over the full model's in the same round (load from other processes hits both alike) and
    :attr:`full` (``full_ms``) is the full model's median time; the empty selection is the
    full model (ratio 1). So the bisection's goal ``target * full`` is a goal on the measured
    ratio. The number of rounds is chosen so one comparison lasts about ``budget_s`` (between
    ``min_runs`` and ``max_runs``).

    Args:
        model: The model.
        groups: The candidate groups.
        threads: Intra-op threads.
        batch: Batch size of symbolic batch dimensions.
        budget_s: Seconds one comparison should take (both models).
        min_runs: Fewest interleaved rounds.
        max_runs: Most interleaved rounds.
        timer: The interleaved timer (default :func:`otoir.report.time_interleaved`); tests
            inject one. Called as ``timer(models, sample, runs=, warmup=, threads=, batch=)``
            and returns ``(models, runs)`` ms.
    """

    finish = "to-deployment{check=false}"  # loading it in ONNX Runtime to time it is the check
    option = "target-latency"

    def __init__(self, model: ir.Model, groups: Sequence[Group], *, threads: int = 1, batch: int = 1,
                 budget_s: float = 1.0, min_runs: int = 15, max_runs: int = 200,
                 timer: Callable[..., np.ndarray] | None = None) -> None:
        self.threads = threads
        self.batch = batch
        self.budget_s = budget_s
        self.min_runs = min_runs
        self.max_runs = max_runs
        self._timer = timer
        self.reference: ir.Model | None = None
        self.runs = min_runs
        self._sample: Any = None
        self._ratios: dict[frozenset[int], np.ndarray] = {}
        self.confirmed: set[frozenset[int]] = set()
        self._last: tuple[frozenset[int], ir.Model] | None = None  # the selection last timed, and its network
        self._reference_session: Any = None  # the full model's timing session, built once
        self.timings = 0
        self.seconds = 0.0
        super().__init__(model, groups)

    def _time(self, models: list[ir.Model], runs: int) -> np.ndarray:
        from otoir import report

        timer = self._timer or report.time_interleaved  # looked up at call time (tests patch it)
        t0 = time.perf_counter()
        kw = {}
        if getattr(timer, "takes_prepared", False):  # models[0] is always the reference: its session is kept
            if self._reference_session is None:
                self._reference_session = report.timing_session(self.reference, self._sample, threads=self.threads,
                                                                batch=self.batch)
            kw["prepared"] = {0: self._reference_session}
        out = np.asarray(timer(models, self._sample, runs=runs, warmup=3, threads=self.threads, batch=self.batch,
                               **kw), dtype=np.float64)
        self.timings += 1
        self.seconds += time.perf_counter() - t0
        return out

    def release(self) -> None:
        """Drops the full model's timing session (kept between comparisons; built again when needed)."""
        self._reference_session = None

    def figure(self, key: frozenset[int], sub: ir.Model) -> float:
        """``ratio * full_ms`` of ``sub`` (the full model's median ms for the empty selection)."""
        if self.reference is None:  # the empty selection: the reference every ratio is taken to
            from otoir.report import random_inputs

            self.reference = sub
            self._sample = random_inputs(sub, rows=max(self.batch, 1))
            t = self._time([sub], self.min_runs)[0]
            full_ms = float(np.median(t))
            self.runs = int(np.clip(self.budget_s * 1e3 / max(2 * full_ms, 1e-3), self.min_runs, self.max_runs))
            return full_ms
        if not key:
            return self.full
        from otoir import report

        self._last = (key, sub)
        self._ratios[key] = report.turn_ratios(self._time([self.reference, sub], self.runs))[1]
        return float(np.median(self._ratios[key])) * self.full

    def confirm(self, removed: Iterable[int]) -> float:
        """Times the selection again and keeps the median of all its rounds.

        The search's last candidate is confirmed so that one lucky timing does not decide it.
        The network last timed is kept, so confirming that selection builds nothing; any other
        is constructed again.
        """
        key = frozenset(int(i) for i in removed)
        self(key)
        if not key:
            return self.full
        from otoir import report

        sub = self._last[1] if self._last is not None and self._last[0] == key else self.model_of(key)
        more = report.turn_ratios(self._time([self.reference, sub], self.runs))[1]
        self._ratios[key] = np.concatenate([self._ratios[key], more])
        self._cache[key] = float(np.median(self._ratios[key])) * self.full
        self.confirmed.add(key)
        return self._cache[key]


def exact_flops_cost_model(model: ir.Model, groups: Sequence[Group], *,
                           analyses: AnalysisManager | None = None) -> CostModel:
    """:func:`flops_cost_model` (ranking, collateral included) with a :class:`FlopsCounter`
    (predictions: the constructed sub-network's FLOPs, exactly)."""
    cm = flops_cost_model(model, groups, analyses=analyses)
    cm.counter = FlopsCounter(model, groups)
    return cm


def measured_cost_model(model: ir.Model, groups: Sequence[Group], *, analyses: AnalysisManager | None = None,
                        threads: int = 1, batch: int = 1, cache: bool | str | os.PathLike = True,
                        table: LatencyTable | None = None, **counter: Any) -> CostModel:
    """:func:`cost_model` (the measured table: ranking, and a first bracket of the count) with
    a :class:`LatencyCounter` (predictions: the constructed deployment-form sub-network's
    measured latency, at the same ``threads`` and ``batch``). The one way ``target-latency``
    gets its cost model (``train``, ``zero-groups``, ``tools/bench_latency.py``). Without ONNX
    Runtime it is :func:`cost_model`'s FLOPs stand-in, unchanged.

    Args:
        counter: Keyword arguments of :class:`LatencyCounter` (``budget_s``, ``timer``, ...).
    """
    cm = cost_model(model, groups, analyses=analyses, threads=threads, batch=batch, cache=cache, table=table)
    if cm.source == "onnxruntime":
        cm.counter = LatencyCounter(model, groups, threads=threads, batch=batch, **counter)
    return cm


# ---------------------------------------------------------------------------------------------
# Selection


def _importance(scores: Sequence[float]) -> np.ndarray:
    """Importance in (0, 1] from redundancy scores (larger score = more redundant = less important).

    By rank, so the scale of the scores does not matter: the most redundant group gets
    ``1/G``, the least ``1``.
    """
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isfinite(s), s, -np.inf)
    order = np.lexsort((np.arange(s.size), -s))
    imp = np.empty(s.size)
    imp[order] = (np.arange(s.size) + 1) / max(s.size, 1)
    return imp


def _work_share(work: np.ndarray) -> np.ndarray | float:
    """Each group's FLOPs saving over the groups' mean (floored at 1e-3 of it): the weight of
    its importance in the work-weighted ranking of latency-aware selection."""
    w = np.asarray(work, dtype=np.float64)
    mean = float(w[w > 0].mean()) if (w > 0).any() else 0.0
    if mean <= 0.0:
        return 1.0
    return np.maximum(w / mean, 1e-3)


def _budget_select(groups: Sequence[Group], scores: Sequence[float], costs: CostModel, k: int | None,
                   target: float | None, checker: Any, option: str) -> list[int]:
    """The one cost-aware selection (latency and FLOPs): see :func:`latency_select`."""
    from otoir.analyses.validity import select_redundant

    if (k is None) == (target is None):
        fn = "flops_select" if option == "target-flops" else "latency_select"
        raise ValueError(f"{fn}: give exactly one of k= and {option.replace('-', '_')}=")
    sc = np.asarray(scores, dtype=np.float64)
    if len(sc) != len(groups):
        raise ValueError(f"{len(sc)} scores for {len(groups)} groups")
    save = costs.savings()
    imp = _importance(sc)
    finite = np.isfinite(sc)
    by_rank = np.where(finite, save / imp, -np.inf).tolist()
    if k is not None:
        return select_redundant(groups, by_rank, k, checker)
    if not 0.0 < target < 1.0:
        raise ValueError(f"{option} must be in (0, 1), got {target}")
    try:
        if costs.work is None:
            return _target_search(groups, by_rank, costs, target, checker)
        by_work = np.where(finite, save / (imp * _work_share(costs.work.savings())), -np.inf).tolist()
        found = [_target_search(groups, r, costs, target, checker) for r in (by_rank, by_work)]
    finally:
        if isinstance(costs.counter, LatencyCounter):
            costs.counter.release()
    goal = target * costs.full

    def merit(chosen: list[int]) -> tuple[bool, float, float]:
        cost = costs.predict(chosen)  # the counter's cached (confirmed) figure
        return cost <= goal, costs.work.layer_predict(chosen), -cost

    return max(found, key=merit)


def _target_search(groups: Sequence[Group], pr: list[float], costs: CostModel, target: float,
                   checker: Any) -> list[int]:
    """The smallest count of the ranking ``pr`` whose selection costs at most ``target`` of the
    full model's (the most that can be chosen when none does)."""
    from otoir.analyses.validity import select_redundant

    n_ok = int(np.isfinite(np.asarray(pr)).sum())
    goal = target * costs.full
    chosen_at: dict[int, list[int]] = {}
    cache: dict[int, tuple[list[int], float]] = {}

    def sel(k: int) -> list[int]:
        if k not in chosen_at:  # select_redundant applies every control (round-to too)
            chosen_at[k] = select_redundant(groups, pr, k, checker)
        return chosen_at[k]

    def at(k: int) -> tuple[list[int], float]:
        if costs.counter is not None:  # the counter caches per selection (and confirms)
            return sel(k), costs.predict(sel(k))
        if k not in cache:
            cache[k] = (sel(k), costs.predict(sel(k)))
        return cache[k]

    most = len(sel(n_ok))
    if not isinstance(costs.counter, LatencyCounter):
        return smallest_selection(at, most, goal)
    # Every measured count builds and times a sub-network, so the layer model (no timing)
    # proposes counts first: its count for the target, then its count for the target
    # rescaled by what the measurement said of the last proposal (measured ≈ c · predicted),
    # at most three proposals; the measured search then starts from the bracket they give.
    layer: dict[int, float] = {}

    def layer_at(k: int) -> tuple[list[int], float]:
        if k not in layer:
            layer[k] = costs.layer_predict(sel(k))
        return sel(k), layer[k]

    share = target
    tried: list[int] = []
    for _ in range(3):
        guess = _smallest_count(layer_at, most, share * costs.layer_full)
        if not 0 < guess < most or guess in tried:
            break
        tried.append(guess)
        measured = at(guess)[1] / max(costs.full, 1e-12)
        predicted = layer_at(guess)[1] / max(costs.layer_full, 1e-12)
        if measured <= 0 or predicted <= 0 or abs(measured - target) < 0.005:
            break
        share = target * predicted / measured
    # the answer is timed twice (its figure: the median of both timings' rounds); when that
    # misses the goal the search goes on above it (at most two more answers confirmed)
    for _ in range(3):
        k = _smallest_count(at, most, goal, known=tried)
        key = frozenset(sel(k))
        if k >= most or key in costs.counter.confirmed or costs.counter.confirm(sel(k)) <= goal:
            break
        tried.append(k)
    return sel(k)


def latency_select(groups: Sequence[Group], scores: Sequence[float], costs: CostModel, *, k: int | None = None,
                   target_latency: float | None = None, checker: Any = None) -> list[int]:
    """Latency-aware selection: importance per unit of latency saved, validity-checked.

    Groups are ranked by ``saving / importance`` (:meth:`CostModel.savings`) and walked by
    :func:`~otoir.analyses.validity.select_redundant` (so ``layer_caps``, the never-a-whole-
    tensor rule and GeZIG validity hold). Groups with ``-inf`` score are never chosen.

    A group's importance is its rank among the redundancy ``scores`` (the most redundant
    ``1/G``, the least ``1``: their scale does not matter). With ``target_latency`` on a
    measured cost model (:attr:`CostModel.work` set) the groups are also ranked with each
    importance weighed by the group's share of the work (the FLOPs removing it saves, over the
    groups' mean): redundancy-weighted *time per multiply-accumulate*, which removes first the
    channels the runtime spends most time on for the work they do (an inverted residual's
    expanded channels: depthwise and element-wise kernels, linear in the channels). Both
    rankings are searched and, of the selections that meet the target, the one that keeps more
    of the FLOPs is returned (then the faster). By rank alone a channel running through
    several blocks saves the most of everything and goes first: on the EfficientNet-B0-like
    net of ``tools/bench_latency.py`` the rank's selection ran at 0.49 of the latency with 0.42
    of the FLOPs, the work-weighted one at 0.50 with 0.48; on a small MobileNetV2 at 14×14,
    where a kernel's fixed cost dominates, the work-weighted one needed 392 groups where the
    rank's 136 reached the target with more of the FLOPs (0.54 against 0.49). With ``k``, the
    rank's ranking.

    Args:
        groups: Candidate groups (a :class:`~otoir.analyses.validity.GroupSet` keeps its checker).
        scores: Redundancy scores (larger = more redundant).
        costs: The cost model of these groups.
        k: Take exactly this many (when reachable).
        target_latency: Take the smallest count whose selection is predicted to cost at most
            this fraction of the full model's (found by bisection; the most that can be chosen
            when no count reaches it).
        checker: Validity checker (default: the groups').

    Returns:
        Indices into ``groups``, in acceptance order.

    Raises:
        ValueError: Neither or both of ``k`` and ``target_latency``, or a fraction outside (0, 1).
    """
    return _budget_select(groups, scores, costs, k, target_latency, checker, "target-latency")


def flops_select(groups: Sequence[Group], scores: Sequence[float], costs: CostModel, *, k: int | None = None,
                 target_flops: float | None = None, checker: Any = None) -> list[int]:
    """FLOPs-aware selection: :func:`latency_select`'s path on a FLOPs cost model.

    Groups are ranked by importance per FLOP saved (collateral included, :func:`_effects`) and
    the smallest validity-checked selection whose FLOPs are at most ``target_flops`` times the
    full model's is taken. With :func:`exact_flops_cost_model` the FLOPs of every selection the
    bisection tries are those of the constructed sub-network (:class:`FlopsCounter`), so the
    returned one meets the target exactly when any selection does.

    Raises:
        ValueError: Neither or both of ``k`` and ``target_flops``, or a fraction outside (0, 1).
    """
    return _budget_select(groups, scores, costs, k, target_flops, checker, "target-flops")


def smallest_selection(at: Callable[[int], tuple[list[int], float]], most: int, goal: float) -> list[int]:
    """The selection of the smallest count K ≤ ``most`` whose predicted cost ``at(K)[1]`` is at
    most ``goal`` (bisection: the prediction falls with K up to alignment noise); the selection
    of ``most`` when even that one does not meet the goal. ``at(K)`` is ``(selection, cost)``."""
    return at(_smallest_count(at, most, goal))[0]


def _smallest_count(at: Callable[[int], tuple[list[int], float]], most: int, goal: float,
                    known: Iterable[int] = ()) -> int:
    """The count of :func:`smallest_selection`.

    Without ``known``: bisection over ``(0, most]`` (``at(most)`` first). ``known``: counts
    already evaluated (cached by ``at``), e.g. estimates of the answer: the search starts from
    the tightest bracket they give — the smallest count meeting the goal and the largest below
    it that does not — and, on a side they leave open, steps of ``most / 64`` doubling away
    from them until the goal changes sides; then bisection inside. When the estimates are
    close, a few evaluations instead of ``log2(most) + 1``. Count 0 (nothing removed) is taken
    not to meet the goal.
    """
    pts = {int(k) for k in known if 0 < k < most}
    if not pts:
        hi = most
        if at(hi)[1] > goal:
            return hi
        lo = 0
    else:
        meet = [k for k in pts if at(k)[1] <= goal]
        top = min(meet) if meet else None
        fail = [k for k in pts if at(k)[1] > goal and (top is None or k < top)]
        step = max(1, most // 64)
        if top is not None and fail:
            lo, hi = max(fail), top
        elif top is not None:  # every estimate meets the goal: step down
            hi = top
            lo = max(0, hi - step)
            while lo > 0 and at(lo)[1] <= goal:
                hi, step = lo, 2 * step
                lo = max(0, hi - step)
        else:  # none does: step up
            lo = max(fail)
            hi = min(most, lo + step)
            while at(hi)[1] > goal:
                if hi == most:
                    return most
                lo, step = hi, 2 * step
                hi = min(most, lo + step)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if at(mid)[1] <= goal:
            hi = mid
        else:
            lo = mid
    return hi


class LatencySelector:
    """A selector for the optimizers (``selector(scores, k) -> indices``) that ranks by cost saved.

    With a target the count comes from the target, not ``k``: :attr:`variable_count` tells
    :class:`~otoir.optim.core.HybridCore` to accept it. The same selector serves
    ``target-latency`` (a latency :class:`CostModel`) and ``target-flops``
    (:func:`exact_flops_cost_model`; :func:`flops_selector`).

    Args:
        groups: The layout's groups (in layout order).
        costs: Their :class:`CostModel`.
        target_latency: Fraction of the full model's predicted cost to reach (None: ``k``).
        option: The option the target comes from (``target-latency`` or ``target-flops``).

    Attributes:
        predicted: After a call, the chosen selection's cost over the full model's: the
            counter's when the cost model has one (:class:`LatencyCounter`: the measured latency
            ratio of the constructed network; :class:`FlopsCounter`: its exact FLOPs ratio),
            else the layer model's prediction.
    """

    def __init__(self, groups: Sequence[Group], costs: CostModel, target_latency: float | None = None, *,
                 option: str = "target-latency") -> None:
        self.groups = groups
        self.costs = costs
        self.target_latency = target_latency
        self.option = option
        self.variable_count = target_latency is not None
        self.predicted: float | None = None
        self.remark = costs.remark

    def __call__(self, scores: Sequence[float], k: int) -> list[int]:
        if self.target_latency is not None:
            out = _budget_select(self.groups, scores, self.costs, None, self.target_latency, None, self.option)
        else:
            out = _budget_select(self.groups, scores, self.costs, k, None, None, self.option)
        self.predicted = self.costs.predict(out) / max(self.costs.full, 1e-12)
        return out


def runtime_aligned(model: ir.Model, groups: Sequence[Group], costs: CostModel) -> tuple[Sequence[Group], str]:
    """``groups`` with round-to made a multiple of the runtime's channel multiple, when that applies.

    The table measures each layer alone, so it sees the cost of a misaligned count in that
    layer but not the layout changes (NCHWc reorders) it forces on its neighbours, nor the slow
    path of a layer left with less than one block of input channels (a 1x1 convolution with 8
    of 64 inputs kept runs 4x slower per multiply-accumulate than with all 64, on ORT's 16-wide
    blocks); a latency-aware selection therefore keeps counts aligned: channel groups
    (:class:`~otoir.analyses.validity.GroupSet` without a validity checker) get round-to
    ``lcm(round-to, align)`` — the table's ``align`` when no round-to was given, and an
    explicit ``round-to=N`` still holds (a multiple of the lcm is a multiple of N).

    The output channels of a dense convolution are also kept in whole work units of the runtime
    (:func:`channel_work_unit`, ``units`` of the result) once they are more than one: ORT hands
    its threads output channels in sets of 4 blocks, so at 2 threads a convolution keeping 80
    of 128 outputs takes as long as one keeping all 128, whatever the thread count the table
    was measured at (at 1 thread whole units cost no more).

    Returns:
        ``(groups, remark)``; the remark is empty when nothing changed.
    """
    from otoir.analyses.validity import GroupSet, tensor_channels

    if costs.table is None or getattr(groups, "checker", None) is not None:
        return groups, ""
    align = costs.table.align
    # round-to=auto (the default, min_channels) asks nothing here: the table's block rules, on every tensor
    auto = bool(getattr(groups, "min_channels", 0))
    asked = 1 if auto else getattr(groups, "round_to", 1)
    n = math.lcm(asked, align)
    if align <= 1 or any("segment" in g.meta for g in groups):
        return groups, ""
    channels = {**tensor_channels(groups, model), **(getattr(groups, "channels", None) or {})}
    units = work_units(model, groups, align, channels)
    if n == asked and not auto and not units:
        return groups, ""
    out = GroupSet(groups, None, getattr(groups, "layer_caps", None), round_to=n, channels=channels, units=units)
    block = f"the channel block of ONNX Runtime's blocked convolutions here is {align}"
    unit = ""
    if units:
        u = max(units.values())
        unit = (f"; a dense convolution keeping more than {u} output channels keeps a multiple of {u} (its threads "
                f"take output channels {u} at a time)")
    if asked > 1:
        return out, f"kept channel counts are multiples of {n} (round-to={asked}; {block}){unit}"
    return out, f"kept channel counts are multiples of {n} ({block}; round-to= sets a multiple of it){unit}"


def work_units(model: ir.Model, groups: Sequence[Group], align: int, channels: Mapping[str, int]) -> dict[str, int]:
    """``{tensor: work unit}`` of the groups' tensors whose channels are a dense convolution's outputs.

    The unit is :func:`channel_work_unit` of the runtime's channel block ``align``; a tensor gets
    it when it has more channels than one unit (``channels``). Empty when the unit is one block.
    """
    dense: set[str] = set()
    for node in model.graph:
        if node.op_type == "Conv" and len(node.inputs) > 1 and node.inputs[1] is not None:
            g = node.attributes.get("group")
            if g is None or g.value == 1:
                dense.add(node.inputs[1].name)
    tensors: list[str] = []
    seen: set[str] = set()
    for g in groups:
        if not g.slices or g.slices[0].tensor in seen:
            continue
        seen.add(g.slices[0].tensor)
        if any(s.axis == 0 and s.tensor in dense for s in g.slices):
            tensors.append(g.slices[0].tensor)
    if not tensors:
        return {}
    unit = channel_work_unit(align)
    if unit <= align:
        return {}
    return {t: unit for t in tensors if channels.get(t, 0) > unit}


def latency_selector(model: ir.Model, groups: Sequence[Group], target_latency: float, *,
                     analyses: AnalysisManager | None = None, threads: int = 1, batch: int = 1,
                     cache: bool | str | os.PathLike = True, measured: bool = True) -> LatencySelector:
    """The optimizers' latency-aware selector for ``groups`` of ``model`` (see :func:`cost_model`).

    Groups are ranked by the measured table; with ``measured`` (the default) the count is found
    on the constructed deployment-form sub-networks' measured latency
    (:func:`measured_cost_model`, :class:`LatencyCounter`), else on the table's prediction.
    Channel counts are kept aligned to the runtime (:func:`runtime_aligned`). Its ``remark``
    says so, and when FLOPs stand in for the runtime.
    """
    make = measured_cost_model if measured else cost_model
    costs = make(model, groups, analyses=analyses, threads=threads, batch=batch, cache=cache)
    sel_groups, note = runtime_aligned(model, groups, costs)
    sel = LatencySelector(sel_groups, costs, target_latency)
    sel.remark = "; ".join(x for x in (costs.remark, note) if x)
    return sel


def cost_selector(option: str, model: ir.Model, groups: Sequence[Group], target: float, *,
                  analyses: AnalysisManager | None = None, threads: int = 1, batch: int = 1) -> LatencySelector:
    """The selector of a cost target: :func:`flops_selector` for ``target-flops``,
    :func:`latency_selector` for ``target-latency`` (the ``train`` and ``zero-groups`` passes),
    measured with ``threads`` intra-op threads at batch ``batch`` (``latency-threads``,
    ``latency-batch``).

    Raises:
        ValueError: Another option.
    """
    if option == "target-flops":
        return flops_selector(model, groups, target, analyses=analyses)
    if option == "target-latency":
        return latency_selector(model, groups, target, analyses=analyses, threads=threads, batch=batch)
    raise ValueError(f"unknown cost target '{option}' (target-flops or target-latency)")


def flops_selector(model: ir.Model, groups: Sequence[Group], target_flops: float, *,
                   analyses: AnalysisManager | None = None) -> LatencySelector:
    """The optimizers' FLOPs-aware selector for ``groups`` of ``model`` (``target-flops``).

    Ranking by importance per FLOP saved (:func:`flops_cost_model`, collateral included), the
    count by bisection on the constructed sub-network's exact FLOPs (:class:`FlopsCounter`).
    """
    return LatencySelector(groups, exact_flops_cost_model(model, groups, analyses=analyses), target_flops,
                           option="target-flops")
