"""Numpy stepper: exact zero-group count, zero groups stay zero, H2SPG validity, checkpoints."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from otoir.optim import DHSPGStepper, GroupLayout, H2SPGStepper, HSPGStepper

G, S = 30, 4


def _lsq(seed, k_zero=10, m=200):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(G, S))
    w[rng.choice(G, k_zero, replace=False)] = 0
    A = rng.normal(size=(m, G * S)) / np.sqrt(G * S) * 3
    y = A @ w.ravel() + 0.05 * rng.normal(size=m)
    return A, y


def _run(stepper, A, y, steps, seed=0, params=None, trace=None):
    rng = np.random.default_rng(seed)
    p = params if params is not None else {"w": 0.1 * np.random.default_rng(99).normal(size=(G, S)), "bias": np.zeros(1)}
    for _ in range(steps):
        idx = rng.choice(len(y), 16, replace=False)
        r = A[idx] @ p["w"].ravel() + p["bias"][0] - y[idx]
        grads = {"w": (A[idx].T @ r / 16).reshape(G, S), "bias": np.array([r.mean()])}
        stepper.step(p, grads)
        if trace is not None:
            trace.append(~p["w"].any(axis=1))
    return p


LAYOUT = GroupLayout.from_slices([[("w", 0, [g])] for g in range(G)], {"w": (G, S)})
SHAPES = {"w": (G, S), "bias": (1,)}


@pytest.mark.parametrize("target", [1, 7, 15, 0.5, 0.9, 29])
@pytest.mark.parametrize("variant", ["sgd", "adamw"])
def test_exact_target_count_by_final_step(target, variant):
    A, y = _lsq(0)
    lr = 0.2 if variant == "sgd" else 0.01
    st = DHSPGStepper(LAYOUT, SHAPES, lr=lr, variant=variant, momentum=0.5 if variant == "sgd" else 0.0,
                      weight_decay=1e-3, target=target, warmup_steps=20, projection_steps=30, epsilon=0.3)
    K = target if isinstance(target, int) else int(target * G)
    trace: list[np.ndarray] = []
    p = _run(st, A, y, 80, trace=trace)
    counts = [int(z.sum()) for z in trace]
    assert all(c == 0 for c in counts[:20])  # nothing is zeroed in warm-up
    assert max(counts) <= K  # never overshoots
    assert counts[49] == K and all(c == K for c in counts[49:])  # exact from the final window step on
    assert st.num_zero_groups == K
    # the zero groups are exactly the redundant set, and zero groups stay zero every later step
    assert np.array_equal(trace[-1], st.redundant_groups)
    for a, b in zip(trace, trace[1:]):
        assert not np.any(a & ~b)
    assert p["bias"][0] != 0.0  # ungrouped parameters are trained


def test_zero_projection_window_projects_at_partition():
    A, y = _lsq(1)
    st = DHSPGStepper(LAYOUT, SHAPES, lr=0.1, target=5, warmup_steps=3, projection_steps=0)
    trace: list[np.ndarray] = []
    _run(st, A, y, 6, trace=trace)
    assert [int(t.sum()) for t in trace] == [0, 0, 0, 5, 5, 5]


def test_dhspg_recovers_planted_zero_groups():
    A, y = _lsq(2, k_zero=10, m=400)
    truth = ~_lsq_truth(2, 10)  # the planted zero groups
    st = DHSPGStepper(LAYOUT, SHAPES, lr=0.2, target=10, warmup_steps=100, projection_steps=100)
    p = _run(st, A, y, 300)
    found = ~p["w"].any(axis=1)
    assert found.sum() == 10
    assert (found & truth).sum() >= 8  # planted zero groups are found (weak true groups may swap)


def _lsq_truth(seed, k_zero):
    rng = np.random.default_rng(seed)
    rng.normal(size=(G, S))
    mask = np.ones(G, dtype=bool)
    mask[rng.choice(G, k_zero, replace=False)] = False
    return mask


def test_hspg_has_no_target_and_keeps_zeros():
    A, y = _lsq(3)
    st = HSPGStepper(LAYOUT, SHAPES, lr=0.2, warmup_steps=10, lam=0.05, epsilon=0.5)
    trace: list[np.ndarray] = []
    _run(st, A, y, 150, trace=trace)
    assert trace[-1].sum() > 0
    for a, b in zip(trace, trace[1:]):
        assert not np.any(a & ~b)


# --------------------------------------------------------------------------- H2SPG validity
def _alternatives_checker(n_blocks: int, per_block: int):
    """A synthetic super-network: n_blocks cells in series, each with per_block parallel branches
    (one group per branch). Valid iff every cell keeps at least one branch (input → output path)."""

    def valid(zero: set[int]) -> bool:
        return all(any(b * per_block + j not in zero for j in range(per_block)) for b in range(n_blocks))

    def selector(scores: np.ndarray, k: int) -> list[int]:
        chosen: list[int] = []
        for g in np.argsort(-scores, kind="stable"):
            if len(chosen) == k:
                break
            if valid(set(chosen) | {int(g)}):
                chosen.append(int(g))
        return chosen

    return valid, selector


def synthetic_validity_networks():
    """Hook: (name, n_groups, valid(set)->bool, selector, largest valid k) for the H2SPG test.

    The DemoSupNet / RegNet-style super-networks from the erasing analysis are to be appended
    here once ``otoir.analyses.validity.select_redundant`` exists.
    """
    nets = []
    for blocks, per in [(6, 5), (10, 3), (3, 10)]:
        valid, sel = _alternatives_checker(blocks, per)
        nets.append((f"cells{blocks}x{per}", blocks * per, valid, sel, blocks * (per - 1)))
    return nets


@pytest.fixture(params=synthetic_validity_networks(), ids=lambda n: n[0])
def validity_network(request):
    return request.param


def test_h2spg_never_selects_an_invalid_set(validity_network):
    _, n_groups, valid, selector, max_valid = validity_network
    shapes = {"w": (n_groups, 3)}
    lay = GroupLayout.from_slices([[("w", 0, [g])] for g in range(n_groups)], shapes)
    rng = np.random.default_rng(0)
    for _trial in range(6):
        k = int(rng.integers(1, n_groups))
        # scores that favour zeroing whole cells (the invalid choice DHSPG would make)
        w0 = rng.normal(size=(n_groups, 3))
        w0[: n_groups // 2] *= 1e-3
        st = H2SPGStepper(lay, shapes, selector=selector, lr=0.05, target=k, warmup_steps=2, projection_steps=3)
        p = {"w": w0.copy()}
        try:
            for _ in range(6):
                st.step(p, {"w": rng.normal(size=(n_groups, 3)) * 0.01})
        except ValueError:
            # only acceptable when no valid set of size k exists
            assert k > max_valid
            continue
        zero = set(np.flatnonzero(~p["w"].any(axis=1)).tolist())
        assert len(zero) == k and valid(zero)
        assert zero == set(np.flatnonzero(st.redundant_groups).tolist())


def test_selector_returning_too_few_raises():
    st = H2SPGStepper(LAYOUT, SHAPES, selector=lambda s, k: list(range(k - 1)), target=5, warmup_steps=1)
    A, y = _lsq(0)
    with pytest.raises(ValueError, match="selector returned 4 groups"):
        _run(st, A, y, 3)


# --------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("variant", ["sgd", "adam"])
@pytest.mark.parametrize("cut", [5, 25, 45])
def test_checkpoint_round_trip_gives_identical_steps(variant, cut):
    A, y = _lsq(4)
    kw = dict(lr=0.05 if variant == "sgd" else 0.01, variant=variant, momentum=0.9 if variant == "sgd" else 0.0,
              target=8, warmup_steps=10, projection_steps=30, epsilon=0.2)
    a = DHSPGStepper(LAYOUT, SHAPES, **kw)
    p = _run(a, A, y, cut, seed=1)
    saved_state = copy.deepcopy(a.state_dict())
    saved_params = copy.deepcopy(p)
    p_a = _run(a, A, y, 30, seed=2, params=p)
    b = DHSPGStepper(LAYOUT, SHAPES, **kw)
    b.load_state_dict(saved_state)
    p_b = _run(b, A, y, 30, seed=2, params=saved_params)
    assert np.array_equal(p_a["w"], p_b["w"]) and np.array_equal(p_a["bias"], p_b["bias"])
    assert np.array_equal(a.zero_groups, b.zero_groups)


@pytest.mark.parametrize("front", ["numpy", "torch"])
def test_linear_decay_takes_the_redundant_groups_to_zero_in_even_steps(front):
    """decay=linear (default): with no gradient and no penalty, a redundant group's norm after
    window step k of P is exactly (1 - (k+1)/P) of its norm at the partition; decay=none keeps it
    until the window's last step, then zeroes it at once. Kept groups are untouched either way."""
    from otoir.optim import build_optimizer

    P, W, K = 5, 3, 10
    w0 = np.random.default_rng(3).normal(size=(G, S))
    for decay in ("linear", "none"):
        kw = dict(lr=0.1, momentum=0.0, target=K, warmup_steps=W, projection_steps=P, lam=0.0, decay=decay)
        norms = []
        if front == "numpy":
            st = DHSPGStepper(LAYOUT, SHAPES, **kw)
            p = {"w": w0.copy(), "bias": np.zeros(1)}
            for _ in range(W + P + 2):
                st.step(p, {"w": np.zeros((G, S)), "bias": np.zeros(1)})
                norms.append(np.linalg.norm(p["w"], axis=1))
        else:
            torch = pytest.importorskip("torch")
            w = torch.nn.Parameter(torch.tensor(w0))
            st = build_optimizer("dhspg", {"w": w}, layout=LAYOUT, front="torch", **kw)
            for _ in range(W + P + 2):
                w.grad = torch.zeros_like(w)
                st.step()
                norms.append(np.linalg.norm(w.detach().numpy(), axis=1))
        red = st.redundant_groups
        assert red.sum() == K
        base = np.linalg.norm(w0, axis=1)
        for k in range(P):
            got = norms[W + k]
            want = base * (1 - (k + 1) / P) if decay == "linear" else (base if k < P - 1 else 0 * base)
            np.testing.assert_allclose(got[red], want[red], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(got[~red], base[~red], rtol=1e-12)
        assert not norms[-1][red].any() and np.all(norms[-1][~red] > 0)
