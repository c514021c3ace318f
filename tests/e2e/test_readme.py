"""The README's Python examples run as written (each block in a fresh interpreter, in a scratch folder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks() -> list[tuple[str, str]]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    out = []
    for m in _BLOCK.finditer(text):
        heading = [h for h in re.findall(r"^## (.+)$", text[:m.start()], re.M)][-1]
        out.append((heading, m.group(1)))
    return out


def test_readme_has_python_examples():
    names = [h for h, _ in _blocks()]
    assert len(names) >= 3, names


@pytest.mark.parametrize("heading,code", _blocks(), ids=[f"{i}-{h.split()[0]}" for i, (h, _) in enumerate(_blocks())])
def test_readme_example_runs(heading, code, tmp_path):
    if "model.onnx" in code:  # the Python API example reads a model of the user's: give it one
        prep = ("import otoir\nfrom otoir.zoo import build\nm, x = build('resnet_basic', width=4)\n"
                "otoir.save(otoir.load(m, x), 'model.onnx')\n")
        subprocess.run([sys.executable, "-c", prep], cwd=tmp_path, check=True, timeout=300)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, f"README example under '{heading}' failed:\n{done.stderr[-3000:]}"
