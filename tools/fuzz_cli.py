"""Fuzz ``otoir-opt`` with malformed models, pipelines and flags; print what happened.

Usage::

    python tools/fuzz_cli.py --count 500 --seed 0 [--timeout 60] [--keep DIR]

The cases come from :mod:`otoir.tools.fuzz_cases` (seeded mutations of small models, pipelines
and flags). Cases run through ``otoir.tools.otoir_opt.main``
in a worker process (so a crash by signal is seen and the worker restarted; a case over
``--timeout`` seconds is a hang). A case passes when the exit status is 0, 1 or 2, stderr
has no traceback and, on failure, exactly one error line; no output file is left after a
non-zero exit and no temporary file in the output directory. Exit status: 0 when every case
passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from otoir.tools.fuzz_cases import TEMP_MARKERS, Case, make_cases

__all__ = ["Case", "Outcome", "make_cases", "run_case_inprocess", "check_outcome", "Worker", "main"]



@dataclass
class Outcome:
    """What a case did: exit status (negative: killed by that signal), stderr, seconds."""

    code: int | None
    stderr: str = ""
    seconds: float = 0.0
    hang: bool = False


class _Hang(BaseException):
    pass


def run_case_inprocess(case: Case, timeout: float = 60.0) -> Outcome:
    """Runs a case through ``otoir_opt.main`` in this process (main thread: SIGALRM timeout)."""
    import logging

    from otoir.tools.otoir_opt import main

    out, err = io.StringIO(), io.StringIO()

    def on_alarm(signum, frame):
        raise _Hang

    old = signal.signal(signal.SIGALRM, on_alarm)
    old_stdin = sys.stdin
    if case.stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(case.stdin))
    t0 = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            handler = logging.StreamHandler(err)
            logging.getLogger().addHandler(handler)
            try:
                code = main(list(case.argv), stdout=out, stderr=err)
            finally:
                logging.getLogger().removeHandler(handler)
        return Outcome(code, err.getvalue(), time.perf_counter() - t0)
    except _Hang:
        return Outcome(None, err.getvalue(), time.perf_counter() - t0, hang=True)
    except BaseException as exc:  # an exception escaping main is a failure
        import traceback

        return Outcome(1, err.getvalue() + "Traceback (escaped main)\n" + "".join(traceback.format_exception(exc)),
                       time.perf_counter() - t0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        sys.stdin = old_stdin


def check_outcome(case: Case, outcome: Outcome) -> list[str]:
    """The problems of one outcome (empty when the case passed)."""
    problems = []
    if outcome.hang:
        return ["hang"]
    if outcome.code is None or outcome.code < 0:
        return [f"signal {-(outcome.code or 0)}"]
    if outcome.code not in (0, 1, 2):
        problems.append(f"exit {outcome.code}")
    if "Traceback" in outcome.stderr:
        problems.append("traceback")
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    ort = [line for line in lines if "onnxruntime" in line and "otoir-opt" not in line]
    lines = [line for line in lines if line not in ort]
    if outcome.code != 0:
        errors = [line for line in lines if line.startswith("otoir-opt: error:")]
        notes = [line for line in lines if line.startswith("otoir-opt: note:")]
        caret = bool(errors) and "pipeline syntax error" in errors[0] and len(lines) == 3
        if len(errors) != 1 or (len(lines) != 1 + len(notes) and not caret):
            problems.append("not one line")
        for path in case.outputs:
            if os.path.lexists(path) and not os.path.isdir(path) and not path.endswith("fifo.onnx"):
                problems.append("output left")
                break
    if case.out_dir and os.path.isdir(case.out_dir):
        left = [n for n in os.listdir(case.out_dir) if n.startswith(".") or any(m in n for m in TEMP_MARKERS)]
        if left:
            problems.append("temp left")
    return problems


class Worker:
    """A subprocess running cases in-process, one at a time (restarted after a crash or hang)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "otoir.tools.fuzz_cli", "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True, bufsize=1)

    def run(self, case: Case, timeout: float) -> Outcome:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        msg = {"argv": case.argv, "stdin": base64.b64encode(case.stdin).decode() if case.stdin is not None else None,
               "timeout": timeout}
        t0 = time.perf_counter()
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = _readline_with_timeout(self.proc, timeout + 30)
        if line is None:  # no answer: hung beyond the in-process alarm, or died
            code = self.proc.poll()
            if code is None:
                self.proc.kill()
                self.proc.wait()
                self.proc = None
                return Outcome(None, "", time.perf_counter() - t0, hang=True)
            self.proc = None
            return Outcome(code, "worker died", time.perf_counter() - t0)
        data = json.loads(line)
        return Outcome(data["code"], data["stderr"], data["seconds"], data["hang"])

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _output_loads(case: Case) -> str | None:
    """For an exit-0 case: how its .onnx output fails to load, or None when it loads.

    ``checker`` / ``ort`` where the input already failed the same way (otoir notes that and
    writes what it was given), ``new checker`` / ``new ort`` where the input loaded: otoir
    made it unloadable, a failing case.
    """
    argv = case.argv
    out = argv[argv.index("-o") + 1] if "-o" in argv and argv.index("-o") + 1 < len(argv) else None
    if not out or not out.endswith(".onnx") or not os.path.isfile(out):
        return None
    verdict = _load_verdict(out)
    if verdict is None:
        return None
    source = argv[0] if argv and argv[0] != "-" and os.path.isfile(argv[0]) else None
    before = _load_verdict(source, text=not source.endswith(".onnx")) if source else "unknown"
    if before is None or (before == "checker" and verdict == "ort"):
        return "new " + verdict
    return verdict


