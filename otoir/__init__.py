"""otoir: Only-Train-Once neural-network compression as an ONNX pass pipeline.

The few high-level calls live here; the pass infrastructure is in :mod:`otoir.infra`, the
per-op rule table in :mod:`otoir.ops`, analyses in :mod:`otoir.analyses` and passes in
:mod:`otoir.passes`.
"""

from __future__ import annotations

from otoir.errors import InputError, OtoirError, PassFailure, PipelineError, PipelineSyntaxError, VerifierError
from otoir.infra import PassManager
from otoir.io import from_graphsurgeon, load, save, to_graphsurgeon
from otoir.stats import stats
from otoir.textir import print_model

__version__ = "0.1.0"


def compress(*args, **kwargs):
    """Compresses a model; see :func:`otoir.api.compress` (imported lazily)."""
    from otoir.api import compress as _compress

    return _compress(*args, **kwargs)


__all__ = [
    "InputError",
    "OtoirError",
    "PassFailure",
    "PassManager",
    "PipelineError",
    "PipelineSyntaxError",
    "VerifierError",
    "compress",
    "stats",
    "from_graphsurgeon",
    "load",
    "print_model",
    "save",
    "to_graphsurgeon",
    "__version__",
]
