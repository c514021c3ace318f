"""The fused CPU step (otoir.optim.fused, kernels/cpu_step.c) against the generic step.

The element-wise arithmetic is the same (bit-for-bit equal to torch.optim.SGD during warm-up);
the row reductions may round differently, which moves λ_g and the half-space scale of active
groups by an ulp, so hybrid-phase iterates are compared to a tight tolerance and the zero sets
exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from otoir.optim import DHSPGStepper, GroupLayout, HSPGStepper
from otoir.optim import fused as fused_mod

torch = pytest.importorskip("torch")

from otoir.optim import DHSPG  # noqa: E402

# rows along axis 0 (kernel path), a BN-like vector, columns along axis 1 (strided: chunk path),
# a whole-tensor group and an ungrouped tensor
SHAPES = {"conv": (12, 3, 3, 3), "bn": (12,), "fc": (5, 12), "gz": (4, 6), "free": (7, 3)}


def _layout():
    groups = [[("conv", 0, [i]), ("bn", 0, [i])] for i in range(12)]
    groups += [[("fc", 1, [j])] for j in range(0, 12, 2)]  # odd columns stay ungrouped
    groups += [[("gz", None, None)]]
    return GroupLayout.from_slices(groups, SHAPES)


CONFIGS = [
    dict(momentum=0.9, target=0.5, warmup_steps=3, projection_steps=4, epsilon=0.3, lam=0.5),
    dict(momentum=0.0, weight_decay=1e-2, target=7, warmup_steps=2, projection_steps=3, lam=0.5),
    dict(momentum=0.9, dampening=0.1, weight_decay=1e-3, target=0.3, warmup_steps=4,
         projection_steps=3, epsilon=0.9, lam=0.1, score_interval=2),
    dict(momentum=0.5, target=5, warmup_steps=0, projection_steps=0),
]


def _grads(rng, params, dtype):
    return {n: (rng.normal(size=v.shape) + 0.5 * np.asarray(v) * rng.choice([-1.0, 1.0])).astype(dtype)
            for n, v in params.items()}


@pytest.fixture(params=["kernel", "chunks"])
def mode(request, monkeypatch):
    if request.param == "chunks":
        monkeypatch.setattr(fused_mod, "_load_kernel", lambda: None)
    elif fused_mod._load_kernel() is None:
        pytest.skip("CPU kernel unavailable (no C compiler)")
    monkeypatch.setattr(fused_mod, "CHUNK_ELEMS", 16)  # several chunks per tensor
    return request.param


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_fused_equals_generic(cfg, dtype, mode):
    lay = _layout()
    runs = []
    for use_fused in (True, False):
        rng = np.random.default_rng(0)
        params = {n: rng.normal(size=s).astype(dtype) for n, s in SHAPES.items()}
        st = DHSPGStepper(lay, SHAPES, lr=0.05, **cfg)
        if not use_fused:
            st.fused_step = None
        for t in range(12):
            grads = _grads(rng, params, dtype)
            if t == 5:
                grads.pop("free")  # a parameter without gradient is left alone
            st.step(params, grads)
        runs.append((params, st))
    (pa, sa), (pb, sb) = runs
    assert np.array_equal(sa.zero_groups, sb.zero_groups)
    assert sa.num_zero_groups == sa.core.target_count
    # row reductions round differently (float32 sums in another order / double accumulation)
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(sa.core.scores, sb.core.scores, rtol=rtol, atol=1e-12)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    for n in SHAPES:
        np.testing.assert_allclose(pa[n], pb[n], **tol)
        if cfg["momentum"]:
            np.testing.assert_allclose(sa.state[n]["momentum_buffer"], sb.state[n]["momentum_buffer"], **tol)


@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_kernel_calls_equal_generic(threads, monkeypatch):
    if fused_mod._load_kernel() is None:
        pytest.skip("CPU kernel unavailable (no C compiler)")
    monkeypatch.setattr(fused_mod, "PARALLEL_MIN_ELEMS", 0)
    lay = _layout()
    cfg = CONFIGS[0]
    runs = []
    for use_fused in (True, False):
        g = torch.Generator().manual_seed(4)
        params = {n: torch.nn.Parameter(torch.randn(s, generator=g)) for n, s in SHAPES.items()}
        opt = DHSPG(params, lay, lr=0.05, **cfg)
        if not use_fused:
            opt.fused_step = None
        for t in range(12):
            for p in params.values():
                p.grad = torch.randn(p.shape, generator=g) + 0.3 * p.detach()
            opt.step()
            if use_fused and t == 0:
                opt._fused_impl.threads = threads
        runs.append((params, opt))
    (pa, oa), (pb, ob) = runs
    assert np.array_equal(oa.zero_groups, ob.zero_groups)
    for n in SHAPES:
        torch.testing.assert_close(pa[n], pb[n], rtol=1e-5, atol=1e-6)


def test_hspg_fused_equals_generic(mode):
    lay = _layout()
    out = []
    for use_fused in (True, False):
        rng = np.random.default_rng(1)
        params = {n: rng.normal(size=s) for n, s in SHAPES.items()}
        st = HSPGStepper(lay, SHAPES, lr=0.1, warmup_steps=2, lam=0.8, momentum=0.5)
        if not use_fused:
            st.fused_step = None
        for _ in range(10):
            st.step(params, _grads(rng, params, np.float64))
        out.append((params, st.zero_groups))
    assert np.array_equal(out[0][1], out[1][1])
    for n in SHAPES:
        assert np.array_equal(out[0][0][n], out[1][0][n])


@pytest.mark.parametrize("cfg", CONFIGS)
def test_torch_fused_equals_generic(cfg, mode):
    lay = _layout()
    runs = []
    for use_fused in (True, False):
        g = torch.Generator().manual_seed(0)
        params = {n: torch.nn.Parameter(torch.randn(s, generator=g)) for n, s in SHAPES.items()}
        opt = DHSPG(params, lay, lr=0.05, **cfg)
        if not use_fused:
            opt.fused_step = None
        for _ in range(12):
            for p in params.values():
                p.grad = torch.randn(p.shape, generator=g) + 0.3 * p.detach()
            opt.step()
        runs.append((params, opt))
    (pa, oa), (pb, ob) = runs
    assert np.array_equal(oa.zero_groups, ob.zero_groups)
    for n in SHAPES:
        torch.testing.assert_close(pa[n], pb[n], rtol=1e-5, atol=1e-6)


def test_torch_fused_equals_torch_sgd_bitwise(mode):
    """Before the partition the fused step is torch.optim.SGD's step, to the bit."""
    lay = _layout()
    g = torch.Generator().manual_seed(3)
    init = {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}
    p1 = {n: torch.nn.Parameter(v.clone()) for n, v in init.items()}
    p2 = {n: torch.nn.Parameter(v.clone()) for n, v in init.items()}
    o1 = DHSPG(p1, lay, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3, warmup_steps=100)
    o2 = torch.optim.SGD(p2.values(), lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3)
    for _ in range(6):
        for n in SHAPES:
            gr = torch.randn(SHAPES[n], generator=g)
            p1[n].grad, p2[n].grad = gr.clone(), gr.clone()
        o1.step()
        o2.step()
    for n in SHAPES:
        assert torch.equal(p1[n], p2[n]), n


def test_adam_is_not_fused():
    lay = _layout()
    params = {n: torch.nn.Parameter(torch.randn(s)) for n, s in SHAPES.items()}
    opt = DHSPG(params, lay, lr=0.01, variant="adam", warmup_steps=0)
    for p in params.values():
        p.grad = torch.randn(p.shape)
    assert opt.fused_step(fused_mod.StepRequest(0.01)) is None
