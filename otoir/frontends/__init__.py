"""Front ends: turn framework models into onnx-ir models.

Submodules are imported lazily so that ``import otoir.frontends`` never imports torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ExportError", "export_torch", "parameter_map"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from otoir.frontends import torch_export

        return getattr(torch_export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
