"""The one optimizer factory and the one keyword mapping: keyword and structured construction give
the same optimizer on both front ends, bad options are named, the training backends use it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from otoir.analyses.groups import Group, TensorSlice
from otoir.optim import (
    OPTION_NAMES,
    BaseRule,
    DHSPGStepper,
    GroupLayout,
    HSPGStepper,
    LambdaRule,
    NumpyStepper,
    SparsitySchedule,
    build_optimizer,
    configure,
    select_top_k,
    target_count,
)
from otoir.optim.from_groups import check_valid_target, layout_from_groups

SHAPES = {"w": (12, 5), "b": (12,), "v": (3, 12), "free": (4,)}
SLICES = [[("w", 0, [i]), ("b", 0, [i])] for i in range(12)]
LAYOUT = GroupLayout.from_slices(SLICES, SHAPES)
KW = dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3, target=5, warmup_steps=3, projection_steps=4,
          epsilon=0.3, lam=0.05, lambda_amplify=3.0, lambda_hat_coeff=4.0, score_momentum=0.5, score_interval=2)
BASE = BaseRule("sgd", momentum=0.9, dampening=0.1, weight_decay=1e-3)
SCHEDULE = SparsitySchedule(5, 3, 4, 0.3, LambdaRule(0.05, 3.0, 4.0), 0.5, 2)


def _groups():
    return [Group(f"zig:{i}", "zig", (TensorSlice("w", 0, (i,)), TensorSlice("b", 0, (i,)))) for i in range(12)]


def _run_numpy(st, steps=10, seed=0):
    rng = np.random.default_rng(seed)
    params = {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()}
    for _ in range(steps):
        st.step(params, {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()})
    return params


def _same(a, b):
    assert a.keys() == b.keys()
    for n in a:
        assert np.array_equal(a[n], b[n]), n


def test_keywords_and_structured_settings_build_the_same_numpy_optimizer():
    by_kw = DHSPGStepper(LAYOUT, SHAPES, **KW)
    structured = NumpyStepper(LAYOUT, SHAPES, lr=0.05, algorithm="dhspg", base=BASE, schedule=SCHEDULE)
    factory = build_optimizer("dhspg", SHAPES, layout=LAYOUT, lr=0.05, base=BASE, schedule=SCHEDULE)
    assert by_kw.base == structured.base == factory.base == BASE
    assert by_kw.core.schedule == structured.core.schedule == factory.core.schedule == SCHEDULE
    runs = [_run_numpy(o) for o in (by_kw, structured, factory)]
    _same(runs[0], runs[1])
    _same(runs[0], runs[2])
    assert by_kw.num_zero_groups == 5 and np.array_equal(by_kw.zero_groups, factory.zero_groups)


def test_flat_options_override_fields_and_defaults_are_the_dataclasses():
    cfg = configure("dhspg", BASE, SCHEDULE, options={"momentum": 0.5, "target": 0.25, "lam": 0.2})
    assert cfg.base == dataclasses.replace(BASE, momentum=0.5)
    assert cfg.schedule == dataclasses.replace(SCHEDULE, target=0.25, lam=dataclasses.replace(SCHEDULE.lam, lam=0.2))
    plain = configure("dhspg")
    assert plain.base == BaseRule() and plain.schedule == SparsitySchedule() and plain.selector is None
    rule = LambdaRule(0.3, adaptive=False)
    assert configure("dhspg", options={"lam": rule}).schedule.lam is rule
    hspg = configure("hspg", options={"lam": 0.4})
    assert hspg.penalise_all and hspg.schedule.lam == LambdaRule(0.4, 1.0, 1.0, adaptive=False)
    assert set(OPTION_NAMES) >= {f.name for f in dataclasses.fields(BaseRule)}


@pytest.mark.parametrize(
    "algorithm, kwargs, exc, match",
    [
        ("dhspg", {"options": {"momentun": 0.9}}, TypeError, "unknown option.*momentun"),
        ("hspg", {"options": {"target": 0.5}}, TypeError, "hspg: option.*target.*do not apply"),
        ("hspg", {"selector": select_top_k}, TypeError, "hspg makes no partition"),
        ("h2spg", {}, TypeError, "h2spg needs a validity selector"),
        ("adam", {}, ValueError, "unknown structured optimizer 'adam'"),
        ("dhspg", {"options": {"momentum": 1.5}}, ValueError, "momentum must be in"),
    ],
)
def test_bad_settings_are_named(algorithm, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        configure(algorithm, **kwargs)


def test_hspg_by_factory_equals_hspg_stepper():
    kw = dict(lr=0.1, momentum=0.5, warmup_steps=2, lam=0.8, epsilon=0.4)
    a = _run_numpy(HSPGStepper(LAYOUT, SHAPES, **kw))
    b = _run_numpy(build_optimizer("hspg", SHAPES, layout=LAYOUT, **kw))
    _same(a, b)


def test_from_groups_builds_the_layout_and_checks_names():
    groups = _groups()
    opt = build_optimizer("dhspg", SHAPES, groups=groups, **KW)
    assert opt.groups == groups
    ref = layout_from_groups(groups, SHAPES)
    assert opt.layout.names == ref.names and np.array_equal(opt.layout.group_rows, ref.group_rows)
    _same(_run_numpy(opt), _run_numpy(DHSPGStepper(LAYOUT, SHAPES, **KW)))
    with pytest.raises(ValueError, match="not trainable parameters.*'w'"):
        build_optimizer("dhspg", {"b": (12,)}, groups=groups)
    with pytest.raises(ValueError, match="no prunable groups"):
        build_optimizer("dhspg", SHAPES, groups=[])
    with pytest.raises(TypeError, match="exactly one of layout= and groups="):
        build_optimizer("dhspg", SHAPES, groups=groups, layout=LAYOUT)


def test_target_count_is_one_rule():
    assert target_count(0.5, 7) == 3 and target_count(0.3, 10) == 3 and target_count(4, 10) == 4
    assert SparsitySchedule(target=0.3).target_count(10) == target_count(0.3, 10)
    with pytest.raises(ValueError, match="target count 11 > number of groups 10"):
        target_count(11, 10)


def test_ort_backend_factory_goes_through_build_optimizer(monkeypatch):
    import otoir.optim
    from otoir.train.optimizers import make_optimizer

    seen = {}
    real = otoir.optim.build_optimizer

    def spy(algorithm, params, **kw):
        seen.update(kw, algorithm=algorithm)
        return real(algorithm, params, **kw)

    monkeypatch.setattr(otoir.optim, "build_optimizer", spy)
    monkeypatch.setattr("otoir.optim.from_groups.trainable_shapes", lambda model, analyses=None: dict(SHAPES))
    opt = make_optimizer("dhspg", None, _groups(), lr=0.05, momentum=0.9, weight_decay=None, target_sparsity=5)
    assert isinstance(opt, NumpyStepper) and seen["algorithm"] == "dhspg" and seen["target"] == 5
    assert opt.base.weight_decay == 0.0 and opt.core.target_count == 5
    with pytest.raises(ValueError, match="unknown option.*bogus"):
        make_optimizer("dhspg", None, _groups(), bogus=1)


torch = pytest.importorskip("torch")


def _torch_params(seed=0):
    rng = np.random.default_rng(seed)
    return {n: torch.nn.Parameter(torch.from_numpy(rng.normal(size=s).astype(np.float32))) for n, s in SHAPES.items()}


def _run_torch(opt, params, steps=10):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params.values():
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return {n: p.detach().numpy().copy() for n, p in params.items()}


def test_torch_keywords_structured_and_factory_agree():
    from otoir.optim import DHSPG, HSPG

    p1, p2, p3 = _torch_params(), _torch_params(), _torch_params()
    o1 = DHSPG(p1, LAYOUT, **KW)
    o2 = DHSPG(p2, LAYOUT, 0.05, base=BASE, schedule=SCHEDULE)
    o3 = build_optimizer("dhspg", p3, layout=LAYOUT, lr=0.05, base=BASE, schedule=SCHEDULE)
    assert type(o3) is DHSPG and isinstance(o3, torch.optim.Optimizer)
    r1, r2, r3 = _run_torch(o1, p1), _run_torch(o2, p2), _run_torch(o3, p3)
    _same(r1, r2)
    _same(r1, r3)
    assert o1.num_zero_groups == 5
    hs = build_optimizer("hspg", _torch_params(), layout=LAYOUT, lr=0.1, warmup_steps=2, lam=0.8)
    assert type(hs) is HSPG and hs.core.penalise_all


def test_torch_backend_factory_goes_through_build_optimizer(monkeypatch):
    import otoir.optim
    from otoir.train.torch_backend import make_torch_optimizer

    calls = []
    real = otoir.optim.build_optimizer
    monkeypatch.setattr(otoir.optim, "build_optimizer", lambda *a, **k: calls.append(k) or real(*a, **k))
    module = torch.nn.Sequential()
    for n, p in _torch_params().items():
        module.register_parameter(n, p)
    opt = make_torch_optimizer(module, _groups(), optimizer="dhspg", lr=0.05, target=4, total_steps=20)
    assert calls and calls[0]["front"] == "torch" and opt.core.target_count == 4
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        make_torch_optimizer(module, _groups(), optimizer="sgd")


def test_h2spg_from_groups_uses_the_validity_selector_and_checks_the_target():
    from otoir.analyses.validity import is_valid, reachable_counts, select_redundant
    from otoir.frontends.torch_export import export_torch
    from otoir.optim.from_groups import groups_for, trainable_shapes
    from otoir.zoo import build

    module, x = build("demosupnet", width=0.125)
    model = export_torch(module, x)
    groups = groups_for(model, "gezig")
    most = int(np.flatnonzero(reachable_counts(groups)).max())
    shapes = trainable_shapes(model)
    assert most < len(groups)  # the hierarchy forbids erasing everything
    with pytest.raises(ValueError, match=f"at most {most} can be erased"):
        build_optimizer("h2spg", shapes, groups=groups, target=most + 1)
    k = check_valid_target(groups, 0.3)
    opt = build_optimizer("h2spg", shapes, groups=groups, lr=0.05, target=0.3, warmup_steps=1)
    scores = np.random.default_rng(0).uniform(size=len(groups))
    chosen = opt.core.selector(scores, k)
    assert len(chosen) == k and is_valid([groups[i] for i in chosen], groups.checker)
    assert chosen == select_redundant(groups, scores, k)
