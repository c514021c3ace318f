"""The pass manager: runs a pipeline of passes with verification and instruments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from otoir.errors import PassFailure, PipelineError, VerifierError
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

__all__ = ["PassManager", "PipelineResult", "build_passes"]


@dataclass
class PipelineResult:
    """What a pipeline run produced.

    Attributes:
        changed: Whether any pass changed the model.
        statistics: Per pass (in order): (pass text, statistics dict).
        diagnostics: Every diagnostic emitted (warnings and remarks included).
        analyses: The analysis manager at the end (cached analyses are valid for the result).
        results: Free-form per-pass results (``ctx.results``), e.g. reports.
    """

    changed: bool = False
    statistics: list[tuple[str, dict]] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    analyses: AnalysisManager | None = None
    results: dict[str, Any] = field(default_factory=dict)


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

    def run(self, model: ir.Model, *, analyses: AnalysisManager | None = None) -> PipelineResult:
        """Runs the pipeline on ``model`` in place.

        Raises:
            PassFailure: A pass failed (raised an exception or emitted an error).
            VerifierError: The IR was invalid after a pass.
        """
        am = analyses if analyses is not None else AnalysisManager(model)
        sink = DiagnosticSink()
        result = PipelineResult(analyses=am)
        history: list[str] = []
        for inst in self.instruments:
            inst.before_pipeline(model)
        try:
            self._run_passes(self.passes, model, am, sink, result, history)
        finally:
            result.diagnostics = list(sink)
        for inst in self.instruments:
            inst.after_pipeline(model)
        return result

    # The loop is shared with nested pipelines (``repeat``).
    def _run_passes(self, passes, model, am, sink, result, history) -> bool:
        changed_any = False
        for p in passes:
            changed_any |= self.run_one(p, model, am, sink, result, history)
        return changed_any

    def run_one(self, p: Pass, model, am, sink, result, history) -> bool:
        """Runs one pass with instruments, verification and analysis invalidation."""
        ctx = PassContext(am, sink, p.name)
        ctx.pass_manager = self  # lets container passes run nested pipelines
        ctx.pipeline_result = result
        ctx.history = history
        n_before = len(sink)
        for inst in self.instruments:
            inst.before_pass(p, model, ctx)
        provenance = snapshot(model)  # which nodes this pass makes or changes (otoir.infra.loadcheck)
        try:
            changed = bool(p.run(model, ctx))
        except (PassFailure, KeyboardInterrupt):
            for inst in self.instruments:
                inst.after_pass_failed(p, model, ctx)
            raise
        except Exception as exc:  # a bug or an unexpected input inside a pass
            diag = Diagnostic(Severity.ERROR, f"{type(exc).__name__}: {exc}", pass_name=p.name)
            sink.emit(diag)
            for inst in self.instruments:
                inst.after_pass_failed(p, model, ctx)
            raise PassFailure(p.name, [diag], history) from exc
        errors = [d for d in list(sink)[n_before:] if d.severity is Severity.ERROR]
        if errors:
            for inst in self.instruments:
                inst.after_pass_failed(p, model, ctx)
            raise PassFailure(p.name, errors, history)
        if changed:
            stamp(model, provenance, p.name)
            am.invalidate(type(p).preserves)
        if self.verify_each and changed:
            problems = verify_model(model)
            if problems:
                for inst in self.instruments:
                    inst.after_pass_failed(p, model, ctx)
                raise VerifierError(p.name, problems, history)
        history.append(p.name)
        result.changed |= changed
        result.statistics.append((p.to_text(), dict(ctx.statistics)))
        result.results.update(ctx.results)
        for inst in self.instruments:
            inst.after_pass(p, model, ctx, changed)
        return changed
