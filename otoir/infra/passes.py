"""The pass base class, pass options and the per-run pass context."""

from __future__ import annotations

import dataclasses
import enum
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from otoir.errors import PipelineError
from otoir.infra.analysis import AnalysisManager
from otoir.infra.diagnostics import Diagnostic, DiagnosticSink, Severity

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["Pass", "PassContext", "option", "OptionInfo", "kebab", "snake"]


def kebab(name: str) -> str:
    """``target_sparsity`` -> ``target-sparsity``."""
    return name.replace("_", "-")


def snake(name: str) -> str:
    """``target-sparsity`` -> ``target_sparsity``."""
    return name.replace("-", "_")


def option(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING):
    """Declares a pass option: a dataclass field with a help string.

    Args:
        default: Default value (immutable: use tuples for lists).
        help: One-line description shown by ``--help`` and ``--list-passes``.
        default_factory: Alternative to ``default``.
    """
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class OptionInfo:
    """Description of one pass option."""

    name: str
    type_name: str
    default: Any
    help: str


class PassContext:
    """What a pass may use while it runs: analyses, diagnostics, statistics, nested runs.

    The pass manager makes one context per pass run.

    Args:
        am: The analysis manager of the model being transformed.
        diagnostics: Where diagnostics go.
        pass_name: Name of the running pass (set by the pass manager).
        run: The pipeline run this pass belongs to (set by the pass manager; None when a
            pass is called directly, which allows no nested runs).
        depth: Nesting depth (0 for top-level passes).
    """

    def __init__(self, am: AnalysisManager, diagnostics: DiagnosticSink, pass_name: str = "", *,
                 run: Any = None, depth: int = 0) -> None:
        self.analyses = am
        self.diagnostics = diagnostics
        self.pass_name = pass_name
        self.depth = depth
        self._run = run
        self.statistics: dict[str, int | float] = {}
        #: Free-form results this pass run leaves for callers (e.g. a report). Each run's
        #: results are recorded on their own (``PipelineResult.records``), never merged away.
        self.results: dict[str, Any] = {}

    @property
    def resources(self) -> Mapping[str, Any]:
        """Non-IR objects the caller of ``PassManager.run`` lent the passes (read-only)."""
        return MappingProxyType(self._run.resources if self._run is not None else {})

    def run_nested(self, passes: Sequence[Pass], model: ir.Model) -> bool:
        """Runs ``passes`` on ``model`` as children of the running pass; returns whether any changed it.

        Each child runs exactly like a top-level pass: its own context, the instruments around
        it (nested inside this pass's ``before_pass``/``after_pass``), the verifier after it,
        analysis invalidation, and a failure that fails this pass too.

        Raises:
            RuntimeError: Outside a pass manager run, or ``model`` is not the pass's model.
        """
        if self._run is None:
            raise RuntimeError(f"pass '{self.pass_name}': nested passes need a pass manager run")
        if model is not self._run.model:
            raise RuntimeError(f"pass '{self.pass_name}': nested passes run on the pass's own model")
        return self._run.run_passes(list(passes), depth=self.depth + 1)

    def earlier_results(self, key: str) -> list[Any]:
        """The values earlier pass runs of this pipeline run left under ``key``, oldest first."""
        return self._run.result.results_of(key) if self._run is not None else []

    def emit(self, severity: Severity, message: str, node: ir.Node | None = None) -> Diagnostic:
        """Emits a diagnostic located at ``node`` (if given) and returns it."""
        diag = Diagnostic.at(node, severity, message, pass_name=self.pass_name)
        self.diagnostics.emit(diag)
        return diag

    def error(self, message: str, node: ir.Node | None = None) -> Diagnostic:
        """Emits an error diagnostic; the pass manager fails the pass after ``run`` returns."""
        return self.emit(Severity.ERROR, message, node)

    def warning(self, message: str, node: ir.Node | None = None) -> Diagnostic:
        """Emits a warning diagnostic."""
        return self.emit(Severity.WARNING, message, node)

    def remark(self, message: str, node: ir.Node | None = None) -> Diagnostic:
        """Emits a remark diagnostic."""
        return self.emit(Severity.REMARK, message, node)

    def stat(self, name: str, value: int | float, *, add: bool = False) -> None:
        """Sets (or, with ``add``, increments) a declared statistic."""
        self.statistics[name] = (self.statistics.get(name, 0) + value) if add else value


