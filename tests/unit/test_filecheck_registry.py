"""One FileCheck file per registered pass, and the split-input-file behaviour of the plugin.

The plugin lives in ``tests/conftest.py`` (imported here as ``conftest``, the name pytest gives it).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import conftest as fc
import pytest

from otoir.errors import PipelineError
from otoir.infra.pipeline import PipelineElement, parse_pipeline
from otoir.infra.registry import all_passes

pytest_plugins = ("pytester",)

FILECHECK_DIR = Path(__file__).resolve().parents[1] / "filecheck"

#: Passes whose file still holds one case and no expected failure (reworked by other branches
#: at the time of writing); every other file must have both.
SINGLE_CASE = frozenset({"eliminate-dead-branches", "partition-zig", "prune-channels"})


def _builtin_passes() -> set[str]:
    """Pass names registered by otoir's own modules (tests may register throw-away passes)."""
    return {name for name, cls in all_passes().items() if cls.__module__.startswith("otoir.passes.")}


def _files() -> list[Path]:
    return sorted(FILECHECK_DIR.rglob("*.onnxtxt"))


def _pass_of(path: Path, passes: set[str]) -> tuple[str | None, bool]:
    """(the pass a file tests, whether it is the pass's own file): ``grow_segments.onnxtxt`` is
    grow-segments' file, ``partition_zig_shared_weight.onnxtxt`` a topic file of partition-zig."""
    stem = path.stem.replace("_", "-")
    if stem in passes:
        return stem, True
    owners = [p for p in passes if stem.startswith(p + "-")]
    return (max(owners, key=len) if owners else None), False


def _own_files() -> list[Path]:
    passes = _builtin_passes()
    return [f for f in _files() if _pass_of(f, passes)[1]]


def _runs(path: Path) -> list[str]:
    return [s[len("# RUN:"):].strip() for s in (line.strip() for line in path.read_text().splitlines())
            if s.startswith("# RUN:")]


def _names(elements: list[PipelineElement]) -> set[str]:
    out: set[str] = set()
    for e in elements:
        out.add(e.name)
        out |= _names(e.children or [])
    return out


def _passes_run(command: str) -> set[str]:
    words = shlex.split(command.split("|", 1)[0])
    names: set[str] = set()
    for flag, value in zip(words, words[1:]):
        if flag in ("-p", "--pass-pipeline"):
            try:
                names |= _names(parse_pipeline(value))
            except PipelineError:  # a RUN line may test a malformed pipeline on purpose
                pass
    return names


def test_every_builtin_pass_has_exactly_one_filecheck_file():
    passes = _builtin_passes()
    assert {"cse", "train", "otoir-erase", "grow-segments"} <= passes  # the registry was loaded
    own: dict[str, list[Path]] = {}
    orphans = []
    for f in _files():
        name, is_own = _pass_of(f, passes)
        if is_own:
            own.setdefault(name, []).append(f)
        elif name is None:
            orphans.append(str(f.relative_to(FILECHECK_DIR)))
    missing = sorted(passes - own.keys())
    assert not missing, ("passes without a FileCheck file (tests/filecheck/<pass name, '-' -> '_'>.onnxtxt): "
                         + ", ".join(missing))
    twice = {p: [str(f.relative_to(FILECHECK_DIR)) for f in fs] for p, fs in own.items() if len(fs) > 1}
    assert not twice, f"more than one FileCheck file for a pass: {twice}"
    assert not orphans, ("FileCheck files named after no registered pass (name them <pass>.onnxtxt, or "
                         f"<pass>_<topic>.onnxtxt for an extra file): {', '.join(orphans)}")


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_filecheck_file_runs_its_pass(path):
    name, _ = _pass_of(path, _builtin_passes())
    ran = set().union(*(_passes_run(cmd) for cmd in _runs(path)))
    assert name in ran, f"{path.name}: no RUN line runs '{name}' (they run {sorted(ran)})"


@pytest.mark.parametrize("path", [f for f in _own_files() if f.stem.replace("_", "-") not in SINGLE_CASE],
                         ids=lambda p: p.name)
def test_filecheck_file_has_cases_and_an_expected_failure(path):
    cases = fc.split_cases(path.read_text())
    assert len(cases) >= 2, f"{path.name}: one case; separate several with '{fc.SPLIT_MARKER}' lines"
    failing = [cmd for cmd in _runs(path) if cmd.startswith("not ")]
    checked = [cmd for cmd in failing if any(fc._has_checks(c, fc.run_prefixes(cmd)) for c in cases)]
    assert checked, f"{path.name}: no case checks an expected failure ('not otoir-opt ... | filecheck --check-prefix=ERR')"


