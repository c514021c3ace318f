"""Model surgery: carrying out what the analyses decided.

Removing erased segments (:mod:`otoir.surgery.erase`, from the plans of
:mod:`otoir.analyses.erasability`), pruned channels (:mod:`otoir.surgery.channels`), and the
clean-up both share (:mod:`otoir.surgery.common`).
"""

from __future__ import annotations

__all__: list[str] = []
