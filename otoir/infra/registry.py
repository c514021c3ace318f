"""The pass registry, with lazy loading of built-in passes.

Built-in passes live in ``otoir.passes``, one module per pass named after the pass argument
(``grow-segments`` -> ``otoir/passes/grow_segments.py``). A module is imported only when one of
its passes is looked up, except by :func:`all_passes`, which imports them all.
"""

from __future__ import annotations

import importlib
import pkgutil

from otoir.errors import PipelineError
from otoir.infra.passes import Pass

__all__ = ["register_pass", "get_pass", "all_passes", "unregister_pass"]

_REGISTRY: dict[str, type[Pass]] = {}

# Passes whose module is not named after them.
_MODULE_OF: dict[str, str] = {
    "cse": "ir_common",
    "remove-unused-nodes": "ir_common",
    "remove-unused-functions": "ir_common",
    "remove-unused-opsets": "ir_common",
    "topological-sort": "ir_common",
    "shape-inference": "ir_common",
    "check": "ir_common",
    "identity-elimination": "ir_common",
    "deduplicate-initializers": "ir_common",
    "lift-constants-to-initializers": "ir_common",
    "inline": "ir_common",
    "name-fix": "ir_common",
    "cleanup": "ir_common",
    "repeat": "repeat",
}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: registers a pass under its ``name``.

    Raises:
        ValueError: The name is empty or already taken by another class.
    """
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no pass name")
    prev = _REGISTRY.get(cls.name)
    if prev is not None and prev is not cls and (prev.__module__, prev.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"pass name '{cls.name}' is already registered by {prev.__module__}.{prev.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def unregister_pass(name: str) -> None:
    """Removes a pass from the registry (for tests and plugins)."""
    _REGISTRY.pop(name, None)


def get_pass(name: str) -> type[Pass]:
    """Returns the pass class registered as ``name``, importing its module on demand.

    Raises:
        PipelineError: No such pass.
    """
    cls = _REGISTRY.get(name)
    if cls is not None:
        return cls
    module = _MODULE_OF.get(name, name.replace("-", "_"))
    try:
        importlib.import_module(f"otoir.passes.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"otoir.passes.{module}":
            raise
    cls = _REGISTRY.get(name)
    if cls is None:
        raise PipelineError(f"unknown pass '{name}' (see --list-passes)")
    return cls


def all_passes() -> dict[str, type[Pass]]:
    """Imports every built-in pass module and returns the registry, sorted by name."""
    import otoir.passes as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"otoir.passes.{info.name}")
    return dict(sorted(_REGISTRY.items()))
