"""The fused half-space projection against a direct per-group reference, and the λ rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otoir.optim import GroupLayout, LambdaRule, halfspace_project
from otoir.optim.halfspace import group_stats

SHAPES = {"a": (8, 4, 3), "b": (8,), "c": (5, 8), "d": (3, 3), "e": (2, 7)}


def _layout():
    groups = [[("a", 0, [i]), ("b", 0, [i])] for i in range(8)]  # rows, axis 0
    groups += [[("c", 1, [j])] for j in range(8)]  # columns, axis 1 (strided rows)
    groups += [[("d", None, None), ("e", None, None)]]  # a GeZIG of whole tensors
    return GroupLayout.from_slices(groups, SHAPES)


def _members(arrs):
    """Group g as a list of (array view indexer) pairs, written out by hand."""
    m = [[("a", (i,)), ("b", (i,))] for i in range(8)]
    m += [[("c", (slice(None), j))] for j in range(8)]
    m += [[("d", (Ellipsis,)), ("e", (Ellipsis,))]]
    return m


def reference_step(arrs, dirs, active, lr, rule, eps, force=False):
    """Per-group loop: x̃ = x − lr·d − lr·λ_g·x/‖x‖, projected to 0 if x̃ᵀx < ε‖x‖²; others x − lr·d."""
    out = {k: v - lr * dirs[k] for k, v in arrs.items()}
    projected = []
    for g, members in enumerate(_members(arrs)):
        if not active[g]:
            continue
        x = np.concatenate([np.ravel(arrs[n][ix]) for n, ix in members]).astype(np.float64)
        d = np.concatenate([np.ravel(dirs[n][ix]) for n, ix in members]).astype(np.float64)
        nx = np.linalg.norm(x)
        lam = rule.lam
        if rule.adaptive and x @ d < 0 and nx > 0:
            low = -(x @ d) / nx
            up = -(d @ d) * nx / (x @ d)
            lam = min(max(rule.amplify * low, rule.lam), rule.lam * rule.hat_coeff)
            if lam >= up:
                lam = 0.5 * (low + up)
        xt = x - lr * d - (lr * lam * x / nx if nx > 0 else 0.0)
        proj = force or (xt @ x < eps * (x @ x)) or nx == 0
        if proj:
            projected.append(g)
        for n, ix in members:
            out[n][ix] = 0.0 if proj else (arrs[n][ix] - lr * dirs[n][ix] - lr * lam * arrs[n][ix] / nx)
    return out, projected


def _problem(seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    arrs = {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}
    # directions partly aligned with x (shrinking) and partly against it (growing)
    dirs = {k: (rng.normal(size=s) + rng.choice([-3.0, 3.0]) * arrs[k]).astype(dtype) for k, s in SHAPES.items()}
    return arrs, dirs


@pytest.mark.parametrize("eps", [0.0, 0.5, 0.95])
@pytest.mark.parametrize("adaptive", [True, False])
def test_fused_numpy_matches_per_group_reference(eps, adaptive):
    lay = _layout()
    rule = LambdaRule(lam=0.5, amplify=2.0, hat_coeff=10.0, adaptive=adaptive)
    for seed in range(5):
        arrs, dirs = _problem(seed)
        rng = np.random.default_rng(100 + seed)
        active = rng.uniform(size=lay.num_groups) < 0.7
        lr = 0.1
        want, want_proj = reference_step(arrs, dirs, active, lr, rule, eps)
        xs = [arrs[n].copy() for n in lay.names]
        ds = [dirs[n] for n in lay.names]
        proj = halfspace_project(lay, xs, ds, active, lr, rule, eps)
        got = {n: x - lr * dirs[n] for n, x in zip(lay.names, xs)}
        for g in np.flatnonzero(proj):  # the caller re-zeroes projected groups after the base step
            for n, ix in _members(arrs)[g]:
                got[n][ix] = 0.0
        assert sorted(np.flatnonzero(proj).tolist()) == want_proj
        for n in lay.names:
            np.testing.assert_allclose(got[n], want[n], rtol=1e-10, atol=1e-12)


def test_force_projects_every_active_group_and_nothing_else():
    lay = _layout()
    arrs, dirs = _problem(7)
    active = np.zeros(lay.num_groups, dtype=bool)
    active[[1, 9, 16]] = True
    xs = [arrs[n].copy() for n in lay.names]
    proj = halfspace_project(lay, xs, [dirs[n] for n in lay.names], active, 0.1, LambdaRule(), 0.0, force=True)
    assert np.array_equal(proj, active)
    x = dict(zip(lay.names, xs))
    assert not x["a"][1].any() and x["b"][1] == 0 and not x["c"][:, 1].any() and not x["d"].any()
    assert np.array_equal(x["a"][0], arrs["a"][0]) and np.array_equal(x["c"][:, 0], arrs["c"][:, 0])


def test_torch_reference_matches_numpy():
    torch = pytest.importorskip("torch")
    lay = _layout()
    rule = LambdaRule(lam=0.5)
    for seed in range(4):
        arrs, dirs = _problem(seed, np.float32)
        active = np.random.default_rng(seed).uniform(size=lay.num_groups) < 0.8
        xs_np = [arrs[n].copy() for n in lay.names]
        xs_t = [torch.from_numpy(arrs[n].copy()) for n in lay.names]
        p_np = halfspace_project(lay, xs_np, [dirs[n] for n in lay.names], active, 0.1, rule, 0.3)
        p_t = halfspace_project(lay, xs_t, [torch.from_numpy(dirs[n]) for n in lay.names], active, 0.1, rule, 0.3)
        assert np.array_equal(p_np, p_t)
        for a, b in zip(xs_np, xs_t):
            np.testing.assert_allclose(b.numpy(), a, rtol=1e-6, atol=1e-6)


def test_group_stats_against_gather():
    lay = _layout()
    arrs, dirs = _problem(3)
    x, d = lay.gather(arrs), lay.gather(dirs)
    xd, xx, dd = group_stats(lay, [arrs[n] for n in lay.names], [dirs[n] for n in lay.names])
    np.testing.assert_allclose(xd, lay.segment_sum(x * d))
    np.testing.assert_allclose(xx, lay.segment_sum(x * x))
    np.testing.assert_allclose(dd, lay.segment_sum(d * d))


@settings(max_examples=200, deadline=None)
@given(
    x=st.lists(st.floats(-10, 10), min_size=3, max_size=3),
    d=st.lists(st.floats(-10, 10), min_size=3, max_size=3),
    lam=st.floats(1e-4, 1.0),
)
def test_lambda_rule_bounds(x, d, lam):
    x, d = np.array(x), np.array(d)
    nx = np.linalg.norm(x)
    rule = LambdaRule(lam=lam, amplify=2.0, hat_coeff=10.0)
    got = float(rule(np.array([x @ d]), np.array([x @ x]), np.array([d @ d]))[0])
    if x @ d >= 0 or nx == 0:
        assert got == pytest.approx(lam)
        return
    with np.errstate(over="ignore"):  # xᵀd ≈ -0: u → ∞
        low, up = -(x @ d) / nx, -(d @ d) * nx / (x @ d)
    # λ_g stays a descent direction of f (below u) and is either in [λ, λ·hat] or the midpoint
    assert got < up or np.isclose(got, up)
    assert (lam - 1e-12 <= got <= 10 * lam + 1e-12) or got == pytest.approx(0.5 * (low + up))
