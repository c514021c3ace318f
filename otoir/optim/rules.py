"""Per-group formulas of DHSPG / H2SPG on group statistics (numpy, float64).

Every function takes per-group reductions of the current iterate ``x`` and a direction ``d``:
``xd = x_gᵀd_g``, ``xx = ‖x_g‖²``, ``dd = ‖d_g‖²`` (arrays of shape ``(G,)``), so the work per
step is one reduction pass over the tensors plus these ``O(G)`` array operations. The CUDA kernel
in ``otoir.kernels`` implements the same formulas (keep them in sync).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "LambdaRule",
    "halfspace_decision",
    "redundancy_score",
    "select_top_k",
]

_TINY = 1e-12


@dataclass(frozen=True)
class LambdaRule:
    """DHSPG's choice of the group penalty λ_g (oto-notes §7.2).

    With ``ℓ = −xᵀd/‖x‖`` (the smallest λ for which ``d + λx/‖x‖`` shrinks ‖x‖) and
    ``u = −‖d‖²‖x‖/(xᵀd)`` (the largest λ for which it is still a descent direction of f),
    both defined when ``xᵀd < 0``: ``λ_g = clip(amplify·ℓ, λ, λ·hat_coeff)``, replaced by
    ``(ℓ+u)/2`` when it reaches ``u``. Groups with ``xᵀd ≥ 0`` already shrink and get ``λ``.
    ``adaptive=False`` gives HSPG's constant ``λ``.

    Attributes:
        lam: Base penalty λ.
        amplify: Multiplier of the lower bound ℓ.
        hat_coeff: λ_g is capped at ``λ·hat_coeff``.
        adaptive: Use the bounds (DHSPG) or a constant λ (HSPG).
    """

    lam: float = 1e-3
    amplify: float = 2.0
    hat_coeff: float = 10.0
    adaptive: bool = True

    def __call__(self, xd: np.ndarray, xx: np.ndarray, dd: np.ndarray) -> np.ndarray:
        """Returns λ_g for each group (``(G,)`` float64)."""
        xd = np.asarray(xd, dtype=np.float64)
        lam = np.full(xd.shape, self.lam, dtype=np.float64)
        if not self.adaptive:
            return lam
        xnorm = np.sqrt(np.asarray(xx, dtype=np.float64))
        grow = (xd < 0) & (xnorm > 0)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # xᵀd ≈ -0: u → ∞, no bound
            low = np.where(grow, -xd / np.where(grow, xnorm, 1.0), 0.0)
            up = np.where(grow, -np.asarray(dd, np.float64) * xnorm / np.where(grow, xd, -1.0), 0.0)
        cand = np.clip(self.amplify * low, self.lam, self.lam * self.hat_coeff)
        cand = np.where(cand >= up, 0.5 * (low + up), cand)
        return np.where(grow, cand, lam)


def halfspace_decision(
    xd: np.ndarray,
    xx: np.ndarray,
    lam_g: np.ndarray,
    lr: float,
    epsilon: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Subgradient step factor and half-space projection test per group.

    The trial point of group g is ``x̃ = (1 − lr·c)·x − lr·d`` with ``c = λ_g/‖x‖``; it is
    projected to zero when ``x̃ᵀx < ε‖x‖²``. Both follow from ``xᵀd`` and ``‖x‖²`` since
    ``x̃ᵀx = (1 − lr·c)‖x‖² − lr·xᵀd``.

    Args:
        xd: ``x_gᵀd_g``.
        xx: ``‖x_g‖²``.
        lam_g: Penalty per group.
        lr: Step size.
        epsilon: Half-space threshold ε ∈ [0, 1).

    Returns:
        ``(scale, project)``: the factor ``1 − lr·c`` applied to ``x`` before the base step
        ``−lr·d``, and the bool mask of groups whose trial point leaves the half-space (groups
        with ``‖x‖ = 0`` are reported as projected).
    """
    xx = np.asarray(xx, dtype=np.float64)
    xnorm = np.sqrt(xx)
    c = np.where(xnorm > 0, np.asarray(lam_g, np.float64) / np.maximum(xnorm, _TINY), 0.0)
    scale = 1.0 - lr * c
    dot = scale * xx - lr * np.asarray(xd, np.float64)
    project = (dot < epsilon * xx) | (xx <= 0)
    return scale, project


def redundancy_score(
    xd: np.ndarray, xx: np.ndarray, dd: np.ndarray, numel: np.ndarray
) -> np.ndarray:
    """DHSPG's redundancy score of each group (larger = more redundant).

    ``a_g = cos(−x_g, −∇f_g)`` (the descent direction points at the origin) and
    ``b_g = 1/(rms(x_g) + 1e-6)`` (small weights); each vector is divided by its L2 norm over
    the groups and the score is ``0.5·â + 0.5·b̂``. otoir uses the RMS ``‖x_g‖/√|g|`` as the
    average magnitude (DHSPG divides by ``|g|``), so groups of different sizes compare fairly.

    Args:
        xd: ``x_gᵀ∇f_g``.
        xx: ``‖x_g‖²``.
        dd: ``‖∇f_g‖²``.
        numel: Elements per group.

    Returns:
        ``(G,)`` float64 scores.
    """
    xx = np.asarray(xx, np.float64)
    dd = np.asarray(dd, np.float64)
    denom = np.sqrt(xx * dd)
    cos = np.where(denom > 0, np.asarray(xd, np.float64) / np.maximum(denom, _TINY), 0.0)
    rms = np.sqrt(xx / np.asarray(numel, np.float64))
    mag = 1.0 / (rms + 1e-6)
    a = cos / max(float(np.linalg.norm(cos)), _TINY)
    b = mag / max(float(np.linalg.norm(mag)), _TINY)
    return 0.5 * a + 0.5 * b


def select_top_k(scores: np.ndarray, k: int) -> list[int]:
    """Default selector: the ``k`` groups with the largest scores, best first (ties by index)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(scores.size), -scores))
    return [int(i) for i in order[:k]]
