"""The pass manager: runs a pipeline of passes with verification and instruments.

Container passes (``repeat``, ``otoir-erase``, ``otoir-prune``) run their child passes through
:meth:`PassContext.run_nested`, the one nested-run entry point: each child gets its own
context, the instruments see it (``before_pass``/``after_pass`` nest inside the parent's),
the verifier runs after it, and its statistics and results are recorded separately.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from otoir.errors import InputError, PassFailure, PipelineError, VerifierError
from otoir.infra.analysis import AnalysisManager
from otoir.infra.diagnostics import Diagnostic, DiagnosticSink, Severity
from otoir.infra.instruments import Instrument
from otoir.infra.loadcheck import snapshot, stamp
from otoir.infra.passes import Pass, PassContext
from otoir.infra.pipeline import PipelineElement, parse_pipeline
from otoir.infra.registry import get_pass
from otoir.infra.verifier import verify_model

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["PassManager", "PassRecord", "PipelineResult", "build_passes"]


@dataclass
class PassRecord:
    """One pass run inside a pipeline run.

    Attributes:
        name: The pass name.
        text: The pass's canonical pipeline text.
        depth: 0 for top-level passes, 1 for children of a container pass, and so on.
        changed: Whether the pass changed the model.
        statistics: The statistics it reported.
        results: What it left in ``ctx.results`` (only this run's, never merged).
    """

    name: str
    text: str
    depth: int
    changed: bool
    statistics: dict[str, int | float]
    results: dict[str, Any]


@dataclass
class PipelineResult:
    """What a pipeline run produced.

    Attributes:
        changed: Whether any pass changed the model.
        statistics: Per pass run, in completion order (children before their container):
            (pass text, statistics dict).
        diagnostics: Every diagnostic emitted (warnings and remarks included).
        analyses: The analysis manager at the end (cached analyses are valid for the result).
        records: Every pass run, in completion order, with its own results.
    """

    changed: bool = False
    statistics: list[tuple[str, dict]] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    analyses: AnalysisManager | None = None
    records: list[PassRecord] = field(default_factory=list)

    @property
    def results(self) -> dict[str, Any]:
        """Every ``ctx.results`` key with the value of the last pass run that set it.

        Use :meth:`results_of` for the values of every run (two ``train`` passes, say).
        """
        out: dict[str, Any] = {}
        for r in self.records:
            out.update(r.results)
        return out

    def results_of(self, key: str) -> list[Any]:
        """The values every pass run left under ``key``, in completion order."""
        return [r.results[key] for r in self.records if key in r.results]


def build_passes(elements: list[PipelineElement]) -> list[Pass]:
    """Instantiates parsed pipeline elements.

    Raises:
        PipelineError: Unknown pass or bad option (the message names the pass).
    """
    out = []
    for el in elements:
        cls = get_pass(el.name)
        if cls.takes_pipeline and el.children is None:
            raise PipelineError(f"pass '{el.name}' needs a nested pipeline: {el.name}(...)")
        if not cls.takes_pipeline and el.children is not None:
            raise PipelineError(f"pass '{el.name}' does not take a nested pipeline")
        children = build_passes(el.children) if el.children is not None else None
        out.append(cls.from_options(el.options, children))
    return out


class PassManager:
    """Runs passes in order on a model, in place.

    Args:
        passes: The passes.
        verify_each: Run the structural verifier after every pass.
        instruments: Observers (printing, timing, statistics, dumps).
    """

    def __init__(self, passes: list[Pass] | tuple[Pass, ...] = (), *, verify_each: bool = True,
                 instruments: list[Instrument] | tuple[Instrument, ...] = ()) -> None:
        self.passes = list(passes)
        self.verify_each = verify_each
        self.instruments = list(instruments)

    @classmethod
    def from_text(cls, text: str, **kwargs) -> PassManager:
        """Builds a pass manager from pipeline text (``"a,b{k=v},repeat{max=3}(c,d)"``).

        Raises:
            PipelineSyntaxError: Malformed text (the message has a caret under the bad character).
            PipelineError: Unknown pass or bad option.
        """
        return cls(build_passes(parse_pipeline(text)), **kwargs)

    def add(self, p: Pass) -> PassManager:
        """Appends a pass; returns self."""
        self.passes.append(p)
        return self

    def to_text(self) -> str:
        """The canonical pipeline text."""
        return ",".join(p.to_text() for p in self.passes)

    def run(self, model: ir.Model, *, analyses: AnalysisManager | None = None,
            resources: Mapping[str, Any] | None = None, verify_input: bool = True) -> PipelineResult:
        """Runs the pipeline on ``model`` in place.

        Args:
            model: The model; transformed in place.
            analyses: An analysis manager of ``model`` to reuse (default: a fresh one).
            resources: Objects the caller lends the passes that are not IR, by key (passes
                read them through ``ctx.resources``; e.g. ``train`` takes the torch module
                the model was exported from, see :class:`otoir.train.config.TrainInputs`).
            verify_input: Check the input before any pass: node attributes the ONNX spec
                constrains (always: a zero stride would reach a division by zero) and, with
                ``verify_each``, the structure. ``False`` when the caller checked it already.

        Raises:
            InputError: The input is malformed (the message names the node and the reason).
            PassFailure: A pass failed (raised an exception or emitted an error).
            VerifierError: The IR was invalid after a pass.
        """
        if verify_input:
            problems = verify_model(model, structure=self.verify_each, shapes=True)
            if problems:
                more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
                raise InputError(f"invalid input model: {problems[0]}{more}")
        am = analyses if analyses is not None else AnalysisManager(model)
        run = _PipelineRun(self, model, am, dict(resources or {}))
        for inst in self.instruments:
            inst.before_pipeline(model)
        try:
            run.run_passes(self.passes, depth=0)
        finally:
            run.result.diagnostics = list(run.sink)
        for inst in self.instruments:
            inst.after_pipeline(model)
        return run.result


class _PipelineRun:
    """The state of one :meth:`PassManager.run`: shared by the contexts of all its passes."""

    def __init__(self, pm: PassManager, model: ir.Model, am: AnalysisManager, resources: dict[str, Any]) -> None:
        self.pm = pm
        self.model = model
        self.am = am
        self.resources = resources
        self.sink = DiagnosticSink()
        self.result = PipelineResult(analyses=am)
        self.history: list[str] = []

    def run_passes(self, passes: Sequence[Pass], *, depth: int) -> bool:
        changed_any = False
        for p in passes:
            changed_any |= self.run_pass(p, depth)
        return changed_any

    def run_pass(self, p: Pass, depth: int) -> bool:
        """Runs one pass with instruments, verification and analysis invalidation."""
        model, sink, instruments = self.model, self.sink, self.pm.instruments
        ctx = PassContext(self.am, sink, p.name, run=self, depth=depth)
        n_before = len(sink)
        for inst in instruments:
            inst.before_pass(p, model, ctx)
        provenance = snapshot(model)  # which nodes this pass makes or changes (otoir.infra.loadcheck)
        try:
            changed = bool(p.run(model, ctx))
        except (PassFailure, KeyboardInterrupt):
            for inst in instruments:
                inst.after_pass_failed(p, model, ctx)
            raise
        except Exception as exc:  # a bug or an unexpected input inside a pass
            diag = Diagnostic(Severity.ERROR, f"{type(exc).__name__}: {exc}", pass_name=p.name)
            sink.emit(diag)
            for inst in instruments:
                inst.after_pass_failed(p, model, ctx)
            raise PassFailure(p.name, [diag], self.history) from exc
        errors = [d for d in list(sink)[n_before:] if d.severity is Severity.ERROR]
        if errors:
            for inst in instruments:
                inst.after_pass_failed(p, model, ctx)
            raise PassFailure(p.name, errors, self.history)
        if changed:
            stamp(model, provenance, p.name)
            self.am.invalidate(type(p).preserves)
        if self.pm.verify_each and changed:
            problems = verify_model(model)
            if problems:
                for inst in instruments:
                    inst.after_pass_failed(p, model, ctx)
                raise VerifierError(p.name, problems, self.history)
        self.history.append(p.name)
        res = self.result
        res.changed |= changed
        res.statistics.append((p.to_text(), dict(ctx.statistics)))
        res.records.append(PassRecord(p.name, p.to_text(), depth, changed, dict(ctx.statistics), dict(ctx.results)))
        for inst in instruments:
            inst.after_pass(p, model, ctx, changed)
        return changed