@dataclass(frozen=True)
class Pass:
    """Base class of passes.

    A pass is a frozen dataclass whose fields are its options (declare them with
    :func:`option`). Subclasses set the class variables below and implement :meth:`run`.
    Register them with :func:`otoir.infra.registry.register_pass`.
    """

    #: Kebab-case pass argument, e.g. ``grow-segments``.
    name: ClassVar[str] = ""
    #: One-line summary for ``--list-passes``.
    summary: ClassVar[str] = ""
    #: Statistics the pass may report: name -> description.
    statistics: ClassVar[dict[str, str]] = {}
    #: Analysis types kept valid when the pass changed the model (PRESERVE_ALL for all).
    preserves: ClassVar[tuple] = ()
    #: Whether the pass takes a nested pipeline in parentheses (e.g. ``repeat``).
    takes_pipeline: ClassVar[bool] = False
    #: Whether the pass changes initializer values only, never structure (``train``,
    #: ``zero-groups``): the model after it is the reference the construction passes must match.
    values_only: ClassVar[bool] = False

    def run(self, model: ir.Model, ctx: PassContext) -> bool:
        """Runs the pass in place; returns whether the model changed."""
        raise NotImplementedError

    # -- options -------------------------------------------------------------------------
    @classmethod
    def options(cls) -> list[OptionInfo]:
        """Returns the declared options, in declaration order."""
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            if f.name.startswith("_") or f.name == "pipeline":
                continue
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
            )
            out.append(OptionInfo(kebab(f.name), _type_name(hints.get(f.name, str)), default, f.metadata.get("help", "")))
        return out

    @classmethod
    def from_options(cls, options: dict[str, str], pipeline: Any = None) -> Pass:
        """Builds the pass from textual option values (``{"target-sparsity": "0.5"}``)."""
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, text in options.items():
            fname = snake(key)
            if fname not in fields or fname == "pipeline" or fname.startswith("_"):
                known = ", ".join(o.name for o in cls.options()) or "none"
                raise PipelineError(f"pass '{cls.name}' has no option '{key}' (options: {known})")
            try:
                kwargs[fname] = _convert(text, hints.get(fname, str))
            except ValueError as exc:
                raise PipelineError(f"pass '{cls.name}': bad value for option '{key}': {exc}") from None
        if cls.takes_pipeline:
            kwargs["pipeline"] = tuple(pipeline or ())
        elif pipeline:
            raise PipelineError(f"pass '{cls.name}' does not take a nested pipeline")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise PipelineError(f"pass '{cls.name}': {exc}") from None

    def option_text(self) -> dict[str, str]:
        """Returns the options that differ from their defaults, as text."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name.startswith("_") or f.name == "pipeline":
                continue
            value = getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING  # type: ignore[misc]
            )
            if value != default:
                out[kebab(f.name)] = format_value(value)
        return out

    def to_text(self) -> str:
        """Returns the canonical pipeline text of this pass."""
        opts = self.option_text()
        text = self.name
        if opts:
            text += "{" + " ".join(f"{k}={v}" for k, v in opts.items()) + "}"
        if self.takes_pipeline:
            text += "(" + ",".join(p.to_text() for p in getattr(self, "pipeline", ())) + ")"
        return text


_PLAIN = re.compile(r"^[A-Za-z0-9_.:/+\-]*$")


def format_value(value: Any) -> str:
    """Formats an option value as pipeline text (the inverse of the option parser)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (tuple, list)):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    text = "" if value is None else str(value)
    if text and _PLAIN.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"list<{_type_name(args[0]) if args else 'str'}>"
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return "|".join(_type_name(a) for a in args) if args else "str"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "|".join(str(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


def _convert(text: str, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text in ("", "none", "None") and type(None) in typing.get_args(tp):
            return None
        first: ValueError | None = None
        for arg in args:  # the first member the text converts to (``int | str``: a number, else a word)
            try:
                return _convert(text, arg)
            except ValueError as exc:
                first = first or exc
        raise first if first else ValueError(f"cannot convert '{text}'")
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        item = args[0] if args else str
        items = [] if text == "" else text.split(",")
        return tuple(_convert(t.strip(), item) for t in items)
    if tp is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got '{text}'")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got '{text}'") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got '{text}'") from None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for m in tp:
            if str(m.value) == text:
                return m
        raise ValueError(f"expected one of {', '.join(str(m.value) for m in tp)}, got '{text}'")
    return text
