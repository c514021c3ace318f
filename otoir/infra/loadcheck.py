"""The load check: proof that a model about to be written loads and runs, and pass provenance.

Before a model is written (:func:`otoir.save`, ``otoir-opt``), :func:`check_loadable` requires

1. ``onnx.checker.check_model(full_check=True)`` (which includes strict shape inference),
2. when ONNX Runtime is installed, a CPU inference session, and
3. one run of that session on random inputs of the declared shapes and types (symbolic
   dimensions bound to small values, see :func:`otoir.runtime.random_feeds`): a session can be
   created for some broken models that fail only when run (a weight sliced for one use only).

A failure raises :class:`~otoir.errors.LoadCheckError` naming the offending node and the pass
that made it. Provenance: the pass manager calls :func:`snapshot` before and :func:`stamp` after
each pass; every node that pass created or changed (op, inputs, attributes, or the tensor of a
constant input) gets ``node.meta["otoir.pass"] = <pass name>`` (in-memory metadata, never
serialized). Nodes changed by a nested pass keep the nested pass's name.

Where the *input* already fails some of these checks, :func:`baseline` records which it passes;
``check_loadable(result, baseline=...)`` then requires only those, so a pre-existing problem
(an operator ORT does not know, a newer opset) is reported once, up front
(:attr:`Baseline.note`), and does not fail the run.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from otoir.errors import LoadCheckError, RuntimeModelError

__all__ = ["PASS_KEY", "Baseline", "baseline", "check_loadable", "find_problem", "snapshot", "stamp", "made_by"]

#: ``node.meta`` key of the pass that last created or changed a node.
PASS_KEY = "otoir.pass"

#: Above this many initializer bytes the check goes through a temporary file with external data
#: (a ``ModelProto`` cannot be serialized beyond 2 GB).
_BIG = 1_800_000_000

_CHECKS = ("onnx.checker", "onnx.checker-basic", "session", "run")
_PHRASE = {
    "onnx.checker": "does not pass onnx.checker (full check)",
    "onnx.checker-basic": "does not pass onnx.checker",
    "session": "does not load in ONNX Runtime",
    "run": "does not run in ONNX Runtime",
}


# ---------------------------------------------------------------------------------------------
# Provenance


def _all_nodes(model: ir.Model):
    yield from model.graph.all_nodes()


def _fingerprint(node: ir.Node) -> tuple:
    ins = node.inputs
    return (
        node.op_type,
        node.domain,
        tuple([id(v) for v in ins]),
        tuple([0 if v is None or v.const_value is None else id(v.const_value) for v in ins]),
        tuple([(k, id(a)) for k, a in node.attributes.items()]),
        len(node.outputs),
    )


_generation = itertools.count(1)
_GEN_KEY = PASS_KEY + ".generation"


def snapshot(model: ir.Model) -> tuple[int, dict[int, tuple]]:
    """Fingerprints of every node (taken before a pass; see :func:`stamp`).

    The nodes themselves are held too, so that a node the pass deletes cannot hand its ``id``
    to a node the pass creates (which would then pass for unchanged).
    """
    return next(_generation), {id(n): (n, _fingerprint(n)) for n in _all_nodes(model)}


def stamp(model: ir.Model, before: tuple[int, dict[int, tuple]], pass_name: str) -> int:
    """Marks the nodes created or changed since ``before`` as made by ``pass_name``.

    Nodes a nested pass stamped meanwhile keep that stamp. Returns the number stamped.
    """
    start, prints = before
    generation = next(_generation)
    n_stamped = 0
    for node in _all_nodes(model):
        old = prints.get(id(node))
        if old is not None and old[0] is node and old[1] == _fingerprint(node):
            continue
        if node.meta.get(_GEN_KEY, 0) > start:  # stamped by a pass nested in this one
            continue
        node.meta[PASS_KEY] = pass_name
        node.meta[_GEN_KEY] = generation
        n_stamped += 1
    return n_stamped


def made_by(node: ir.Node) -> str | None:
    """The pass that last created or changed ``node`` (None: it came with the input)."""
    return node.meta.get(PASS_KEY)


# ---------------------------------------------------------------------------------------------
# Checks


@dataclass(frozen=True)
class Baseline:
    """Which checks an input model passes.

    Attributes:
        passes: The checks it passes, among ``onnx.checker`` (full), ``onnx.checker-basic``,
            ``session`` and ``run``.
        problems: One line per failed check of the input.
    """

    passes: frozenset[str] = frozenset(_CHECKS)
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def note(self) -> str | None:
        """One line saying what the input fails (None when it passes everything)."""
        if not self.problems:
            return None
        return f"{self.problems[0]}; the result is checked only as far as the input passes"


def baseline(model: ir.Model, *, subject: str = "the input model") -> Baseline:
    """Runs every check on ``model`` (an input) and records which it passes."""
    passes: set[str] = set()
    problems: list[str] = []
    with _prepared(model) as prep:
        for check in _CHECKS:
            if check == "onnx.checker-basic" and "onnx.checker" in passes:
                passes.add(check)
                continue
            if check == "run" and "session" not in passes:
                continue
            problem = _one(prep, check)
            if problem is None:
                passes.add(check)
            else:
                problems.append(_message(model, prep, subject, check, *problem, provenance=False))
    return Baseline(frozenset(passes), tuple(problems))


def find_problem(model: ir.Model, *, baseline: Baseline | None = None, run: bool = True,
                 subject: str = "the model") -> LoadCheckError | None:
    """The first check ``model`` fails, as an error (None when it passes).

    Args:
        model: The model (not modified).
        baseline: Only the checks the input passed (see :func:`baseline`); None: all.
        run: Also run the session once on random inputs.
        subject: How the message names the model.
    """
    wanted = [c for c in _CHECKS if baseline is None or c in baseline.passes]
    if "onnx.checker" in wanted:
        wanted.remove("onnx.checker-basic")
    if not run and "run" in wanted:
        wanted.remove("run")
    with _prepared(model) as prep:
        for check in wanted:
            problem = _one(prep, check)
            if problem is not None and baseline is None and check == "session" and prep.unsupported:
                break  # this ORT cannot judge the model (newer opset, custom-domain op): checker only
            if problem is not None:
                reason, node_name = problem
                msg = _message(model, prep, subject, check, reason, node_name)
                node = prep.node_of(node_name)
                return LoadCheckError(msg, check=check, reason=reason,
                                      node=_display_name(prep, node_name, node),
                                      op_type=node.op_type if node is not None else None,
                                      pass_name=made_by(node) if node is not None else None)
    return None


def check_loadable(model: ir.Model, *, baseline: Baseline | None = None, run: bool = True,
                   subject: str = "the model") -> None:
    """Raises :class:`~otoir.errors.LoadCheckError` unless ``model`` passes the load check.

    See :func:`find_problem` for the arguments.
    """
    err = find_problem(model, baseline=baseline, run=run, subject=subject)
    if err is not None:
        raise err


# ---------------------------------------------------------------------------------------------
# Internals


class _Prepared:
    """The serialized model (unnamed main-graph nodes named ``otoir_node_<i>``) and a name map."""

    def __init__(self, model: ir.Model) -> None:
        from otoir import runtime
        from otoir.io import model_nbytes

        self.model = model
        self.tmpdir: str | None = None
        self.proto = None
        self.session: Any = None
        self.unsupported = False
        self.path: str | None = None
        self.by_name: dict[str, ir.Node] = {}
        self.index_name: dict[str, int] = {}
        main = list(model.graph)
        for node in _all_nodes(model):
            if node.name:
                self.by_name.setdefault(node.name, node)
        if model_nbytes(model) >= _BIG:
            self.tmpdir = tempfile.mkdtemp(prefix="otoir-loadcheck-")
            self.path = os.path.join(self.tmpdir, "model.onnx")
            ir.save(model, self.path, external_data="model.onnx.data")
            return
        self.proto = runtime.model_proto(model)
        for i, (pnode, node) in enumerate(zip(self.proto.graph.node, main, strict=False)):
            if not pnode.name:
                pnode.name = f"otoir_node_{i}"
                self.by_name[pnode.name] = node
                self.index_name[pnode.name] = i
        self.bytes = self.proto.SerializeToString()

    def node_of(self, name: str | None) -> ir.Node | None:
        return self.by_name.get(name) if name else None

    def close(self) -> None:
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


@contextlib.contextmanager
def _prepared(model: ir.Model) -> Iterator[_Prepared]:
    prep = _Prepared(model)
    try:
        yield prep
    finally:
        prep.close()


_CHECKER_NODE = (
    re.compile(r"node name: ([^)\s]+)\)"),
    re.compile(r"name:\s*(\S+)\s+OpType:"),
    re.compile(r"[Nn]ode \(([^)]+)\)"),
)


def _one(prep: _Prepared, check: str) -> tuple[str, str | None] | None:
    """(reason, node name) when ``check`` fails, else None."""
    if check.startswith("onnx.checker"):
        import onnx.checker

        try:
            onnx.checker.check_model(prep.path if prep.path else prep.proto, full_check=check == "onnx.checker")
        except Exception as exc:  # ValidationError, InferenceError, ...
            text = " ".join(str(exc).split())
            node = None
            for pattern in _CHECKER_NODE:
                m = pattern.search(text)
                if m:
                    node = m.group(1)
                    break
            text = re.sub(r"^\[ShapeInferenceError\] Inference error\(s\): \(op_type:[^)]*\): ", "", text)
            return text, node
        return None
    from otoir import runtime

    if not runtime.available():
        return None
    from otoir.infra.verifier import recursive_function

    cycle = recursive_function(prep.model)
    if cycle is not None:  # ONNX Runtime 1.19 segfaults creating a session for it
        return f"model-local function {' -> '.join(cycle)} calls itself (ONNX Runtime cannot load recursive functions)", None
    try:
        if prep.session is None:
            # unoptimised: ORT's graph transformers rename the nodes its errors would name
            prep.session = runtime.session(prep.path if prep.path else prep.bytes, optimization="disable")
        if check == "run":
            # integer inputs all 0: a valid index into any table (token types, positions)
            runtime.run(prep.session, runtime.random_feeds(prep.model, seed=0, int_high=1))
    except RuntimeModelError as exc:
        prep.unsupported = exc.unsupported
        return exc.reason, exc.node
    return None


def _display_name(prep: _Prepared, name: str | None, node: ir.Node | None) -> str | None:
    if name is None:
        return None
    if name in prep.index_name:
        return f"#{prep.index_name[name]}"
    return name


def _message(model: ir.Model, prep: _Prepared, subject: str, check: str, reason: str, node_name: str | None,
             *, provenance: bool = True) -> str:
    from otoir import runtime

    node = prep.node_of(node_name)
    shown = _display_name(prep, node_name, node)
    for name, idx in prep.index_name.items():  # ORT and the checker see our temporary names
        reason = reason.replace(name, f"#{idx}")
    ver = runtime.version()
    phrase = _PHRASE[check]
    if check in ("session", "run") and ver:
        failed = re.match(rf"ONNX Runtime {re.escape(ver)} failed running (\w+): ", reason)
        if reason.startswith(f"ONNX Runtime {ver}: "):
            phrase += f" {ver}"
            reason = reason.removeprefix(f"ONNX Runtime {ver}: ")
        elif failed:  # the node tag names the operator
            phrase += f" {ver}"
            reason = reason[failed.end():] if node is not None else f"{failed.group(1)}: {reason[failed.end():]}"
        elif reason.startswith("ONNX Runtime"):  # "ONNX Runtime 1.19.2 cannot run opset 23 (max 21)"
            phrase = "does not load" if check == "session" else "does not run"
    tags = []
    if shown is not None:
        tags.append(f"node {shown}" + (f" ({node.op_type})" if node is not None else ""))
    if provenance:
        by = made_by(node) if node is not None else None
        if by is not None:
            tags.append(f"made by {by}")
        elif node is None:
            passes = sorted({p for n in _all_nodes(model) if (p := made_by(n)) is not None})
            if passes:
                tags.append(f"changed by {', '.join(passes)}")
    where = f"[{', '.join(tags)}] " if tags else ""
    return f"{subject} {phrase}: {where}{reason}"
