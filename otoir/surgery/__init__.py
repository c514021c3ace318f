"""Model surgery: removing erased segments (:mod:`otoir.surgery.erase`) and pruned channels."""

from __future__ import annotations

__all__: list[str] = []
