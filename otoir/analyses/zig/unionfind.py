"""Union-find over channel atoms: the equivalence classes are the zero-invariant groups."""

from __future__ import annotations

import numpy as np

__all__ = ["components"]


def components(n: int, edges: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Union-find over ``n`` atoms: returns the root (smallest atom) of each atom's class.

    Vectorised hooking and pointer jumping; linear in the number of edges per round.
    """
    parent = np.arange(n, dtype=np.int64)
    if not edges:
        return parent
    a = np.concatenate([e[0] for e in edges])
    b = np.concatenate([e[1] for e in edges])
    while True:
        pa, pb = parent[a], parent[b]
        diff = pa != pb
        if not np.any(diff):
            break
        a, b = a[diff], b[diff]
        pa, pb = pa[diff], pb[diff]
        lo, hi = np.minimum(pa, pb), np.maximum(pa, pb)
        np.minimum.at(parent, hi, lo)
        while True:
            pp = parent[parent]
            if np.array_equal(pp, parent):
                break
            parent = pp
    return parent
