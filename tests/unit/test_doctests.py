"""The documented examples run: module docstrings (doctest), docs/embedding.md, docs/cli.md.

docs/torch.md's examples are run by tests/e2e/test_own_loop.py. docs/cli.md's training
commands (``otoir-prune{data=…}``/``otoir-erase{data=…}``) are left to the named-pipeline tests;
its analysis and zero-groups commands run here on an ordinary eval-mode export.
"""

from __future__ import annotations

import doctest
import importlib
import os
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

DOCS = Path(__file__).resolve().parents[2] / "docs"
MODULES = ["otoir.workflow", "otoir.optim.torch_optim"]


@pytest.mark.parametrize("name", MODULES)
def test_module_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def test_embedding_doc_runs(tmp_path):
    """Its blocks register a pass and an op rule, so they run in a process of their own."""
    code = "\n".join(re.findall(r"```python\n(.*?)```", (DOCS / "embedding.md").read_text(), flags=re.S))
    assert code.count("PassManager") >= 3
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "zig" in proc.stdout and "parameters" in proc.stdout and "'count': " in proc.stdout


def test_cli_doc_commands_run(tmp_path):
    from otoir.zoo import build

    model, x = build("resnet_basic", width=4, layers=(1, 1, 1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model.eval(), x, str(tmp_path / "model.onnx"), input_names=["x"],
                          dynamic_axes={"x": {0: "N"}}, dynamo=False)  # the ordinary export the page describes
    lines = re.findall(r"^otoir-opt .*$", (DOCS / "cli.md").read_text(), flags=re.M)
    quick = [ln for ln in lines if "data=" not in ln]
    assert len(lines) == 5 and len(quick) == 3
    opt = [sys.executable, "-c", "from otoir.tools.otoir_opt import console_main; console_main()"]
    for line in quick:
        argv = shlex.split(line.replace("> /dev/null", ""))
        proc = subprocess.run(opt + argv[1:], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (line, proc.stderr[-2000:])
        if "print-groups" in line:
            assert "prunable" in proc.stderr and " yes" in proc.stderr
    assert (tmp_path / "random_pruned.onnx").stat().st_size > 0
