"""Torch optimizers: param groups, per-group lr and options, safe default windows, checkpoints, AMP."""

from __future__ import annotations

import io

import pytest

torch = pytest.importorskip("torch")

from otoir.optim import DHSPG, H2SPG, GroupLayout, select_top_k  # noqa: E402


def _mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _layout(m):
    shapes = {n: p.shape for n, p in m.named_parameters()}
    return GroupLayout.from_slices([[("0.weight", 0, [i]), ("0.bias", 0, [i])] for i in range(16)], shapes)


def _groups(m, names=False):
    decay = [(n, p) if names else p for n, p in m.named_parameters() if p.dim() > 1]
    no_decay = [(n, p) if names else p for n, p in m.named_parameters() if p.dim() <= 1]
    return [{"params": decay, "weight_decay": 1e-2, "lr": 0.05}, {"params": no_decay, "weight_decay": 0.0, "lr": 0.02}]


def _batch(step):
    g = torch.Generator().manual_seed(step)
    return torch.randn(32, 10, generator=g), torch.randint(0, 3, (32,), generator=g)


def _step(m, opt, step, scaler=None):
    x, y = _batch(step)
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(m(x), y)
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


def test_defaults_never_zero_at_the_first_step():
    m = _mlp()
    with pytest.raises(ValueError, match="total_steps"):
        DHSPG(m.named_parameters(), _layout(m), lr=0.1, target=0.5)
    with pytest.raises(ValueError, match="total_steps"):
        H2SPG(m.named_parameters(), _layout(m), lr=0.1, selector=select_top_k)
    opt = DHSPG(m.named_parameters(), _layout(m), lr=0.1, target=0.5, total_steps=40)
    assert (opt.core.schedule.warmup_steps, opt.core.schedule.projection_steps) == (10, 14)
    _step(m, opt, 0)
    assert opt.num_zero_groups == 0 and opt.phase == "warmup"
    explicit = DHSPG(_mlp().named_parameters(), _layout(m), lr=0.1, target=0.5, warmup_steps=0)
    assert explicit.core.schedule.warmup_steps == 0  # zeroing at once only when asked


@pytest.mark.parametrize("variant, ref", [
    ("sgd", lambda g: torch.optim.SGD(g, momentum=0.9)),
    ("adam", lambda g: torch.optim.Adam(g)),
    ("adamw", lambda g: torch.optim.AdamW(g)),
])
def test_param_groups_and_schedulers_match_torch_optim_during_warmup(variant, ref):
    m1, m2 = _mlp(), _mlp()
    kw = {"momentum": 0.9} if variant == "sgd" else {}
    o1 = DHSPG(_groups(m1), _layout(m1), variant=variant, module=m1, total_steps=100, **kw)
    o2 = ref(_groups(m2))
    lam = [lambda s: 1.0, lambda s: 0.5 ** s]  # a scheduler that only moves the second group
    s1, s2 = (torch.optim.lr_scheduler.LambdaLR(o, lam) for o in (o1, o2))
    for step in range(6):
        for m, o, s in ((m1, o1, s1), (m2, o2, s2)):
            _step(m, o, step)
            s.step()
    assert o1.param_groups[1]["lr"] == pytest.approx(0.02 * 0.5 ** 6)
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_named_pairs_in_groups_and_unnamed_tensors_need_module():
    m = _mlp()
    DHSPG(_groups(m, names=True), _layout(m), total_steps=10)
    with pytest.raises(TypeError, match="module=model"):
        DHSPG(_groups(m), _layout(m), total_steps=10)
    with pytest.raises(TypeError, match="cannot be set per group"):
        DHSPG([{"params": list(m.named_parameters()), "target": 0.3}], _layout(m), total_steps=10)
    with pytest.raises(ValueError, match="given twice"):
        DHSPG([{"params": list(m.named_parameters())}, {"params": list(m.named_parameters())[:1]}], _layout(m),
              total_steps=10)


def test_exact_count_with_different_group_lrs_and_checkpoint_round_trip():
    m = _mlp()
    opt = DHSPG(_groups(m), _layout(m), module=m, momentum=0.9, target=0.5, total_steps=30)
    for step in range(12):
        _step(m, opt, step)
    buf = io.BytesIO()
    torch.save({"model": m.state_dict(), "opt": opt.state_dict()}, buf)
    m2 = _mlp(seed=1)
    opt2 = DHSPG(_groups(m2), _layout(m2), module=m2, momentum=0.9, target=0.5, total_steps=30)
    buf.seek(0)
    ck = torch.load(buf, weights_only=False)
    m2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["opt"])
    assert [g["lr"] for g in opt2.param_groups] == [0.05, 0.02]
    for step in range(12, 30):
        _step(m, opt, step)
        _step(m2, opt2, step)
    assert opt.num_zero_groups == opt2.num_zero_groups == 8
    for a, b in zip(m.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert int((m[0].weight.abs().sum(1) == 0).sum()) == 8


def test_grad_scaler_reaches_the_exact_count():
    m = _mlp()
    opt = DHSPG(m.named_parameters(), _layout(m), lr=0.05, target=0.25, total_steps=20)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for step in range(20):
        _step(m, opt, step, scaler)
    assert opt.num_zero_groups == 4
    assert int((m[0].weight.abs().sum(1) == 0).sum()) == 4
