"""Shared test configuration, including the FileCheck plugin.

``tests/filecheck/**/*.onnxtxt`` files are collected as tests. Each ``# RUN:`` line is run
in-process::

    # RUN: otoir-opt %s -p 'classify-vertices' --annotate | filecheck %s
    # RUN: not otoir-opt %s -p 'check' 2>&1 | filecheck %s --check-prefix=ERR

``%s`` is the file itself; ``not`` expects a non-zero exit status; ``2>&1`` checks stderr
together with stdout. Checking uses the pure-Python ``filecheck`` package.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import tempfile

import pytest


def pytest_collect_file(parent, file_path):
    if file_path.suffix == ".onnxtxt" and "filecheck" in file_path.parts:
        return FileCheckFile.from_parent(parent, path=file_path)
    return None


class FileCheckFile(pytest.File):
    def collect(self):
        runs = []
        for line in self.path.read_text().splitlines():
            s = line.strip()
            if s.startswith("# RUN:"):
                runs.append(s[len("# RUN:"):].strip())
        if not runs:
            raise pytest.UsageError(f"{self.path}: no '# RUN:' line")
        for i, cmd in enumerate(runs):
            yield FileCheckItem.from_parent(self, name=f"RUN{i}", command=cmd)


class FileCheckFailure(Exception):
    pass


class FileCheckItem(pytest.Item):
    def __init__(self, *, command: str, **kw) -> None:
        super().__init__(**kw)
        self.command = command

    def runtest(self) -> None:
        path = str(self.path)
        if "|" not in self.command:
            raise FileCheckFailure(f"RUN line needs '| filecheck': {self.command}")
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
        check_words = shlex.split(right.replace("%s", shlex.quote(path)))
        if check_words[0] != "filecheck":
            raise FileCheckFailure("right side of the pipe must be filecheck")
        _run_filecheck(check_words[1:], text)

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, FileCheckFailure):
            return f"{self.path.name} {self.name}: {self.command}\n{excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, 0, f"filecheck {self.path.name}::{self.name}"


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
            raise FileCheckFailure(f"filecheck failed:\n{buf_out.getvalue()}{buf_err.getvalue()}\n--- input ---\n{text}")
    finally:
        os.unlink(tmp)


@pytest.fixture(autouse=True)
def _torch_single_thread():
    """Pins torch to one intra-op thread per test (2-core CI machines stall with OpenMP spinning)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
