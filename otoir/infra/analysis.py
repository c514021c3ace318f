"""Analyses and the analysis manager.

An analysis is an immutable result computed from a model. Analyses are computed lazily by
:class:`AnalysisManager`, cached by type, and dropped after a pass unless the pass declares
them preserved (or reports that it changed nothing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, TypeVar

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["Analysis", "AnalysisManager", "PRESERVE_ALL"]

A = TypeVar("A", bound="Analysis")

#: Marker for passes that change no analysis (e.g. annotating or printing passes).
PRESERVE_ALL: tuple = ("*",)


class Analysis:
    """Base class of analyses.

    Subclasses implement ``__init__(self, model, am)``; they may ask ``am`` for the analyses
    they depend on. They should not mutate the model. ``annotations()`` may return
    ``{node: {key: value}}`` pairs that the text printer shows as ``# otoir.key=value``.
    """

    #: Short kebab-case name, used in annotations and messages.
    name: ClassVar[str] = "analysis"

    def __init__(self, model: ir.Model, am: AnalysisManager) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def annotations(self) -> dict:
        """Returns per-node annotations ``{node: {key: value}}`` (empty by default)."""
        return {}


class AnalysisManager:
    """Lazily computes and caches analyses of one model.

    Args:
        model: The model the analyses describe.
    """

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self._cache: dict[type, Analysis] = {}
        self._computing: list[type] = []
        #: Number of analyses computed (not served from cache); for statistics and tests.
        self.computed = 0

    def get(self, kind: type[A]) -> A:
        """Returns the analysis ``kind``, computing it if it is not cached."""
        cached = self._cache.get(kind)
        if cached is not None:
            return cached  # type: ignore[return-value]
        if kind in self._computing:
            chain = " -> ".join(k.__name__ for k in [*self._computing, kind])
            raise RuntimeError(f"cyclic analysis dependency: {chain}")
        self._computing.append(kind)
        try:
            result = kind(self.model, self)
        finally:
            self._computing.pop()
        self._cache[kind] = result
        self.computed += 1
        return result

    def cached(self, kind: type[A]) -> A | None:
        """Returns the analysis if it is cached, without computing it."""
        return self._cache.get(kind)  # type: ignore[return-value]

    def cached_analyses(self) -> list[Analysis]:
        """Returns all cached analyses, in the order they were computed."""
        return list(self._cache.values())

    def invalidate(self, preserved: tuple = ()) -> None:
        """Drops every cached analysis whose type is not in ``preserved``."""
        if preserved == PRESERVE_ALL:
            return
        keep = set(preserved)
        self._cache = {k: v for k, v in self._cache.items() if k in keep}

    def clear(self) -> None:
        """Drops every cached analysis."""
        self._cache.clear()
