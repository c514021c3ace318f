"""Packaging for otoir.

One import namespace: ``otoir`` plus ``otoir.passes``, ``otoir.kernels`` and ``otoir.tools``,
whose sources live in the top-level ``passes/``, ``kernels/`` and ``tools/`` folders.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

PACKAGE_DIRS = {
    "otoir": "otoir",
    "otoir.passes": "passes",
    "otoir.kernels": "kernels",
    "otoir.tools": "tools",
}


def _packages() -> list[str]:
    pkgs = [p for p in find_packages(include=["otoir", "otoir.*"])]
    return sorted(set(pkgs) | {"otoir.passes", "otoir.kernels", "otoir.tools"})


class BuildPyWithKernels(build_py):
    """Builds the optional CUDA kernel library when nvcc is found (or OTOIR_BUILD_CUDA=1)."""

    def run(self) -> None:
        super().run()
        want = os.environ.get("OTOIR_BUILD_CUDA")
        if want == "0" or (want != "1" and shutil.which("nvcc") is None):
            return
        # An editable install imports otoir.kernels from the source tree, whose loader also looks in
        # <repo>/build: build there. A wheel build uses the build command's temporary folder.
        editable = bool(getattr(self, "editable_mode", False))
        here = os.path.dirname(os.path.abspath(__file__))
        build_dir = (os.path.join(here, "build") if editable
                     else os.path.join(self.get_finalized_command("build").build_temp, "cuda"))
        try:
            subprocess.check_call(["cmake", "-S", here, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release"])
            subprocess.check_call(["cmake", "--build", build_dir, "-j2"])
        except (OSError, subprocess.CalledProcessError) as exc:
            if want == "1":
                raise
            print(f"otoir: optional CUDA kernel build skipped ({exc})", file=sys.stderr)
            return
        if editable:
            return
        for name in os.listdir(build_dir):
            if name.startswith("libotoir_kernels") and name.endswith(".so"):
                target = os.path.join(self.build_lib, "otoir", "kernels")
                os.makedirs(target, exist_ok=True)
                shutil.copy2(os.path.join(build_dir, name), target)


setup(
    name="otoir",
    version="0.1.0",
    description="Only-Train-Once neural-network compression as an ONNX pass pipeline",
    python_requires=">=3.10",
    packages=_packages(),
    package_dir=PACKAGE_DIRS,
    package_data={"otoir.kernels": ["*.cu", "*.c", "*.so"], "otoir": ["data/*.npz", "data/*.md"]},
    install_requires=[
        "numpy>=1.24",
        "onnx>=1.16",
        "onnx-ir>=1.1,<2",
        "onnx-graphsurgeon>=0.5",
        "tqdm>=4.60",
    ],
    extras_require={
        # Exactly one onnxruntime distribution may be installed (they share the module
        # directory): plain inference, or the training build that also provides inference.
        "ort": ["onnxruntime>=1.17"],
        "train": ["onnxruntime-training-cpu==1.19.2"],
        # onnxscript: torch.onnx.export(dynamo=True) and otoir.load(module, exporter="dynamo").
        "torch": ["torch>=2.1", "onnxscript>=0.5"],
        "dev": ["pytest>=8", "hypothesis>=6", "filecheck>=1.0", "ruff"],
        # Third-party architectures for the tests (built from configs, random init, no downloads).
        "models": ["transformers>=4.45"],
        # otoir-demo's training plot (imported lazily; without it the demo skips the plot).
        "demo": ["torch>=2.1", "matplotlib>=3.5"],
        # tools/bench_prune.py times the public OTO library beside otoir (graphviz/pydot: its imports).
        "benchmark": ["only_train_once==3.0.1", "graphviz", "pydot"],
    },
    entry_points={"console_scripts": ["otoir-opt=otoir.tools.otoir_opt:console_main",
                                      "otoir-demo=otoir.tools.demo:console_main"]},
    cmdclass={"build_py": BuildPyWithKernels},
)
