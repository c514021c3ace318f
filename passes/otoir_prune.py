"""``otoir-prune``: defined with ``otoir-erase`` in :mod:`otoir.passes.otoir_erase`."""

from __future__ import annotations

from otoir.passes.otoir_erase import OtoirPrune

__all__ = ["OtoirPrune"]
