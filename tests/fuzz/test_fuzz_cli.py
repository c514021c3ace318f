"""Seeded, bounded fuzz of otoir-opt (issue 10, item 6, first half).

Truncated, bit-flipped and structurally broken models and malformed pipelines and flags
(``otoir.tools.fuzz_cli``) run through ``otoir_opt.main`` in-process, a few through the
console script: exit status 0/1/2, no traceback, one error line, no output file after a
failure, no temporary file left. ``tools/fuzz_cli.py --count 500`` runs the long version.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from otoir.tools.fuzz_cli import Outcome, check_outcome, make_cases, run_case_inprocess

COUNT = 200
SEED = 20261129


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return make_cases(COUNT, SEED, str(tmp_path_factory.mktemp("fuzz")))


def test_cases_cover_every_kind(cases):
    kinds = {c.kind for c in cases}
    assert {"truncate", "bitflip", "text", "proto", "pipeline", "flags"} <= kinds


def test_fuzz_in_process(cases):
    failures = []
    codes = set()
    for i, case in enumerate(cases):
        outcome = run_case_inprocess(case, timeout=60)
        codes.add(outcome.code)
        problems = check_outcome(case, outcome)
        if problems:
            failures.append(f"case {i} ({case.kind}) {problems}: {case.argv}\n{outcome.stderr[-2000:]}")
    assert not failures, "\n".join(failures[:5])
    assert 2 in codes and 0 in codes  # the inputs reach both the error paths and success


def test_checker_catches_problems(tmp_path):
    """The oracle itself: each kind of bad outcome is reported."""
    from otoir.tools.fuzz_cli import Case

    out = tmp_path / "o.onnx"
    out.write_bytes(b"x")
    (tmp_path / ".o.onnx.otoir-tmp").write_bytes(b"x")
    case = Case("t", [], None, str(tmp_path), [str(out)])
    assert check_outcome(case, Outcome(2, "otoir-opt: error: a\notoir-opt: error: b\n")) == ["not one line", "output left", "temp left"]
    assert check_outcome(case, Outcome(1, "Traceback (most recent call last):\n")) [0] == "traceback"
    assert check_outcome(case, Outcome(-8)) == ["signal 8"]
    assert check_outcome(case, Outcome(None, hang=True)) == ["hang"]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_fuzz_through_the_console_script(cases, index):
    exe = os.path.join(os.path.dirname(sys.executable), "otoir-opt")
    if not os.path.exists(exe):
        pytest.skip("console script not installed")
    # the first failing-input case of each of three kinds (a fresh process each: no state shared)
    wanted = ["truncate", "proto", "pipeline"][index]
    case = next(c for c in cases if c.kind == wanted)
    for path in case.outputs:  # the in-process run may have produced them (exit 0)
        if os.path.isfile(path):
            os.unlink(path)
    proc = subprocess.run([exe, *case.argv], input=case.stdin, capture_output=True, timeout=300)
    stderr = proc.stderr.decode("utf-8", "replace")
    assert check_outcome(case, Outcome(proc.returncode, stderr)) == [], stderr
