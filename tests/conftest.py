"""Shared test configuration, including the FileCheck plugin.

``tests/filecheck/**/*.onnxtxt`` files are collected as tests (one file per registered pass,
named after it: ``grow-segments`` -> ``grow_segments.onnxtxt``; ``tests/unit/
test_filecheck_registry.py`` enforces that). Each ``# RUN:`` line is run in-process::

    # RUN: otoir-opt %s -p 'classify-vertices' --annotate | filecheck %s
    # RUN: not otoir-opt %s -p 'check' 2>&1 | filecheck %s --check-prefix=ERR

``%s`` is the file itself (the current case, see below); ``not`` expects a non-zero exit status;
``2>&1`` checks stderr together with stdout. Checking uses the pure-Python ``filecheck`` package.

Several cases per file (``--split-input-file``, as in MLIR): a line that is exactly ``# -----``
splits the file into cases. Each case is an independent model, run and checked on its own:

* ``%s`` stands for a copy of the case alone (blank lines keep the original line numbers, so
  ONNX parse errors and FileCheck messages point at the right line of the real file);
* the CHECK lines of a case are matched against that case's output only;
* every RUN line (RUN lines may stand anywhere; by convention they head the file) applies to
  every case *that has check lines for the RUN's prefixes* (``--check-prefix``/
  ``--check-prefixes``, default ``CHECK``). That is the per-case variant: a case that expects an
  error carries only ``ERR:`` lines and is run by the ``not … --check-prefix=ERR`` RUN line
  only; a case that expects success carries ``CHECK:`` lines. A case no RUN line checks is an
  error, and so is an upper-case ``# WORD:`` (or ``# WORD-NEXT:`` …) line whose prefix no RUN
  line uses (a misspelt prefix would otherwise check nothing).

``# REQUIRES: module[, module...]`` (anywhere in the file) skips the whole file unless the modules
import, e.g. ``# REQUIRES: onnxruntime.training`` for the files that train. ``COM:`` lines are
comments to FileCheck.

Expected diagnostics are checked with ``not otoir-opt … 2>&1 | filecheck %s --check-prefix=ERR``
and ``# ERR: <the message>`` lines in the failing case. Test items are named ``RUN<i>`` for a
one-case file and ``RUN<i>@L<line>`` otherwise (``<line>``: the case's first line); a failure
names the case and its line.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import tempfile
from dataclasses import dataclass

import pytest

#: The line that separates the cases of a FileCheck file.
SPLIT_MARKER = "# -----"

_RUN = "# RUN:"
_REQUIRES = "# REQUIRES:"
_DIRECTIVE = re.compile(r"^\s*#\s*([A-Z][A-Z0-9_]*)(-(DAG|COUNT-\d+|NOT|EMPTY|NEXT|SAME|LABEL))?(\{LITERAL})?:")


def pytest_collect_file(parent, file_path):
    if file_path.suffix == ".onnxtxt" and "filecheck" in file_path.parts:
        return FileCheckFile.from_parent(parent, path=file_path)
    return None


class FileCheckFailure(Exception):
    pass


@dataclass(frozen=True)
class Case:
    """One case of a FileCheck file.

    Attributes:
        index: 1-based position in the file.
        line: 1-based line of the case's first line in the file.
        text: The case, preceded by ``line - 1`` blank lines (line numbers as in the file).
    """

    index: int
    line: int
    text: str


def split_cases(text: str) -> list[Case]:
    """Splits a FileCheck file at ``# -----`` lines into cases (one case if there is none)."""
    lines = text.splitlines()
    cases, start = [], 0
    for i, line in enumerate([*lines, SPLIT_MARKER]):
        if line.strip() == SPLIT_MARKER:
            body = lines[start:i]
            cases.append(Case(len(cases) + 1, start + 1, "\n" * start + "\n".join(body) + "\n"))
            start = i + 1
    return cases


def run_prefixes(command: str) -> list[str]:
    """The check prefixes a RUN line's ``filecheck`` uses (``CHECK`` by default)."""
    from filecheck.options import parse_argv_options

    if "|" not in command:
        raise FileCheckFailure(f"RUN line needs '| filecheck': {command}")
    words = shlex.split(command.split("|", 1)[1])
    if not words or words[0] != "filecheck":
        raise FileCheckFailure(f"right side of the pipe must be filecheck: {command}")
    return list(parse_argv_options(["filecheck", *[w for w in words[1:] if w != "%s"], "%s"]).check_prefixes)


def _has_checks(case: Case, prefixes: list[str]) -> bool:
    from filecheck.options import parse_argv_options
    from filecheck.parser import pattern_for_opts

    opts = parse_argv_options(["filecheck", "x", f"--check-prefixes={','.join(prefixes)}"])
    pattern = pattern_for_opts(opts)[0]
    return any(pattern.search(line) for line in case.text.splitlines() if not line.lstrip().startswith(_RUN))


def _has_model(case: Case) -> bool:
    return any(s and not s.startswith("#") for s in (line.strip() for line in case.text.splitlines()))


