"""otoir: Only-Train-Once neural-network compression as an ONNX pass pipeline.

The few high-level calls live here; the pass infrastructure is in :mod:`otoir.infra`, the
per-op rule table in :mod:`otoir.ops`, analyses in :mod:`otoir.analyses` and passes in
:mod:`otoir.passes`.
"""

from __future__ import annotations

import importlib
import sys
import types

from otoir.errors import InputError, OtoirError, OutputError, PassFailure, PipelineError, PipelineSyntaxError, VerifierError

__version__ = "0.1.0"

# The heavy names (onnx, onnx-ir, numpy behind them) are imported on first use, so that
# ``import otoir`` -- and with it the ``otoir-opt`` console script, which must handle Ctrl-C
# from its first moment -- starts in milliseconds.
_LAZY = {
    "Compression": "otoir.workflow",
    "Constructed": "otoir.workflow",
    "PassManager": "otoir.infra",
    "analyze": "otoir.workflow",
    "from_graphsurgeon": "otoir.io",
    "load": "otoir.io",
    "save": "otoir.io",
    "to_graphsurgeon": "otoir.io",
    "stats": "otoir.stats",
    "print_model": "otoir.textir",
}


class _Package(types.ModuleType):
    def __getattr__(self, name: str):
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'otoir' has no attribute '{name}'")
        value = getattr(importlib.import_module(module), name)
        types.ModuleType.__setattr__(self, name, value)
        return value

    def __setattr__(self, name: str, value) -> None:
        # Importing the submodule ``otoir.stats`` binds it here; ``otoir.stats`` stays the function.
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        types.ModuleType.__setattr__(self, name, value)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(_LAZY))


sys.modules[__name__].__class__ = _Package


def compress(*args, **kwargs):
    """Compresses a model; see :func:`otoir.api.compress` (imported lazily)."""
    from otoir.api import compress as _compress

    return _compress(*args, **kwargs)


__all__ = [
    "Compression",
    "Constructed",
    "InputError",
    "OtoirError",
    "OutputError",
    "PassFailure",
    "PassManager",
    "PipelineError",
    "PipelineSyntaxError",
    "VerifierError",
    "analyze",
    "compress",
    "stats",
    "from_graphsurgeon",
    "load",
    "print_model",
    "save",
    "to_graphsurgeon",
    "__version__",
]
