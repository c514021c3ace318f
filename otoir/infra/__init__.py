"""Pass infrastructure: passes, pipelines, the pass manager, analyses, instruments."""

from __future__ import annotations

from otoir.infra.analysis import PRESERVE_ALL, Analysis, AnalysisManager
from otoir.infra.diagnostics import Diagnostic, DiagnosticSink, Severity
from otoir.infra.instruments import DumpIR, Instrument, PassStatistics, PrintIR, Timing
from otoir.infra.pass_manager import PassManager, PipelineResult, build_passes
from otoir.infra.passes import Pass, PassContext, option
from otoir.infra.pipeline import PipelineElement, parse_pipeline, print_pipeline
from otoir.infra.registry import all_passes, get_pass, register_pass
from otoir.infra.verifier import verify_model

__all__ = [
    "PRESERVE_ALL",
    "Analysis",
    "AnalysisManager",
    "Diagnostic",
    "DiagnosticSink",
    "DumpIR",
    "Instrument",
    "Pass",
    "PassContext",
    "PassManager",
    "PassStatistics",
    "PipelineElement",
    "PipelineResult",
    "PrintIR",
    "Severity",
    "Timing",
    "all_passes",
    "build_passes",
    "get_pass",
    "option",
    "parse_pipeline",
    "print_pipeline",
    "register_pass",
    "verify_model",
]