def _load_verdict(path: str, *, text: bool = False) -> str | None:
    """'checker' or 'ort' when the model at ``path`` fails that check, else None."""
    import onnx

    try:
        if text:
            import onnx.parser

            with open(path, encoding="utf-8", errors="replace") as f:
                proto = onnx.parser.parse_model(f.read())
        else:
            proto = onnx.load(path)
        onnx.checker.check_model(proto, full_check=True)
    except Exception:
        return "checker"
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:
        return "ort"
    return None


def _readline_with_timeout(proc: subprocess.Popen, timeout: float) -> str | None:
    import select

    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
        if ready:
            line = proc.stdout.readline()
            return line or None
        if proc.poll() is not None:
            return None


def _worker_loop() -> int:
    for line in sys.stdin:
        msg = json.loads(line)
        stdin = base64.b64decode(msg["stdin"]) if msg["stdin"] is not None else None
        oc = run_case_inprocess(Case("w", msg["argv"], stdin), msg["timeout"])
        sys.stdout.write(json.dumps({"code": oc.code, "stderr": oc.stderr, "seconds": oc.seconds, "hang": oc.hang}) + "\n")
        sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the fuzzer; prints the counts; returns 0 when every case passed."""
    p = argparse.ArgumentParser(prog="fuzz_cli", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it counts as a hang")
    p.add_argument("--keep", metavar="DIR", help="keep the case files in DIR (default: a removed temp dir)")
    p.add_argument("--verbose", action="store_true", help="print every failing case")
    p.add_argument("--log", metavar="FILE", help="write every case (argv, exit status, stderr) as JSON lines")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker_loop()
    work = args.keep or tempfile.mkdtemp(prefix="otoir-fuzz-")
    os.makedirs(work, exist_ok=True)
    t0 = time.perf_counter()
    try:
        cases = make_cases(args.count, args.seed, work)
        worker = Worker()
        codes: collections.Counter = collections.Counter()
        problems: collections.Counter = collections.Counter()
        by_kind: collections.Counter = collections.Counter()
        failing = []
        internal = []
        unloadable: collections.Counter = collections.Counter()
        slowest = 0.0
        log = open(args.log, "w", encoding="utf-8") if args.log else None  # noqa: SIM115
        try:
            for i, case in enumerate(cases):
                oc = worker.run(case, args.timeout)
                if log is not None:
                    log.write(json.dumps({"case": i, "kind": case.kind, "argv": case.argv, "code": oc.code,
                                          "hang": oc.hang, "stderr": oc.stderr}) + "\n")
                slowest = max(slowest, oc.seconds)
                codes["hang" if oc.hang else f"signal {-oc.code}" if oc.code is not None and oc.code < 0 else oc.code] += 1
                by_kind[case.kind] += 1
                if oc.code == 0:
                    verdict = _output_loads(case)
                    if verdict:
                        unloadable[verdict] += 1
                        if verdict.startswith("new"):
                            failing.append((i, case, oc, [f"exit 0, output fails {verdict[4:]} (the input passed)"]))
                if "internal error" in oc.stderr:
                    internal.append((i, case, oc))
                bad = check_outcome(case, oc)
                for b in bad:
                    problems[b] += 1
                if bad:
                    failing.append((i, case, oc, bad))
                    if args.verbose:
                        print(f"case {i} ({case.kind}) {bad}: {case.argv}\n  {oc.stderr.strip()[:500]}")
        finally:
            worker.close()
            if log is not None:
                log.close()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    total = len(cases)
    print(f"fuzz_cli: {total} cases, seed {args.seed}, {time.perf_counter() - t0:.0f} s (slowest case {slowest:.1f} s)")
    print("  inputs:      " + ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items())))
    print("  exit codes:  " + ", ".join(f"{k}: {v}" for k, v in sorted(codes.items(), key=lambda kv: str(kv[0]))))
    for name in ("traceback", "not one line", "hang", "output left", "temp left"):
        print(f"  {name + ':':13s}{problems.get(name, 0)}")
    crashes = sum(v for k, v in problems.items() if k.startswith("signal"))
    print(f"  {'signals:':13s}{crashes}" + (f" ({', '.join(k for k in problems if k.startswith('signal'))})" if crashes else ""))
    other = {k: v for k, v in problems.items() if k.startswith("exit")}
    if other:
        print(f"  other exits: {other}")
    print(f"  exit 0, output unloadable where the input loaded: checker {unloadable.get('new checker', 0)}, "
          f"ORT {unloadable.get('new ort', 0)}")
    print(f"  exit 0, output fails as its input already did (noted, written as given): checker "
          f"{unloadable.get('checker', 0)}, ORT {unloadable.get('ort', 0)}")
    print(f"  internal errors (exit 1, 'internal error: ...'): {len(internal)}")
    for i, case, oc in internal[:10]:
        print(f"    case {i} ({case.kind}): {oc.stderr.strip().splitlines()[-1][:300]}")
    print(f"  failing cases: {len(failing)}")
    for i, case, oc, bad in failing[:10]:
        print(f"    case {i} ({case.kind}) {bad}: {' '.join(repr(a) for a in case.argv)[:200]}")
        print(f"      {oc.stderr.strip().splitlines()[-1][:300] if oc.stderr.strip() else '(no stderr)'}")
    return 0 if not failing else 1


if __name__ == "__main__":
    sys.exit(main())
