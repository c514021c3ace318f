"""``otoir-opt``: run an otoir pass pipeline on an ONNX model, in the style of mlir-opt.

Exit status: 0 on success; 1 when a pass fails or the verifier rejects the IR (no output is
written); 2 on bad usage, unreadable or invalid input, or an output path that cannot be written;
130 on Ctrl-C. Errors are one line (``--debug`` for a traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import TextIO

from otoir.tools.console import interrupted, run_console

__all__ = ["main", "console_main", "build_parser", "ANNOTATE_ELIDE_DEFAULT", "PRINT_ALL"]

PROG = "otoir-opt"

#: With ``--annotate`` (and no --elide-initializers-if-larger), initializers with more elements
#: than this are elided in the printed IR (the text is for reading, not for parsing back).
ANNOTATE_ELIDE_DEFAULT = 16
#: The --elide-initializers-if-larger value that prints every initializer.
PRINT_ALL = -1


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2 (raised, handled in main)
        raise _UsageError(message)


def _pass_help() -> str:
    from otoir.infra.registry import all_passes

    lines = ["passes (use in -p PIPELINE, e.g. -p 'classify-vertices,cleanup'):"]
    for name, cls in all_passes().items():
        lines.append(f"  {name:28s} {cls.summary}")
        for opt in cls.options():
            default = "" if opt.default in (None, "", ()) else f" (default: {_fmt_default(opt.default)})"
            lines.append(f"      {opt.name}=<{opt.type_name}>  {opt.help}{default}")
    return "\n".join(lines)


def _fmt_default(v) -> str:
    from otoir.infra.passes import format_value

    return format_value(v)


def build_parser(with_passes: bool = False) -> argparse.ArgumentParser:
    """The argument parser (``with_passes`` adds the pass list to the help text)."""
    p = _Parser(
        prog=PROG,
        description="Run an otoir pass pipeline on an ONNX model (.onnx, or ONNX text .onnxtxt).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_pass_help() if with_passes else None,
        add_help=False,
    )
    p.add_argument("input", nargs="?", help="input model: .onnx, .onnxtxt, - for stdin, or zoo:NAME for a built-in network")
    p.add_argument("-h", "--help", action="store_true", help="show this help (with every pass and option) and exit")
    p.add_argument("-p", "--pass-pipeline", dest="pipeline", default="", metavar="PIPELINE",
                   help="pipeline text, e.g. 'classify-vertices,repeat{max=3}(cse,remove-unused-nodes)'")
    p.add_argument("-o", "--output", metavar="OUT", help="write the result (.onnx or .onnxtxt; a symlink is written through, special files are refused); "
                        "without it, print ONNX text on stdout")
    p.add_argument("--list-passes", action="store_true", help="list the registered passes and exit")
    p.add_argument("--dump-pass-pipeline", action="store_true", help="print the canonical pipeline text to stderr")
    p.add_argument("--annotate", action="store_true",
                   help="show analysis results and otoir.* node metadata as comments in printed IR; initializers "
                        f"with more than {ANNOTATE_ELIDE_DEFAULT} elements are elided (see --elide-initializers-if-larger)")
    p.add_argument("--print-ir-before", metavar="NAMES", default="", help="print IR before these passes (comma list)")
    p.add_argument("--print-ir-after", metavar="NAMES", default="", help="print IR after these passes (comma list)")
    p.add_argument("--print-ir-before-all", action="store_true", help="print IR before every pass")
    p.add_argument("--print-ir-after-all", action="store_true", help="print IR after every pass")
    p.add_argument("--print-ir-after-change", action="store_true", help="with --print-ir-after*, only when the pass changed the IR")
    p.add_argument("--elide-initializers-if-larger", type=int, default=None, metavar="N",
                   help="elide initializer data with more than N elements in printed IR; -1 prints every initializer "
                        f"(default: {ANNOTATE_ELIDE_DEFAULT} in the --annotate output, 1024 in dumps, never in the plain "
                        "output, which parses back to the model)")
    p.add_argument("--timing", action="store_true", help="report the wall time of every pass")
    p.add_argument("--pass-statistics", action="store_true", help="report the statistics of every pass")
    p.add_argument("--dump-ir-dir", metavar="DIR", help="write the IR after every pass into DIR")
    p.add_argument("--no-verify-each", action="store_true", help="do not run the structural verifier after every pass")
    p.add_argument("--no-load-check", action="store_true",
                   help="skip the load check of the result (onnx.checker full check, and an ONNX Runtime session "
                        "run once on random inputs) done before anything is written; for huge models")
    p.add_argument("--external-data", action="store_true", help="write initializers to OUT.data, or OUT.<random>.data while OUT.data is the replaced "
                        "model's (always done above 2 GB)")
    p.add_argument("--verify", action="store_true",
                   help="run the result and the reference model (the trained full model, or the input) on held-out "
                        "inputs; fail (exit 1, nothing written) if outputs differ by more than 1e-4 of their scale")
    p.add_argument("--report", action="store_true",
                   help="print a before/after table (parameters, FLOPs, held-out accuracy, ORT CPU latency) to stderr")
    p.add_argument("--report-json", metavar="PATH", help="write the before/after report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print warnings")
    p.add_argument("-v", "--remarks", action="store_true",
                   help="also print the passes' remarks (e.g. why each segment or group was kept: partition-gezig{explain=true})")
    p.add_argument("--debug", action="store_true", help="print tracebacks")
    return p


def _names(text: str):
    return {n.strip() for n in text.split(",") if n.strip()}


def main(argv: list[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Runs ``otoir-opt``; returns the exit status."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv

    def fail(code: int, message: str) -> int:
        if debug:
            traceback.print_exc(file=stderr)
        stderr.write(f"{PROG}: error: {_one_line(message)}\n")
        return code

    import logging

    if not debug:  # onnx-ir logs recoverable oddities of the input; we report our own errors
        logging.getLogger("onnx_ir").setLevel(logging.ERROR)
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        return fail(2, f"{exc} (see --help)")

    from otoir.errors import (
        InputError,
        LoadCheckError,
        OutputError,
        PassFailure,
        PipelineError,
        PipelineSyntaxError,
        RuntimeModelError,
        RuntimeUnavailableError,
        VerifierError,
    )

    written = _WRITTEN  # shared with the SIGINT handler, which may have to exit without unwinding
    written.clear()
    try:
        if args.help:
            build_parser(with_passes=True).print_help(stdout)
            return 0
        if args.list_passes:
            from otoir.infra.registry import all_passes

            for name, cls in all_passes().items():
                stdout.write(f"{name:28s} {cls.summary}\n")
            return 0

        from otoir.infra import DumpIR, PassManager, PassStatistics, PrintIR, Timing

        try:
            pm = PassManager.from_text(args.pipeline, verify_each=not args.no_verify_each)
        except PipelineSyntaxError as exc:
            lines = exc.render().splitlines()
            stderr.write(f"{PROG}: error: {lines[0]}\n" + "\n".join(lines[1:]) + "\n")
            return 2
        except PipelineError as exc:
            return fail(2, str(exc))
        if args.dump_pass_pipeline:
            stderr.write(f"{PROG} pipeline: {pm.to_text()}\n")
        problem = _check_options(args)
        if problem:
            return fail(2, problem)
        if args.input is None:
            if args.dump_pass_pipeline:
                return 0
            return fail(2, "no input model given (see --help)")
        _check_outputs(args)  # before the (possibly long) run: a bad path is known now

        model = _read_input(args.input)
        from otoir.infra.verifier import verify_model

        # Attribute checks always run (a bad stride would reach a division by zero); the
        # structural ones unless --no-verify-each.
        problems = verify_model(model, structure=not args.no_verify_each, shapes=True)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            name = "<stdin>" if args.input == "-" else args.input
            return fail(2, f"invalid input '{name}': {problems[0]}{more}")
        baseline = None
        if not args.no_load_check:  # what the input passes; the result must pass the same
            from otoir.infra.loadcheck import baseline as load_baseline

            baseline = load_baseline(model, subject=f"the input '{'<stdin>' if args.input == '-' else args.input}'")

        elide, out_elide = _elide_limits(args)
        instruments = []
        before = "all" if args.print_ir_before_all else _names(args.print_ir_before)
        after = "all" if args.print_ir_after_all else _names(args.print_ir_after)
        if before or after:
            instruments.append(PrintIR(stderr, before, after, only_if_changed=args.print_ir_after_change,
                                       annotate=args.annotate, elide_larger_than=elide))
        if args.dump_ir_dir:
            instruments.append(DumpIR(args.dump_ir_dir, annotate=True, elide_larger_than=elide))
        if args.pass_statistics:
            instruments.append(PassStatistics(stderr))
        if args.timing:
            instruments.append(Timing(stderr))
        pm.instruments = instruments
        want_reference = args.verify or args.report or args.report_json
        snapshot = None
        if want_reference:
            snapshot = _reference_snapshot(model)
            instruments.append(snapshot)

        try:
            result = pm.run(model, verify_input=False)  # checked above
        except VerifierError as exc:
            _print_warnings(stderr, exc, args.quiet)
            return fail(1, str(exc) + (f" (passes run before: {', '.join(exc.history)})" if exc.history else ""))
        except PassFailure as exc:
            return fail(1, str(exc))
        for table in result.results_of("print-groups"):  # asked for in the pipeline: even with -q
            stderr.write(table)
        if not args.quiet:
            from otoir.infra.diagnostics import Severity

            shown = (Severity.WARNING, Severity.REMARK) if args.remarks else (Severity.WARNING,)
            for d in result.diagnostics:
                if d.severity in shown:
                    stderr.write(f"{PROG}: {d}\n")

        if baseline is not None and result.changed:
            from otoir.infra.loadcheck import find_problem

            problem = find_problem(model, baseline=baseline, subject="the model produced by the pipeline")
            if problem is not None:
                return fail(1, f"{problem}; nothing written")

        report = None
        if want_reference:
            code, report = _report_and_verify(args, snapshot.reference, model, result, stderr, baseline)
            if code:
                return code

        if baseline is not None and baseline.note and not args.quiet:  # once; the output fails as its input did
            stderr.write(f"{PROG}: note: {baseline.note}\n")
        if args.output:
            import otoir

            otoir.save(model, args.output, external_data=True if args.external_data else None,
                       check=False)  # checked above, against what the input passes
            written.append(args.output)
        else:
            from otoir.textir import print_model

            ann = result.analyses.cached_analyses() if args.annotate and result.analyses else ()
            stdout.write(print_model(model, analyses=ann, elide_larger_than=out_elide, metadata=args.annotate))
        if args.report_json and report is not None:  # last: no file is left after a failure
            from otoir.io import atomic_write_text

            atomic_write_text(args.report_json, report.to_json() + "\n")
        return 0
    except (InputError, OutputError, RuntimeUnavailableError) as exc:
        return fail(2, _one_line(str(exc)))
    except (LoadCheckError, RuntimeModelError) as exc:
        return fail(1, f"{_one_line(str(exc))}; nothing written")
    except KeyboardInterrupt:
        return _interrupted(stderr, written)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return fail(2 if exc.filename == args.input else 1, f"{exc.strerror or _one_line(str(exc))}{where}")
    except Exception as exc:  # a bug: still one line unless --debug
        return fail(1, f"internal error: {type(exc).__name__}: {_one_line(str(exc))} (rerun with --debug for a traceback)")


def _one_line(text: str) -> str:
    """One line: white space folded, other control characters (e.g. in a corrupt value name) escaped."""
    text = " ".join(text.split())
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text) or "(no message)"


def _interrupted(stderr, written: list[str] | tuple = ()) -> int:
    return interrupted(PROG, stderr, written)


def _elide_limits(args) -> tuple[int | None, int | None]:
    """(limit in dumps, limit in the printed output) from --elide-initializers-if-larger and
    --annotate; None prints every initializer."""
    n = args.elide_initializers_if_larger
    if n == PRINT_ALL:
        return None, None
    if n is not None:
        return n, n
    return 1024, ANNOTATE_ELIDE_DEFAULT if args.annotate else None


def _check_options(args) -> str | None:
    """Range checks of the command-line options; returns the problem, or None."""
    if args.elide_initializers_if_larger is not None and args.elide_initializers_if_larger < PRINT_ALL:
        return (f"--elide-initializers-if-larger must be >= 0 (or {PRINT_ALL} to print every initializer), "
                f"got {args.elide_initializers_if_larger}")
    if args.output is not None and not args.output:
        return "-o: the output path is empty"
    if args.report_json is not None and not args.report_json:
        return "--report-json: the path is empty"
    if args.dump_ir_dir is not None and not args.dump_ir_dir:
        return "--dump-ir-dir: the path is empty"
    from otoir.infra.registry import all_passes

    known = set(all_passes())
    for flag, text in (("--print-ir-before", args.print_ir_before), ("--print-ir-after", args.print_ir_after)):
        unknown = sorted(_names(text) - known)
        if unknown:
            return f"{flag}: unknown pass '{unknown[0]}' (see --list-passes)"
    return None


def _check_outputs(args) -> None:
    """Refuses output paths that cannot be written, before anything runs.

    Raises:
        OutputError: -o or --report-json is not writable as a regular file; --dump-ir-dir is
            not a directory.
    """
    from otoir.errors import OutputError
    from otoir.io import resolve_output

    if args.output is not None:
        resolve_output(args.output)
    if args.report_json is not None:
        try:
            resolve_output(args.report_json)
        except OutputError as exc:
            raise OutputError(f"--report-json: {exc}") from None
    if args.dump_ir_dir is not None:
        d = args.dump_ir_dir
        if os.path.exists(d) and not os.path.isdir(d):
            raise OutputError(f"--dump-ir-dir: '{d}' exists and is not a directory")
        parent = os.path.dirname(os.path.abspath(d))
        if not os.path.isdir(parent):
            raise OutputError(f"--dump-ir-dir: cannot create '{d}': directory '{parent}' does not exist")


def _reference_snapshot(model):
    """An instrument keeping the reference for --verify/--report: the input, or the model after
    the last values-only pass (``train``, ``zero-groups``), which construction passes must match."""
    from otoir.api import clone_model
    from otoir.infra.instruments import Instrument

    class ReferenceSnapshot(Instrument):
        def __init__(self) -> None:
            self.reference = clone_model(model)

        def after_pass(self, p, model, ctx, changed) -> None:
            if changed and type(p).values_only:
                self.reference = clone_model(model)

    return ReferenceSnapshot()


def _report_and_verify(args, reference, model, result, stderr, baseline=None):
    """Builds the report / runs the verification; returns (exit status, report).

    Exit 2 when ONNX Runtime cannot run the input (an unsupported input for these options),
    1 when it runs the input but not the result.
    """
    from otoir import runtime
    from otoir.errors import RuntimeModelError

    option = "--verify" if args.verify else "--report"
    if baseline is not None and runtime.available() and "session" not in baseline.passes:
        problem = next(p for p in baseline.problems if "ONNX Runtime" in p)
        stderr.write(f"{PROG}: error: cannot {option}: {problem}\n")
        return 2, None
    from otoir.report import batch_feeds, build_report, fixed_batch, random_inputs
    from otoir.train.inference import InferenceFormError, to_inference

    try:
        full = to_inference(reference)
    except InferenceFormError as exc:
        stderr.write(f"{PROG}: error: cannot {option}: the reference model has no inference form: {exc}\n")
        return 2, None
    try:
        sub = to_inference(model)
    except InferenceFormError as exc:
        stderr.write(f"{PROG}: error: cannot {option}: the result has no inference form: {exc}; nothing written\n")
        return 1, None
    val = inputs = None
    train = result.results.get("train")
    if train:
        from otoir.data import bind, load_dataset

        ds = load_dataset(train["dataset"])
        fitted = bind(ds, full)  # the train pass fitted the same data already
        held_out = ds.validation()
        if held_out is not None and held_out[1] is not None:
            val = (fitted.feeds(held_out[0]), held_out[1])
        inputs = fitted.check_inputs(512)
    if inputs is None:  # random inputs of the declared shapes and types, every data input
        inputs = random_inputs(full)
    if isinstance(inputs, dict) and not inputs:
        stderr.write(f"{PROG}: error: cannot {option}: the model has no data inputs\n")
        return 1, None
    try:
        rep = build_report(full, sub, val=val, verify_inputs=inputs, latency_runs=50 if (args.report or args.report_json) else 0,
                           details={"pipeline": args.pipeline})
    except RuntimeModelError as exc:
        try:
            runtime.run_model(full, batch_feeds(full, inputs, fixed_batch(full) or 1))
        except RuntimeModelError as ref_exc:
            stderr.write(f"{PROG}: error: cannot {option}: the input model does not run: {ref_exc}\n")
            return 2, None
        stderr.write(f"{PROG}: error: cannot {option}: the result does not run: {exc}; nothing written\n")
        return 1, None
    if args.report:
        stderr.write(rep.to_text(labels=_report_labels(result)) + "\n")
    if args.verify and not rep.verified:
        stderr.write(f"{PROG}: error: verification failed: outputs differ from the reference by "
                     f"{rep.max_rel_diff:.3g} of their scale (> {rep.tolerance:g}); nothing written\n")
        return 1, rep
    return 0, rep


def _report_labels(result) -> tuple[str, str]:
    """The --report column labels: "full (trained)" only when a ``train`` pass ran; else the
    reference is the input ("input"), or the input with values set by a values-only pass such as
    ``zero-groups`` ("reference")."""
    from otoir.infra.registry import get_pass

    if result.results_of("train"):
        return "full (trained)", "compressed"
    if any(r.changed and get_pass(r.name).values_only for r in result.records):
        return "reference", "result"
    return "input", "result"


def _print_warnings(stderr, exc, quiet: bool) -> None:
    if quiet:
        return
    for d in exc.diagnostics[1:5]:
        stderr.write(f"{PROG}: note: {d}\n")


def _read_input(path: str):
    import otoir

    if path.startswith("zoo:"):  # a built-in example network (needs torch)
        return _zoo_model(path[4:])

    if path == "-":  # external data of a model on stdin is resolved against the current directory
        from otoir.io import load_bytes

        return load_bytes(sys.stdin.buffer.read(), name="<stdin>")
    return otoir.load(path)


def _zoo_model(spec: str):
    """``zoo:NAME`` or ``zoo:NAME?key=value&...`` -> the exported built-in network.

    Keys are the network's constructor arguments, plus ``input=CxHxW`` for the example input
    shape (default: the zoo entry's).
    """
    from otoir.errors import InputError

    try:
        from otoir.zoo import parse_spec
    except ImportError as exc:  # pragma: no cover - the zoo itself needs no torch to import
        raise InputError(f"built-in models are unavailable: {exc}") from None
    try:
        name, kwargs, dims = parse_spec(spec)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    try:
        import torch
    except ImportError:
        raise InputError("built-in models need torch: pip install 'otoir[torch]'") from None
    from otoir.frontends.torch_export import export_torch
    from otoir.zoo import build

    try:
        module, example = build(name, **kwargs)
    except Exception as exc:  # the constructor refused the arguments
        raise InputError(f"zoo:{spec}: bad arguments: {type(exc).__name__}: {_one_line(str(exc))}") from None
    if dims is not None:
        example = torch.randn(2, *dims, generator=torch.Generator().manual_seed(0))
    try:
        return export_torch(module, example)
    except InputError:
        raise
    except Exception as exc:  # e.g. input= does not fit the network
        raise InputError(f"zoo:{spec}: cannot build the network for this input: {type(exc).__name__}: "
                         f"{_one_line(str(exc))[:300]}") from None


_WRITTEN: list[str] = []  # outputs finished by the running ``main``


def console_main() -> None:
    """Console-script entry point: Ctrl-C at any moment exits 130 with one line."""
    run_console(main, PROG, _WRITTEN)


if __name__ == "__main__":
    console_main()