def test_split_cases_keeps_line_numbers():
    text = "# RUN: x\nA\n# -----\nB\nC\n# -----\nD\n"
    cases = fc.split_cases(text)
    assert [(c.index, c.line) for c in cases] == [(1, 1), (2, 4), (3, 7)]
    assert cases[1].text.splitlines()[3:] == ["B", "C"]
    assert cases[2].text.splitlines().index("D") == 6  # 0-based line 6 = line 7 of the file
    assert len(fc.split_cases("A\nB\n")) == 1


def test_run_prefixes():
    assert fc.run_prefixes("otoir-opt %s -p cse | filecheck %s") == ["CHECK"]
    assert fc.run_prefixes("not otoir-opt %s 2>&1 | filecheck %s --check-prefix=ERR") == ["ERR"]
    assert fc.run_prefixes("otoir-opt %s | filecheck %s --check-prefixes=A,B") == ["A", "B"]
    with pytest.raises(fc.FileCheckFailure, match="needs '| filecheck'"):
        fc.run_prefixes("otoir-opt %s -p cse")


_MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y)
{
  y = Relu (x)
}
"""


def _session(pytester, body: str):
    pytester.makeconftest((Path(fc.__file__)).read_text())
    pytester.path.joinpath("filecheck").mkdir(exist_ok=True)
    pytester.path.joinpath("filecheck", "demo.onnxtxt").write_text(body)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "filecheck")


def test_plugin_runs_each_case_and_names_the_failing_one(pytester):
    res = _session(pytester, "# RUN: otoir-opt %s -p cse | filecheck %s\n"
                             "# RUN: not otoir-opt %s -p check 2>&1 | filecheck %s --check-prefix=ERR\n"
                             f"{_MODEL}# CHECK: y = Relu (x)\n# -----\n"
                             f"{_MODEL}# CHECK: y = Sigmoid (x)\n# -----\n"
                             f"{_MODEL.replace('Relu', 'Foo')}# ERR: No Op registered for Foo\n")
    # case 1 passes, case 2 fails, case 3 runs only the ERR line (it has no CHECK lines) and passes
    res.assert_outcomes(passed=2, failed=1)
    res.stdout.fnmatch_lines(["*demo.onnxtxt case 2 of 3 (line 10) RUN0@L10*", "*demo.onnxtxt:15: error: Couldn't match*"])


def test_plugin_reports_parse_errors_at_the_file_line(pytester):
    res = _session(pytester, "# RUN: otoir-opt %s -p cse | filecheck %s\n"
                             f"{_MODEL}# CHECK: y = Relu (x)\n# -----\n"
                             f"{_MODEL.replace('Relu (x)', 'Relu (x')}# CHECK: y = Relu (x)\n")
    res.assert_outcomes(passed=1, failed=1)
    res.stdout.fnmatch_lines(["*case 2 of 2 (line 9)*", "*ParseError at position (line: 13*"])


@pytest.mark.parametrize(("body", "message"), [
    (f"# RUN: otoir-opt %s | filecheck %s\n{_MODEL}# CHEK: y = Relu\n",
     "*demo.onnxtxt:7: check prefix 'CHEK' is used by no RUN line*"),
    (f"# RUN: otoir-opt %s | filecheck %s\n{_MODEL}# CHECK: y\n# -----\n{_MODEL}",
     "*demo.onnxtxt: case 2 (line 9) has no check lines for any RUN line's prefix (CHECK)*"),
    (f"# RUN: otoir-opt %s | filecheck %s\n{_MODEL}# CHECK: y\n# -----\n# only a comment\n",
     "*demo.onnxtxt: case 2 (line 9) has no model*"),
    (f"{_MODEL}# CHECK: y\n", "*demo.onnxtxt: no '# RUN:' line*"),
])
def test_plugin_rejects_malformed_files(pytester, body, message):
    res = _session(pytester, body)
    res.assert_outcomes(errors=1)
    res.stdout.fnmatch_lines([message])


def test_plugin_requires_skips_when_a_module_is_missing(pytester):
    res = _session(pytester, "# RUN: otoir-opt %s -p cse | filecheck %s\n# REQUIRES: json, otoir_no_such_module\n"
                             f"{_MODEL}# CHECK: y = Sigmoid (x)\n")
    res.assert_outcomes(skipped=1)
    res = _session(pytester, f"# RUN: otoir-opt %s -p cse | filecheck %s\n# REQUIRES: json\n{_MODEL}# CHECK: y = Relu (x)\n")
    res.assert_outcomes(passed=1)