class FileCheckFile(pytest.File):
    def collect(self):
        try:
            yield from self._collect()
        except FileCheckFailure as exc:
            raise self.CollectError(str(exc)) from None

    def _collect(self):
        text = self.path.read_text()
        runs = [s[len(_RUN):].strip() for s in (line.strip() for line in text.splitlines()) if s.startswith(_RUN)]
        if not runs:
            raise FileCheckFailure(f"{self.path.name}: no '{_RUN}' line")
        prefixes = [run_prefixes(cmd) for cmd in runs]
        used = {p for ps in prefixes for p in ps}
        for n, line in enumerate(text.splitlines(), 1):
            m = _DIRECTIVE.match(line)
            if m and m.group(1) not in ("RUN", "COM", "REQUIRES") and m.group(1) not in used:
                raise FileCheckFailure(f"{self.path.name}:{n}: check prefix '{m.group(1)}' is used by no RUN line "
                                       f"(RUN lines check {', '.join(sorted(used))})")
        requires = tuple(m.strip() for s in (line.strip() for line in text.splitlines()) if s.startswith(_REQUIRES)
                         for m in s[len(_REQUIRES):].split(",") if m.strip())
        cases = split_cases(text)
        for case in cases:
            where = f"{self.path.name}: case {case.index} (line {case.line})"
            if not _has_model(case):
                raise FileCheckFailure(f"{where} has no model")
            mine = [i for i, ps in enumerate(prefixes) if _has_checks(case, ps)]
            if not mine:
                raise FileCheckFailure(f"{where} has no check lines for any RUN line's prefix "
                                       f"({', '.join(sorted(used))})")
            for i in mine:
                name = f"RUN{i}" if len(cases) == 1 else f"RUN{i}@L{case.line}"
                yield FileCheckItem.from_parent(self, name=name, command=runs[i], case=case, ncases=len(cases),
                                                requires=requires)


class FileCheckItem(pytest.Item):
    def __init__(self, *, command: str, case: Case, ncases: int, requires: tuple[str, ...] = (), **kw) -> None:
        super().__init__(**kw)
        self.command = command
        self.case = case
        self.ncases = ncases
        self.requires = requires

    def runtest(self) -> None:
        for module in self.requires:
            pytest.importorskip(module)
        with tempfile.TemporaryDirectory(prefix="otoir-filecheck-") as tmp:
            path = os.path.join(tmp, self.path.name)
            with open(path, "w", encoding="utf-8") as f:
                f.write(self.case.text)
            try:
                self._run(path)
            except FileCheckFailure as exc:  # point at the real file, not the per-case copy
                raise FileCheckFailure(str(exc).replace(path, str(self.path))) from None

    def _run(self, path: str) -> None:
        left, right = (part.strip() for part in self.command.split("|", 1))
        words = shlex.split(left.replace("%s", shlex.quote(path)))
        expect_fail = words[0] == "not"
        if expect_fail:
            words = words[1:]
        merge = "2>&1" in words
        words = [w for w in words if w != "2>&1"]
        if words[0] != "otoir-opt":
            raise FileCheckFailure(f"only otoir-opt can be run, got {words[0]}")
        from otoir.tools.otoir_opt import main

        out, err = io.StringIO(), io.StringIO()
        code = main(words[1:], stdout=out, stderr=err)
        if expect_fail and code == 0:
            raise FileCheckFailure(f"expected failure, got exit 0\nstderr:\n{err.getvalue()}")
        if not expect_fail and code != 0:
            raise FileCheckFailure(f"otoir-opt exited {code}\nstderr:\n{err.getvalue()}")
        text = out.getvalue() + (err.getvalue() if merge else "")
        _run_filecheck(shlex.split(right.replace("%s", shlex.quote(path)))[1:], text)

    def _where(self) -> str:
        if self.ncases == 1:
            return f"{self.path.name} {self.name}"
        return f"{self.path.name} case {self.case.index} of {self.ncases} (line {self.case.line}) {self.name}"

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, FileCheckFailure):
            return f"{self._where()}: {self.command}\n{excinfo.value}"
        return f"{self._where()}: {self.command}\n{super().repr_failure(excinfo)}"

    def reportinfo(self):
        return self.path, self.case.line - 1, f"filecheck {self._where()}"


def _run_filecheck(args: list[str], text: str) -> None:
    from filecheck.matcher import Matcher
    from filecheck.options import parse_argv_options

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text)
        tmp = f.name
    try:
        opts = parse_argv_options(["filecheck", *args, "--input-file", tmp])
        buf_out, buf_err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
            code = Matcher.from_opts(opts).run()
        if code != 0:
            report = f"{buf_out.getvalue()}{buf_err.getvalue()}".replace(tmp, "<otoir-opt output>")
            raise FileCheckFailure(f"filecheck failed:\n{report}\n--- otoir-opt output ---\n{text}")
    finally:
        os.unlink(tmp)


@pytest.fixture(autouse=True, scope="session")
def _torch_single_thread():
    """Pins torch to one intra-op thread for the whole run, module fixtures included (2-core CI
    machines stall with OpenMP spinning)."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mnist_256():
    """A fixed 256-image training / 64-image held-out subset of the shipped MNIST (seed 0)."""
    import numpy as np

    from otoir.data import Dataset, load_dataset

    ds = load_dataset("mnist")
    rng = np.random.default_rng(0)
    tr, va = rng.choice(len(ds.train_x), 256, replace=False), rng.choice(len(ds.val_x), 64, replace=False)
    return Dataset(ds.train_x[tr], ds.train_y[tr], ds.val_x[va], ds.val_y[va], ds.num_classes, "mnist-256")
