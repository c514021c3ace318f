"""Instruments observe a pipeline run: IR printing, timing, statistics, IR dumps.

All observability goes through instruments; they write to the stream they are given (the
``otoir-opt`` driver gives them stderr). Library code never prints.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import onnx_ir as ir

    from otoir.infra.passes import Pass, PassContext

__all__ = ["Instrument", "PrintIR", "Timing", "PassStatistics", "DumpIR"]


class Instrument:
    """Base instrument; every hook is optional."""

    def before_pipeline(self, model: ir.Model) -> None:
        """Called once before the first pass."""

    def before_pass(self, p: Pass, model: ir.Model, ctx: PassContext) -> None:
        """Called before each pass."""

    def after_pass(self, p: Pass, model: ir.Model, ctx: PassContext, changed: bool) -> None:
        """Called after each pass that succeeded (and verified)."""

    def after_pass_failed(self, p: Pass, model: ir.Model, ctx: PassContext) -> None:
        """Called after a pass that failed."""

    def after_pipeline(self, model: ir.Model) -> None:
        """Called once after the last pass."""


def _matches(names, p: Pass) -> bool:
    return names == "all" or p.name in names


class PrintIR(Instrument):
    """Prints the IR before and/or after selected passes.

    Args:
        stream: Where to print.
        before: ``"all"`` or a collection of pass names.
        after: ``"all"`` or a collection of pass names.
        only_if_changed: After a pass, print only when it changed the model.
        annotate: Show ``# otoir.*`` annotations of the cached analyses.
        elide_larger_than: Initializers with more elements are elided.
    """

    def __init__(self, stream: TextIO, before=(), after=(), *, only_if_changed: bool = False,
                 annotate: bool = False, elide_larger_than: int | None = 1024) -> None:
        self.stream = stream
        self.before = before
        self.after = after
        self.only_if_changed = only_if_changed
        self.annotate = annotate
        self.elide = elide_larger_than

    def _print(self, banner: str, model: ir.Model, ctx: PassContext) -> None:
        from otoir.textir import print_model

        ann = ctx.analyses.cached_analyses() if self.annotate else ()
        self.stream.write(f"// -----// IR Dump {banner} //----- //\n")
        self.stream.write(print_model(model, analyses=ann, elide_larger_than=self.elide))
        self.stream.write("\n")

    def before_pass(self, p, model, ctx) -> None:
        if _matches(self.before, p):
            self._print(f"Before {p.to_text()}", model, ctx)

    def after_pass(self, p, model, ctx, changed) -> None:
        if _matches(self.after, p) and (changed or not self.only_if_changed):
            self._print(f"After {p.to_text()}", model, ctx)

    def after_pass_failed(self, p, model, ctx) -> None:
        if _matches(self.after, p):
            self._print(f"After {p.to_text()} Failed", model, ctx)


class Timing(Instrument):
    """Measures wall time per pass and prints a report after the pipeline.

    Nested passes (children of ``repeat``, ``otoir-erase``, ...) are timed on their own and
    listed indented under their container, whose time includes theirs.

    Args:
        stream: Where the report goes.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        #: (pass name, seconds, nesting depth), in the order the passes started.
        self.records: list[tuple[str, float, int]] = []
        self._t0 = 0.0
        self._open: list[tuple[int, float]] = []  # (index in records, start time) per running pass

    def before_pipeline(self, model) -> None:
        self._t0 = time.perf_counter()
        self._open.clear()

    def before_pass(self, p, model, ctx) -> None:
        self.records.append((p.name, 0.0, len(self._open)))
        self._open.append((len(self.records) - 1, time.perf_counter()))

    def _close(self, suffix: str) -> None:
        i, start = self._open.pop()
        name, _, depth = self.records[i]
        self.records[i] = (name + suffix, time.perf_counter() - start, depth)

    def after_pass(self, p, model, ctx, changed) -> None:
        self._close("")

    def after_pass_failed(self, p, model, ctx) -> None:
        self._close(" (failed)")

    def after_pipeline(self, model) -> None:
        total = time.perf_counter() - self._t0
        w = self.stream.write
        w("===-------------------------------------------------------------------------===\n")
        w("                         ... Execution time report ...\n")
        w("===-------------------------------------------------------------------------===\n")
        w(f"  Total Execution Time: {total:.4f} seconds\n\n")
        w("  ----Wall Time----  ----Name----\n")
        for name, t, depth in self.records:
            pct = 100.0 * t / total if total > 0 else 0.0
            w(f"  {t:9.4f} ({pct:5.1f}%)  {'  ' * depth}{name}\n")
        w(f"  {total:9.4f} (100.0%)  Total\n")


class PassStatistics(Instrument):
    """Collects the statistics each pass reports and prints them after the pipeline.

    Args:
        stream: Where the report goes.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.records: list[tuple[Pass, dict]] = []

    def after_pass(self, p, model, ctx, changed) -> None:
        self.records.append((p, dict(ctx.statistics)))

    def after_pipeline(self, model) -> None:
        w = self.stream.write
        w("===-------------------------------------------------------------------------===\n")
        w("                         ... Pass statistics report ...\n")
        w("===-------------------------------------------------------------------------===\n")
        for p, stats in self.records:
            w(f"{p.name}\n")
            for key, desc in type(p).statistics.items():
                if key in stats:
                    w(f"  ({key}) {_fmt(stats[key])} - {desc}\n")
            for key in sorted(set(stats) - set(type(p).statistics)):
                w(f"  ({key}) {_fmt(stats[key])}\n")


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


class DumpIR(Instrument):
    """Writes the IR text after every pass into ``directory`` as ``NN-pass-name.onnxtxt``.

    Args:
        directory: Created if missing.
        annotate: Include analysis annotations.
    """

    def __init__(self, directory: str, *, annotate: bool = True, elide_larger_than: int | None = 1024) -> None:
        self.directory = directory
        self.annotate = annotate
        self.elide = elide_larger_than
        self.count = 0

    def before_pipeline(self, model) -> None:
        from otoir.textir import print_model

        os.makedirs(self.directory, exist_ok=True)
        self._write("00-input", print_model(model, elide_larger_than=self.elide))

    def after_pass(self, p, model, ctx, changed) -> None:
        from otoir.textir import print_model

        self.count += 1
        ann = ctx.analyses.cached_analyses() if self.annotate else ()
        self._write(f"{self.count:02d}-{p.name}", print_model(model, analyses=ann, elide_larger_than=self.elide))

    def _write(self, stem: str, text: str) -> None:
        from otoir.io import atomic_write_text

        atomic_write_text(os.path.join(self.directory, stem + ".onnxtxt"), text)
