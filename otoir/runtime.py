"""The one place where otoir talks to ONNX Runtime (CPU inference).

Everything that runs a model goes through here: reports (latency, accuracy, output agreement),
training-side evaluation, the surgery shape probe, the load check before a model is written
(:mod:`otoir.infra.loadcheck`) and the tests.

- :func:`session` builds an ``InferenceSession`` (CPU provider, thread count, graph optimisation
  level) from an onnx-ir model, a ``ModelProto``, bytes or a path. ORT's own log is silenced:
  its coloured lines never reach stderr; failures come back as exceptions instead.
- :func:`run` / :func:`run_model` run it; feeds for inputs the model does not have are ignored.
- :func:`random_feeds` makes inputs of the declared shapes and types: floats are standard
  normal, integers (token ids, positions) small non-negative numbers, bools random masks;
  symbolic dimensions are bound to small values (the same symbol gets the same value in every
  input), fixed dimensions are kept whatever their size.
- :func:`max_rel_diff` / :func:`output_agreement` compare outputs as
  ``max|a - b| / max|a|`` (:func:`output_scale`: the reference output's own scale, 1 for an
  all-zero output); :func:`evaluate` gives loss and top-1 accuracy.

When ONNX Runtime cannot create or run a session for a model (an opset or IR version newer than
it supports, an operator or type it has no kernel for, shapes that do not fit), the error is a
:class:`~otoir.errors.RuntimeModelError` whose one-line message says what failed and why, e.g.
``ONNX Runtime 1.19.2 cannot run opset 23 (max 21)``, with the node named when ORT names it.
Without onnxruntime installed, :class:`~otoir.errors.RuntimeUnavailableError` says how to
install it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from otoir.errors import RuntimeModelError, RuntimeUnavailableError

__all__ = [
    "onnxruntime",
    "available",
    "version",
    "session",
    "run",
    "run_model",
    "model_proto",
    "random_feeds",
    "data_inputs",
    "max_rel_diff",
    "output_agreement",
    "EvalResult",
    "evaluate",
    "accuracy",
    "describe_ort_error",
    "OPTIMIZATION_LEVELS",
    "TIMING_SPIN",
]

#: ORT log severity used for sessions and the default logger: 4 = FATAL only. Everything ORT
#: would log at ERROR level also comes back as the exception we turn into a one-line message.
_LOG_SEVERITY = 4

#: Names of the graph optimisation levels accepted by :func:`session`.
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
#: How every session timed side by side spins (:func:`session`): within a run, not between runs.
TIMING_SPIN = "run"

_INSTALL_HINT = "ONNX Runtime is not installed: pip install 'otoir[ort]' (or 'otoir[train]')"
_default_logger_quiet = False


def _ort() -> Any:
    global _default_logger_quiet
    blocked = False
    if "onnxruntime" not in sys.modules and "onnxruntime.training.ortmodule" not in sys.modules:
        # The onnxruntime-training build imports ORTModule, and with it torch (~2 s), from its
        # __init__ only to probe whether ORTModule works; otoir never uses ORTModule. Without
        # it the probe says "not present" and ORT is otherwise unchanged (the training API
        # imports normally later).
        sys.modules["onnxruntime.training.ortmodule"] = None  # type: ignore[assignment]
        blocked = True
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise RuntimeUnavailableError(f"{_INSTALL_HINT} ({exc})") from None
    finally:
        if blocked and sys.modules.get("onnxruntime.training.ortmodule", 0) is None:
            del sys.modules["onnxruntime.training.ortmodule"]
    if not _default_logger_quiet:  # the environment logger also prints (before any session)
        ort.set_default_logger_severity(_LOG_SEVERITY)
        _default_logger_quiet = True
    return ort


def onnxruntime() -> Any:
    """The ``onnxruntime`` module, imported quietly (see the module docstring).

    Raises:
        RuntimeUnavailableError: It is not installed.
    """
    return _ort()


def available() -> bool:
    """Whether onnxruntime can be imported."""
    try:
        _ort()
    except RuntimeUnavailableError:
        return False
    return True


def version() -> str | None:
    """The installed onnxruntime version, or None."""
    try:
        return str(_ort().__version__)
    except RuntimeUnavailableError:
        return None


# ---------------------------------------------------------------------------------------------
# Sessions


def model_proto(model: ir.Model) -> Any:
    """The ``onnx.ModelProto`` of ``model`` with every tensor inline (:func:`otoir.io.inline_proto`)."""
    from otoir.io import inline_proto

    return inline_proto(model)


def session(model: ir.Model | Any, *, threads: int | None = None, optimization: str = "all",
            inter_threads: int | None = None, spinning: bool | str | None = None,
            profile: str | None = None) -> Any:
    """Creates a CPU ``onnxruntime.InferenceSession``.

    Args:
        model: An onnx-ir model, an ``onnx.ModelProto``, serialized bytes, or a path.
        threads: Intra-op threads (None: ORT's default).
        optimization: Graph optimisation level, one of :data:`OPTIMIZATION_LEVELS`. Use
            ``"disable"`` for training-mode BatchNormalization: ORT 1.19 fuses Conv+BN ignoring
            ``training_mode``.
        inter_threads: Inter-op threads (None: ORT's default).
        spinning: Whether the intra-op thread pool spins waiting for work (None: ORT's default,
            on, also between runs; False: never, every parallel section wakes the pool's
            threads; ``"run"``: while a run is in progress, stopped when it returns, ORT's
            ``session.force_spinning_stop``). Timings of several sessions side by side use
            ``"run"`` (:data:`TIMING_SPIN`): spinning between runs, the pool of the session that
            just ran takes the cores from the next one (measured on 2 cores: a batch-64 ResNet
            took 23.4 ms interleaved with two other sessions, 8.1 ms alone); never spinning,
            each op pays a thread wake-up that a deployed session (spinning, ORT's default) does
            not pay (MobileNetV2, 224x224, 2 threads, batch 1: 5.4 ms not spinning, 4.4 to 4.9
            ms spinning within runs).
        profile: Record ORT's per-node profile, written by ``end_profiling()`` to a JSON file
            whose name starts with this prefix (None: no profiling).

    Raises:
        RuntimeUnavailableError: onnxruntime is not installed.
        RuntimeModelError: ORT cannot load the model; the message says why in one line.
    """
    ort = _ort()
    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, got '{optimization}'")
    opts = ort.SessionOptions()
    opts.log_severity_level = _LOG_SEVERITY
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if threads:
        opts.intra_op_num_threads = int(threads)
    if inter_threads:
        opts.inter_op_num_threads = int(inter_threads)
    if spinning not in (None, True, False, "run"):
        raise ValueError(f"spinning must be True, False, None or 'run', got {spinning!r}")
    if spinning is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if spinning == "run":
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(profile)
    if isinstance(model, ir.Model):
        data: Any = model_proto(model).SerializeToString()
    elif isinstance(model, (bytes, str)):
        data = model
    elif hasattr(model, "SerializeToString"):
        data = model.SerializeToString()
    else:
        data = str(model)  # os.PathLike
    try:
        return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own pybind exception types
        raise _model_error(exc, "load") from None


def run(sess: Any, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> list[np.ndarray]:
    """Runs a session; feeds for inputs it does not have are ignored.

    Raises:
        RuntimeModelError: ORT failed while running (the message names the node).
    """
    wanted = {i.name for i in sess.get_inputs()}
    try:
        return list(sess.run(list(outputs) if outputs is not None else None,
                             {k: v for k, v in feeds.items() if k in wanted}))
    except Exception as exc:
        raise _model_error(exc, "run") from None


def run_model(model: ir.Model | Any, feeds: Mapping[str, np.ndarray], *, outputs: Sequence[str] | None = None,
              **session_kwargs: Any) -> list[np.ndarray]:
    """Creates a session (see :func:`session`) and runs it once; returns the outputs in order."""
    return run(session(model, **session_kwargs), feeds, outputs)


# ---------------------------------------------------------------------------------------------
# Error messages


_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_SOURCE = re.compile(r"(/\S*onnxruntime\S*|\S+\.(?:h|cc|cpp|hpp)):\d+\s+")


def _strip_source(text: str) -> str:
    """Removes ``/onnxruntime_src/x.cc:12 void f(args...) `` source locations from ORT text."""
    while True:
        m = _SOURCE.search(text)
        if m is None:
            return text
        i = m.end()
        # skip the C++ signature: up to the parenthesis that closes its argument list
        depth, j, opened = 0, i, False
        while j < len(text):
            c = text[j]
            if c == "(":
                depth += 1
                opened = True
            elif c == ")":
                depth -= 1
                if opened and depth == 0:
                    j += 1
                    break
            j += 1
        if not opened:
            j = i
        rest = text[j:].lstrip()
        if rest.startswith("const "):
            rest = rest[6:]
        text = text[: m.start()] + rest


def describe_ort_error(exc: BaseException | str) -> tuple[str, str | None]:
    """(one-line reason, node name or None) for an ONNX Runtime exception.

    The reason drops ORT's status prefix and C++ source locations; opset, IR version and
    missing-operator failures get a short standard wording.
    """
    text = " ".join(str(exc).split())
    text = _PREFIX.sub("", text)
    text = text.replace("Failed to load model with error: ", "")
    text = _strip_source(text).strip()
    ver = version() or "?"
    m = re.search(r"Opset (\d+) is under development.*?Current official support for domain (\S+) is till opset (\d+)", text)
    if m:
        dom = "" if m.group(2) in ("ai.onnx", "") else f" of domain {m.group(2)}"
        return f"ONNX Runtime {ver} cannot run opset {m.group(1)}{dom} (max {m.group(3).rstrip('.')})", None
    m = re.search(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", text)
    if m:
        return f"ONNX Runtime {ver} cannot load IR version {m.group(1)} (max {m.group(2)})", None
    node = None
    m = re.search(r"In Node, \(\"([^\"]*)\", (\w+), \"([^\"]*)\"", text)
    if m:
        node = m.group(1) or None
        m2 = re.search(r"Error (.*)$", text)
        if m2:
            return f"ONNX Runtime {ver}: {m2.group(1).rstrip('.')} (operator {_op(m.group(3), m.group(2))})", node
    m = re.search(r"([\w.]*):(\w+)\((-?\d+)\) is not a registered function/op", text)
    if m:
        return f"ONNX Runtime {ver} does not know operator {_op(m.group(1), m.group(2))}", None
    m = re.search(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'", text)
    if m:
        return (f"ONNX Runtime {ver} has no CPU kernel for {m.group(1)} (opset {m.group(2)}) with these "
                f"input types", m.group(3) or None)
    m = re.search(r"Non-zero status code returned while running (\w+) node\. Name:'([^']*)' Status Message: (.*)$", text)
    if m:
        msg = re.sub(r"^[^.]*? was false\.\s*", "", m.group(3).strip())
        return f"ONNX Runtime {ver} failed running {m.group(1)}: {msg}", m.group(2) or None
    m = re.search(r"Node \(([^)]*)\) Op \((\w+)\) (.*)$", text)
    if m:
        return f"ONNX Runtime {ver}: {m.group(3)} ({m.group(2)})", m.group(1) or None
    m = re.search(r"in node \(([^)]*)\)", text)
    if m:
        node = m.group(1) or None
    return f"ONNX Runtime {ver}: {text}", node


def _op(domain: str, op: str) -> str:
    return op if domain in ("", "ai.onnx") else f"{domain}::{op}"


#: Reasons that say this ORT lacks support (a newer opset or IR version, an operator of a
#: custom domain whose library is not loaded, a kernel for these types), not that the model is
#: malformed.
_UNSUPPORTED = re.compile(r"cannot run opset|cannot load IR version|does not know operator|has no CPU kernel"
                          r"|No Op registered for .*\(operator [\w.]+::\w+\)")


def _model_error(exc: BaseException, stage: str) -> RuntimeModelError:
    reason, node = describe_ort_error(exc)
    if len(reason) > 400:
        reason = reason[:397] + "..."
    return RuntimeModelError(reason, node=node, stage=stage, unsupported=bool(_UNSUPPORTED.search(reason)))


# ---------------------------------------------------------------------------------------------
# Inputs


def data_inputs(model: ir.Model) -> list[ir.Value]:
    """The graph inputs that are not initializers (what a caller feeds)."""
    inits = set(model.graph.initializers)
    return [v for v in model.graph.inputs if v.name not in inits]


def _np_dtype(dtype: ir.DataType | None) -> Any:
    if dtype is None:
        return np.float32
    try:
        return dtype.numpy()
    except Exception:  # noqa: BLE001 - a type numpy cannot hold: ORT will say what it misses
        return np.float32


def random_feeds(model: ir.Model, seed: int = 0, *, batch: int = 2, size: int | None = None,
                 sizes: Mapping[str, int] | None = None, int_high: int = 4) -> dict[str, np.ndarray]:
    """Random feeds for the data inputs of ``model``, of their declared shapes and types.

    Fixed dimensions are kept (whatever their size, zero included). A symbolic or unknown
    dimension is bound to ``sizes[symbol]`` when given, else to ``batch`` on axis 0 and to
    ``size`` (default: ``batch``) elsewhere; the same symbol gets the same value in every input.

    Values: floating point standard normal; integers in ``[0, int_high)`` (safe as token ids,
    positions or indices of small tables); bools random.

    Args:
        model: The model.
        seed: RNG seed.
        batch: Value of symbolic dimensions on axis 0.
        size: Value of other symbolic dimensions (default: ``batch``).
        sizes: Values of named symbolic dimensions.
        int_high: Integer inputs are drawn from ``[0, int_high)``.
    """
    rng = np.random.default_rng(seed)
    bound: dict[str, int] = dict(sizes or {})
    feeds: dict[str, np.ndarray] = {}
    for v in data_inputs(model):
        dims: list[int] = []
        for axis, d in enumerate(v.shape.dims if v.shape is not None else ()):
            if isinstance(d, int):
                dims.append(d)
                continue
            default = batch if axis == 0 or size is None else size
            sym = getattr(d, "value", None)
            if isinstance(sym, str):
                dims.append(bound.setdefault(sym, default))
            else:
                dims.append(default)
        dtype = _np_dtype(v.dtype)
        if dtype is np.bool_ or np.dtype(dtype) == np.bool_:
            feeds[v.name] = rng.integers(0, 2, dims).astype(np.bool_)
        elif np.issubdtype(np.dtype(dtype), np.integer):
            feeds[v.name] = rng.integers(0, int_high, dims).astype(dtype)
        elif np.dtype(dtype).kind == "U" or np.dtype(dtype) == np.object_:
            feeds[v.name] = np.full(dims, "a", dtype=object)
        else:
            feeds[v.name] = rng.standard_normal(dims).astype(dtype)
    return feeds


# ---------------------------------------------------------------------------------------------
# Comparing and evaluating


def output_scale(x: np.ndarray) -> float:
    """The scale an output difference is measured against: ``max|x|`` of the reference output
    (1 when it is all zero, where only an absolute difference means anything).

    Its own scale, not ``max(1, max|x|)``: an output of scale 0.01 compared against 1 would pass
    a ``1e-4`` check with a 1 % error.
    """
    m = float(np.max(np.abs(np.asarray(x, dtype=np.float64)))) if np.size(x) else 0.0
    return m if m > 0.0 else 1.0


def max_rel_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Largest ``max|a - b| / max|a|`` (:func:`output_scale`) over pairs of outputs (inf on a
    shape mismatch)."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.shape != y.shape:
            return float("inf")
        if x.size == 0:
            continue
        worst = max(worst, float(np.max(np.abs(x - y))) / output_scale(x))
    return worst


def _batched(inputs: np.ndarray | Mapping[str, np.ndarray], names: list[str], start: int, stop: int) -> dict[str, np.ndarray]:
    if isinstance(inputs, Mapping):
        return {k: np.asarray(x)[start:stop] for k, x in inputs.items()}
    return {names[0]: np.asarray(inputs)[start:stop]}


def output_agreement(reference: ir.Model, candidate: ir.Model, inputs: np.ndarray | Mapping[str, np.ndarray],
                     batch: int = 256, *, threads: int | None = None) -> float:
    """``max|y_ref - y_cand| / max|y_ref|`` (:func:`output_scale`) over all graph outputs and batches.

    Args:
        reference: The reference model.
        candidate: The model under test (same graph outputs, by position).
        inputs: One array (the single data input) or input name -> array, batch first.
        batch: Batch size.
        threads: Intra-op threads.

    Raises:
        RuntimeModelError: ORT cannot run one of the models.
    """
    sa, sb = session(reference, threads=threads), session(candidate, threads=threads)
    na, nb = [i.name for i in sa.get_inputs()], [i.name for i in sb.get_inputs()]
    n = len(next(iter(inputs.values()))) if isinstance(inputs, Mapping) else len(inputs)
    worst = 0.0
    for s in range(0, n, max(1, int(batch))):
        a = run(sa, _batched(inputs, na, s, s + batch))
        b = run(sb, _batched(inputs, nb, s, s + batch))
        worst = max(worst, max_rel_diff(a, b))
    return worst


@dataclass(frozen=True)
class EvalResult:
    """Evaluation of a model on a labelled set.

    Attributes:
        loss: Mean loss.
        accuracy: Top-1 accuracy (class labels only).
        samples: Number of samples.
    """

    loss: float
    accuracy: float | None
    samples: int


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``logits`` (classes on axis 1) against integer ``labels``."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return 0.0
    return float((np.asarray(logits).argmax(axis=1) == labels).mean())


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _float32(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating) and x.dtype != np.float32:
        x = x.astype(np.float32)
    return np.asarray(x, order="C")  # (ascontiguousarray would make a 0-d input 1-d)


def evaluate(model: ir.Model | Any, inputs: np.ndarray | Sequence[np.ndarray], labels: np.ndarray,
             batch: int = 256, *, loss: str = "cross-entropy", output: str | None = None,
             threads: int | None = None) -> EvalResult:
    """Mean loss and top-1 accuracy of an inference-form model on a labelled set.

    Args:
        model: The model (anything :func:`session` takes), in inference form.
        inputs: Input array (or one array per data input), batch first; floats go in as float32.
        labels: int class labels (accuracy and cross-entropy) or float targets (MSE).
        batch: Batch size.
        loss: ``cross-entropy``, ``mse`` or ``output`` (the mean of the chosen output).
        output: Graph output to evaluate (default: the first).
        threads: Intra-op threads.

    Raises:
        RuntimeModelError: ORT cannot run the model.
    """
    sess = session(model, threads=threads)
    in_names = [i.name for i in sess.get_inputs()]
    out_name = output or sess.get_outputs()[0].name
    xs = [_float32(x) for x in ([inputs] if isinstance(inputs, np.ndarray) else list(inputs))]
    y = np.asarray(labels)
    n = xs[0].shape[0]
    total, correct = 0.0, 0
    is_class = np.issubdtype(y.dtype, np.integer)
    for s in range(0, n, max(1, int(batch))):
        (z,) = run(sess, {k: x[s : s + batch] for k, x in zip(in_names, xs, strict=False)}, [out_name])
        yb = y[s : s + batch]
        if loss == "output":
            total += float(np.sum(z)) * len(yb) / max(1, z.size) if z.ndim else float(z) * len(yb)
        elif loss == "mse":
            t = yb
            if is_class:
                t = np.zeros_like(z)
                t[np.arange(len(yb)), yb] = 1.0
            total += float(np.mean((z - t) ** 2, axis=tuple(range(1, z.ndim)) or None).sum())
        else:
            lp = _log_softmax(z.astype(np.float64))
            picked = np.take_along_axis(lp, yb[:, None].astype(np.int64), axis=1)
            total += float(-picked.sum()) / (np.prod(z.shape[2:]) if z.ndim > 2 else 1)
        if is_class and z.ndim >= 2:
            correct += int((z.argmax(axis=1) == yb).sum())
    return EvalResult(total / max(1, n), (correct / n) if is_class and n else None, n)
