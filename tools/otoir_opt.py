"""``otoir-opt``: run an otoir pass pipeline on an ONNX model, in the style of mlir-opt.

Exit status: 0 on success; 1 when a pass fails or the verifier rejects the IR (no output is
written); 2 on bad usage or unreadable input. Errors are one line (``--debug`` for a traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import TextIO

__all__ = ["main", "console_main", "build_parser"]

PROG = "otoir-opt"


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
    p.add_argument("-o", "--output", metavar="OUT", help="write the result (.onnx or .onnxtxt); without it, print ONNX text on stdout")
    p.add_argument("--list-passes", action="store_true", help="list the registered passes and exit")
    p.add_argument("--dump-pass-pipeline", action="store_true", help="print the canonical pipeline text to stderr")
    p.add_argument("--annotate", action="store_true", help="show analysis results as '# otoir.*' comments in printed IR")
    p.add_argument("--print-ir-before", metavar="NAMES", default="", help="print IR before these passes (comma list)")
    p.add_argument("--print-ir-after", metavar="NAMES", default="", help="print IR after these passes (comma list)")
    p.add_argument("--print-ir-before-all", action="store_true", help="print IR before every pass")
    p.add_argument("--print-ir-after-all", action="store_true", help="print IR after every pass")
    p.add_argument("--print-ir-after-change", action="store_true", help="with --print-ir-after*, only when the pass changed the IR")
    p.add_argument("--elide-initializers-if-larger", type=int, default=None, metavar="N",
                   help="elide initializer data with more than N elements in printed IR (default: 1024 in dumps, never in the output)")
    p.add_argument("--timing", action="store_true", help="report the wall time of every pass")
    p.add_argument("--pass-statistics", action="store_true", help="report the statistics of every pass")
    p.add_argument("--dump-ir-dir", metavar="DIR", help="write the IR after every pass into DIR")
    p.add_argument("--no-verify-each", action="store_true", help="do not run the structural verifier after every pass")
    p.add_argument("--no-load-check", action="store_true",
                   help="skip the load check of the result (onnx.checker full check, and an ONNX Runtime session "
                        "run once on random inputs) done before anything is written; for huge models")
    p.add_argument("--external-data", action="store_true", help="write initializers to OUT.data (always done above 2 GB)")
    p.add_argument("--verify", action="store_true",
                   help="run the result and the reference model (the trained full model, or the input) on held-out "
                        "inputs; fail (exit 1, nothing written) if outputs differ by more than 1e-4 of their scale")
    p.add_argument("--report", action="store_true",
                   help="print a before/after table (parameters, FLOPs, held-out accuracy, ORT CPU latency) to stderr")
    p.add_argument("--report-json", metavar="PATH", help="write the before/after report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print warnings")
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
        stderr.write(f"{PROG}: error: {message}\n")
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
        PassFailure,
        PipelineError,
        PipelineSyntaxError,
        RuntimeModelError,
        RuntimeUnavailableError,
        VerifierError,
    )

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
        if args.input is None:
            if args.dump_pass_pipeline:
                return 0
            return fail(2, "no input model given (see --help)")

        model = _read_input(args.input)
        if not args.no_verify_each:
            from otoir.infra.verifier import verify_model

            problems = verify_model(model)
            if problems:
                more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
                return fail(2, f"invalid input '{args.input}': {problems[0]}{more}")
        baseline = None
        if not args.no_load_check:  # what the input passes; the result must pass the same
            from otoir.infra.loadcheck import baseline as load_baseline

            baseline = load_baseline(model, subject=f"the input '{args.input}'")

        elide = args.elide_initializers_if_larger
        instruments = []
        before = "all" if args.print_ir_before_all else _names(args.print_ir_before)
        after = "all" if args.print_ir_after_all else _names(args.print_ir_after)
        if before or after:
            instruments.append(PrintIR(stderr, before, after, only_if_changed=args.print_ir_after_change,
                                       annotate=args.annotate, elide_larger_than=1024 if elide is None else elide))
        if args.dump_ir_dir:
            instruments.append(DumpIR(args.dump_ir_dir, annotate=True, elide_larger_than=1024 if elide is None else elide))
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
            result = pm.run(model)
        except VerifierError as exc:
            _print_warnings(stderr, exc, args.quiet)
            return fail(1, str(exc) + (f" (passes run before: {', '.join(exc.history)})" if exc.history else ""))
        except PassFailure as exc:
            return fail(1, str(exc))
        if not args.quiet:
            from otoir.infra.diagnostics import Severity

            for d in result.diagnostics:
                if d.severity is Severity.WARNING:
                    stderr.write(f"{PROG}: {d}\n")

        if baseline is not None and result.changed:
            from otoir.infra.loadcheck import find_problem

            if baseline.note and not args.quiet:  # once, before the result is checked
                stderr.write(f"{PROG}: note: {baseline.note}\n")

            problem = find_problem(model, baseline=baseline, subject="the model produced by the pipeline")
            if problem is not None:
                return fail(1, f"{problem}; nothing written")

        if want_reference:
            code = _report_and_verify(args, snapshot.reference, model, result, stderr, baseline)
            if code:
                return code

        if args.output:
            import otoir

            otoir.save(model, args.output, external_data=True if args.external_data else None,
                       check=False)  # checked above, against what the input passes
        else:
            from otoir.textir import print_model

            ann = result.analyses.cached_analyses() if args.annotate and result.analyses else ()
            stdout.write(print_model(model, analyses=ann, elide_larger_than=elide))
        return 0
    except InputError as exc:
        return fail(2, str(exc))
    except RuntimeUnavailableError as exc:
        return fail(2, str(exc))
    except (LoadCheckError, RuntimeModelError) as exc:
        return fail(1, f"{exc}; nothing written")
    except KeyboardInterrupt:
        stderr.write(f"{PROG}: interrupted; nothing written\n")
        return 130
    except OSError as exc:
        return fail(2 if getattr(exc, "filename", None) == getattr(args, "input", None) else 1, f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except Exception as exc:  # a bug: still one line unless --debug
        return fail(1, f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for a traceback)")


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


def _report_and_verify(args, reference, model, result, stderr, baseline=None) -> int:
    """Builds the report / runs the verification; returns a non-zero exit status on mismatch.

    Exit 2 when ONNX Runtime cannot run the input (an unsupported input for these options),
    1 when it runs the input but not the result.
    """
    from otoir import runtime
    from otoir.errors import RuntimeModelError

    option = "--verify" if args.verify else "--report"
    if baseline is not None and runtime.available() and "session" not in baseline.passes:
        problem = next(p for p in baseline.problems if "ONNX Runtime" in p)
        stderr.write(f"{PROG}: error: cannot {option}: {problem}\n")
        return 2
    from otoir.io import atomic_write_text
    from otoir.report import build_report
    from otoir.train.inference import to_inference

    full = to_inference(reference)
    sub = to_inference(model)
    val = inputs = None
    train = result.results.get("train")
    if train:
        from otoir.data import load_dataset

        ds = load_dataset(train["dataset"])
        if ds.val_x is not None:
            val = (ds.val_x, ds.val_y)
        inputs = (ds.val_x if ds.val_x is not None else ds.train_x)[:512]
    if inputs is None:
        feeds = runtime.random_feeds(full, seed=0, batch=4)
        inputs = next(iter(feeds.values())) if len(feeds) == 1 else None
    if inputs is None:
        stderr.write(f"{PROG}: error: --verify/--report need a model with exactly one data input\n")
        return 1
    try:
        rep = build_report(full, sub, val=val, verify_inputs=inputs, latency_runs=50 if (args.report or args.report_json) else 0,
                           details={"pipeline": args.pipeline})
    except RuntimeModelError as exc:
        try:
            runtime.run_model(full, {runtime.data_inputs(full)[0].name: inputs[:1]})
        except RuntimeModelError as ref_exc:
            stderr.write(f"{PROG}: error: cannot {option}: the input model does not run: {ref_exc}\n")
            return 2
        stderr.write(f"{PROG}: error: cannot {option}: the result does not run: {exc}; nothing written\n")
        return 1
    if args.report:
        stderr.write(rep.to_text() + "\n")
    if args.report_json:
        atomic_write_text(args.report_json, rep.to_json() + "\n")
    if args.verify and not rep.verified:
        stderr.write(f"{PROG}: error: verification failed: outputs differ from the reference by "
                     f"{rep.max_rel_diff:.3g} of their scale (> {rep.tolerance:g}); nothing written\n")
        return 1
    return 0


def _print_warnings(stderr, exc, quiet: bool) -> None:
    if quiet:
        return
    for d in exc.diagnostics[1:5]:
        stderr.write(f"{PROG}: note: {d}\n")


def _read_input(path: str):
    import otoir

    if path.startswith("zoo:"):  # a built-in example network (needs torch)
        return _zoo_model(path[4:])

    if path == "-":
        import tempfile

        data = sys.stdin.buffer.read()
        with tempfile.NamedTemporaryFile(suffix=".onnx", delete=False) as f:
            f.write(data)
            tmp = f.name
        try:
            model = otoir.load(tmp)
            from onnx_ir.external_data import load_to_model

            return load_to_model(model)
        finally:
            os.unlink(tmp)
    return otoir.load(path)


def _zoo_model(spec: str):
    """``zoo:NAME`` or ``zoo:NAME?key=value&...`` -> the exported built-in network.

    Keys are the network's constructor arguments, plus ``input=CxHxW`` for the example input
    shape (default: the zoo entry's).
    """
    from otoir.errors import InputError

    name, _, query = spec.partition("?")
    try:
        from otoir.zoo import MODELS, build
    except ImportError as exc:  # pragma: no cover - the zoo itself needs no torch to import
        raise InputError(f"built-in models are unavailable: {exc}") from None
    if name not in MODELS:
        raise InputError(f"unknown built-in model 'zoo:{name}' (known: {', '.join(sorted(MODELS))})")
    kwargs = {}
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        try:
            kwargs[key] = int(value)
        except ValueError:
            try:
                kwargs[key] = float(value)
            except ValueError:
                kwargs[key] = value
    try:
        import torch  # noqa: F401
    except ImportError:
        raise InputError("built-in models need torch: pip install 'otoir[torch]'") from None
    from otoir.frontends.torch_export import export_torch

    shape = kwargs.pop("input", None)  # e.g. input=1x28x28: the example input's shape without the batch
    module, example = build(name, **kwargs)
    if shape is not None:
        import torch

        try:
            dims = [int(d) for d in str(shape).split("x")]
        except ValueError:
            raise InputError(f"zoo:{name}: input= wants dimensions like 1x28x28, got '{shape}'") from None
        example = torch.randn(2, *dims, generator=torch.Generator().manual_seed(0))
    return export_torch(module, example)


def console_main() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
