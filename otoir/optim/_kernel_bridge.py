"""Access to ``otoir.kernels`` from the optimizers, also from an uninstalled source checkout.

``setup.py`` maps the top-level ``kernels/`` folder to ``otoir.kernels``; in a plain checkout
(tests run from the repository root) that mapping does not exist, so the package is loaded from
``<repo>/kernels`` under the same name. Any failure means "no CUDA kernel".
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

__all__ = ["cuda_halfspace", "import_kernels"]


def import_kernels() -> ModuleType | None:
    """The ``otoir.kernels`` package, or ``None`` when it cannot be found."""
    try:
        return importlib.import_module("otoir.kernels")
    except ImportError:
        pass
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    init = os.path.join(root, "kernels", "__init__.py")
    if not os.path.isfile(init):
        return None
    spec = importlib.util.spec_from_file_location(
        "otoir.kernels", init, submodule_search_locations=[os.path.dirname(init)]
    )
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules["otoir.kernels"] = module
    try:
        spec.loader.exec_module(module)
    except Exception:  # noqa: BLE001 - a broken optional kernel package must not break training
        sys.modules.pop("otoir.kernels", None)
        return None
    return module


def cuda_halfspace(layout: Any, device: Any) -> Any:
    """A :class:`otoir.kernels.loader.CudaHalfspace` for ``device``, or ``None`` if unavailable."""
    kernels = import_kernels()
    if kernels is None or not kernels.cuda_available():
        return None
    try:
        return kernels.CudaHalfspace(layout, device)
    except RuntimeError:
        return None
