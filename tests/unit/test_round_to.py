"""round-to=N: kept channel counts are multiples of N (or full), chosen in the selection, exact K kept."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from otoir.analyses.groups import Group, TensorSlice
from otoir.analyses.validity import (
    GroupSet,
    check_round_to,
    controlled_groups,
    reachable_count,
    reachable_counts,
    round_multiple,
    round_to_kept,
    select_redundant,
)
from otoir.analyses.zig import ChannelGroups
from otoir.errors import OtoirError, PipelineError
from otoir.infra import PassManager
from otoir.infra.diagnostics import Severity
from otoir.optim.from_groups import check_valid_target, target_note

torch = pytest.importorskip("torch")


# -- synthetic channel groups: tensors of given widths, one group per `width` channels ------------
def _synthetic(channels: dict[str, int], width: dict[str, int] | None = None) -> list[Group]:
    out = []
    for t, c in channels.items():
        w = (width or {}).get(t, 1)
        for j in range(c // w):
            out.append(Group(f"zig:{t}:{j}", "zig", (TensorSlice(t, 0, tuple(range(j * w, j * w + w))),)))
    return out


def _allowed(c: int, w: int, n: int) -> list[int]:
    """Zero counts of a tensor of c channels in groups of w: kept a positive multiple of n, or all."""
    return [0] + [z for z in range(1, c // w) if (c - z * w) % n == 0]


def _best_by_count(groups, scores, allowed: dict[str, list[int]]) -> dict[int, float]:
    """{k: best total score} over every combination of the allowed zero counts per tensor (each
    tensor giving its top-scored groups first)."""
    tensors = list(allowed)
    per = {t: sorted((i for i, g in enumerate(groups) if g.slices[0].tensor == t), key=lambda i: (-scores[i], i))
           for t in tensors}
    best: dict[int, float] = {}
    for zs in itertools.product(*(allowed[t] for t in tensors)):
        val = sum(scores[i] for t, z in zip(tensors, zs, strict=True) for i in per[t][:z])
        best[sum(zs)] = max(best.get(sum(zs), -math.inf), val)
    return best


def _brute(groups, channels, width, n, scores):
    """{k: best total score} under round-to=n (:func:`_allowed` per tensor)."""
    return _best_by_count(groups, scores, {t: _allowed(c, width.get(t, 1), n) for t, c in channels.items()})


@pytest.mark.parametrize("seed", range(6))
def test_selection_is_exact_and_optimal_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.choice([2, 4, 8]))
    channels = {f"t{i}": int(rng.integers(3, 14)) for i in range(4)}
    width = {"t0": 2} if channels["t0"] % 2 == 0 else {}
    groups = GroupSet(_synthetic(channels, width), round_to=n, channels=channels)
    scores = rng.normal(size=len(groups)).tolist()
    best = _brute(groups, channels, width, n, scores)
    reach = reachable_counts(groups)
    assert set(np.flatnonzero(reach).tolist()) == set(best)
    for k in range(len(groups) + 1):
        chosen = select_redundant(groups, scores, k)
        if k in best:  # reachable: exactly k groups, the best total score
            assert len(chosen) == k
            assert sum(scores[i] for i in chosen) == pytest.approx(best[k])
        else:  # at most k: the largest reachable count below it
            assert len(chosen) == max(j for j in best if j <= k)
        for t, c in channels.items():
            w = width.get(t, 1)
            z = sum(1 for i in chosen if groups[i].slices[0].tensor == t)
            assert z in _allowed(c, w, n), (t, c, w, z)


@pytest.mark.parametrize("seed", range(4))
def test_work_units_keep_whole_units_above_one_and_stay_exact(seed):
    """units={t: u}: a kept count above u is a multiple of u too (the runtime's work unit)."""
    rng = np.random.default_rng(seed)
    channels = {f"t{i}": int(rng.integers(5, 21)) for i in range(3)}
    units = {"t0": 8, "t1": 4}  # t2: none
    groups = GroupSet(_synthetic(channels), round_to=2, channels=channels, units=units)
    scores = rng.normal(size=len(groups)).tolist()

    def ok(t, kept):
        u = units.get(t, 0)
        return kept == channels[t] or (kept > 0 and kept % 2 == 0 and (kept <= u or kept % max(u, 1) == 0))

    tensors = list(channels)
    best = _best_by_count(groups, scores, {t: [z for z in range(channels[t]) if ok(t, channels[t] - z)]
                                           for t in tensors})
    assert set(np.flatnonzero(reachable_counts(groups)).tolist()) == set(best)
    for k in sorted(best):
        chosen = select_redundant(groups, scores, k)
        assert len(chosen) == k and sum(scores[i] for i in chosen) == pytest.approx(best[k])
        for t in tensors:
            assert ok(t, channels[t] - sum(1 for i in chosen if groups[i].slices[0].tensor == t))
    # the units travel with subset(); a tensor no allowed count is left for says why
    assert groups.subset(list(groups)[:3]).units == units
    tiny = GroupSet(_synthetic({"a": 7}), round_to=2, channels={"a": 7}, units={"a": 1})
    assert tiny.units is None  # a unit of one channel is no unit
    whole = GroupSet(_synthetic({"a": 6}), round_to=4, channels={"a": 6}, units={"a": 2})
    why = round_to_kept(GroupSet(_synthetic({"a": 10}), round_to=4, channels={"a": 10}, units={"a": 3}))["a"]
    assert "nor one of at most 3 or a multiple of 3" in why  # 4 and 8: neither
    assert round_to_kept(whole) == {}  # 4 kept: above the unit 2 and a multiple of it


def test_nearest_count_when_the_exact_target_is_infeasible():
    channels = {"a": 8, "b": 16, "c": 16}
    groups = GroupSet(_synthetic(channels), round_to=8, channels=channels)
    assert np.flatnonzero(reachable_counts(groups)).tolist() == [0, 8, 16]
    assert round_to_kept(groups) == {"a": "round-to=8: 'a' keeps all 8 channels (no smaller multiple of 8 is "
                                          "reachable in groups of 1)"}
    # 0.3 * 40 = 12: 8 and 16 are as near; the smaller (keeps more) wins; 0.35 * 40 = 14 -> 16
    assert reachable_count(groups, 12) == 8 and reachable_count(groups, 14) == 16
    assert check_valid_target(groups, 0.3) == 8
    note = target_note(groups, 0.3)
    assert "8 of 40 groups are zeroed instead of the 12 asked" in note and "round-to=8" in note
    assert target_note(groups, 0.4) == ""  # 16 is reachable: exact
    # beyond the most that can be zero: refused up front, naming round-to
    with pytest.raises(ValueError, match=r"at most 16 can be erased .*round-to=8"):
        check_valid_target(groups, 0.5)


def test_optimizers_zero_the_nearest_count():
    from otoir.optim import build_optimizer

    channels = {"a": 8, "b": 16, "c": 16}
    groups = GroupSet(_synthetic(channels), round_to=8, channels=channels)
    shapes = {t: (c, 3) for t, c in channels.items()}
    opt = build_optimizer("dhspg", shapes, groups=groups, target=0.3, warmup_steps=0, projection_steps=0, lr=0.1)
    assert opt.core.target_count == 8
    params = {t: np.ones(s, dtype=np.float32) for t, s in shapes.items()}
    opt.step(params, {t: np.zeros_like(p) for t, p in params.items()})
    zero = np.flatnonzero(opt.zero_groups)
    assert zero.size == 8
    assert {groups[i].slices[0].tensor for i in zero} in ({"b"}, {"c"})


@pytest.mark.parametrize("bad", [0, -8, 2.5, "8", True, float("nan")])
def test_bad_round_to_values_are_one_line_errors(bad):
    from otoir.infra.registry import get_pass
    from otoir.train.config import TrainConfig

    for make in (lambda: check_round_to(bad), lambda: TrainConfig(round_to=bad),
                 lambda: get_pass("zero-groups")(kind="zig", round_to=bad),
                 lambda: controlled_groups([], round_to=bad)):
        with pytest.raises(ValueError, match="round-to") as exc:
            make()
        assert "\n" not in str(exc.value)
    import otoir

    with pytest.raises(OtoirError, match=r"^compress: round-to must be a positive integer") as exc:
        otoir.compress("nothing.onnx", mode="prune", round_to=bad)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("text", ["otoir-prune{round-to=0}", "otoir-prune{round-to=-4}", "otoir-prune{round-to=2.5}",
                                  "zero-groups{kind=zig round-to=x}", "train{round-to=0}"])
def test_bad_round_to_in_pipeline_text(text):
    with pytest.raises(PipelineError, match="round-to") as exc:
        PassManager.from_text(text)
    assert "\n" not in str(exc.value)


def test_round_to_parses_as_a_train_option():
    p = PassManager.from_text("otoir-prune{round-to=8 max-layer-ratio=0.5}").passes[0]
    assert p.round_to == 8 and p.train_pass().round_to == 8
    assert "round-to=8" in p.to_text()


# -- pruned networks: every sliced tensor keeps a multiple of N (or all), the oracle holds -----------
def _prune_with_round_to(module, x, n: int | str, fraction: float = 0.5, seed: int = 0):
    """zero-groups{round-to=n} on the exported model, ORT before/after prune-channels; returns details."""
    from otoir.frontends.torch_export import export_torch
    from otoir.testing import random_feeds, run_ort

    model = export_torch(module, (x,), training=False)
    res = PassManager.from_text("partition-zig").run(model)
    groups = controlled_groups(res.analyses.get(ChannelGroups).groups, model, round_to=n)
    prunable = groups.subset(g for g in groups if g.prunable)
    k = int(round(fraction * len(prunable)))
    reach = reachable_counts(prunable)
    zr = PassManager.from_text(f"zero-groups{{kind=zig random={fraction} round-to={n} seed={seed}}}").run(model)
    zeroed = zr.results["zeroed"]
    assert len(zeroed) == (k if reach[k] else reachable_count(prunable, k))
    feeds = random_feeds(model, seed + 1)
    ref = run_ort(model, feeds)
    pr = PassManager.from_text("prune-channels").run(model)
    out = run_ort(model, feeds)
    for a, b in zip(ref, out, strict=True):  # the oracle: the sub-network equals the zeroed full one
        assert a.shape == b.shape
        assert np.max(np.abs(a.astype(np.float64) - b)) <= 1e-5 * max(1.0, float(np.max(np.abs(a))))
    ids = pr.results["prune-channels-ids"]
    return model, ids, zeroed, prunable


def _assert_multiples(channels: dict, n: int) -> None:
    assert channels, "nothing was pruned"
    bad = {t: lost for t, lost in channels.items() for _a, _b, after in lost if after % n}
    assert not bad, bad


def test_zoo_resnet_kept_counts_are_multiples():
    from otoir.zoo import build

    module, x = build("resnet_basic", width=12)  # 12, 24, 48, 96 channels
    model, ids, zeroed, _ = _prune_with_round_to(module, x, 8)
    _assert_multiples(ids["channels"], 8)
    assert not ids["kept"]  # nothing asked for was kept back
    assert len(ids["removed"]) == len(zeroed)
    w = model.graph.initializers["conv1.weight"].shape.dims[0]
    assert w in (8, 12)


def test_round_to_runtime_takes_the_block_and_whole_work_units(monkeypatch):
    """round-to=runtime: the runtime's channel block, and dense convolutions' outputs above one
    work unit in whole units (here block 8 and unit 32, as the probes would say on an AVX2 CPU)."""
    from otoir.analyses import latency as L
    from otoir.infra.registry import get_pass
    from otoir.train.config import TrainConfig
    from otoir.zoo import build

    monkeypatch.setattr(L, "channel_multiple", lambda threads=1: 8)
    monkeypatch.setattr(L, "channel_work_unit", lambda block: 4 * block)
    module, x = build("resnet_basic", width=12)  # 12, 24, 48, 96 channels
    model, ids, zeroed, prunable = _prune_with_round_to(module, x, "runtime", fraction=0.6, seed=3)
    assert prunable.round_to == 8 and prunable.units and set(prunable.units.values()) == {32}
    _assert_multiples(ids["channels"], 8)
    dense = {n.inputs[1].name for n in model.graph if n.op_type == "Conv"
             and (n.attributes.get("group") is None or n.attributes["group"].value == 1)}
    outs = {t: after for t, lost in ids["channels"].items() if t in dense for axis, _b, after in lost if axis == 0}
    assert outs  # dense convolutions lost output channels
    bad = {t: a for t, a in outs.items() if a > 32 and a % 32}
    assert not bad, bad
    # the option parses as a word beside numbers, round-trips, and is refused where it is not meant
    zg = get_pass("zero-groups").from_options({"kind": "zig", "round-to": "runtime"})
    assert zg.round_to == "runtime" and "round-to=runtime" in zg.to_text()
    assert get_pass("zero-groups").from_options({"kind": "zig", "round-to": "16"}).round_to == 16
    assert TrainConfig(round_to="Runtime").round_to == "runtime"
    with pytest.raises(ValueError, match="positive integer, 'auto' or 'runtime'"):
        TrainConfig(round_to="fast")
    with pytest.raises(ValueError, match="round-to must be a positive integer, got 'runtime'"):
        check_round_to("runtime")  # a count, where no model resolves the word
    # without a model the word falls back to 8 and no units
    plain = controlled_groups(_synthetic({"a": 96}), round_to="runtime")
    assert plain.round_to == 8 and plain.units is None


class _Basic(torch.nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (self.downsample(x) if self.downsample is not None else x))


class _TorchvisionResNet18(torch.nn.Module):
    """torchvision's ResNet-18 layout (7x7/2 stem, max-pool, 4 stages of 2 basic blocks, avg-pool, fc)."""

    def __init__(self, widths=(20, 36, 72, 132), classes: int = 10) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            layers.append(nn.Sequential(_Basic(cin, w, 1 if i == 0 else 2), _Basic(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def test_torchvision_resnet18_like_kept_counts_are_multiples():
    torch.manual_seed(0)
    module = _TorchvisionResNet18().eval()
    x = torch.randn(2, 3, 64, 64)
    _model, ids, zeroed, prunable = _prune_with_round_to(module, x, 8, fraction=0.4, seed=2)
    _assert_multiples(ids["channels"], 8)
    assert len(ids["removed"]) == len(zeroed) > 0
    # the 20-channel stem can keep 16 or 8: its tensors are sliced to those, never 17 or 12
    stem = [after for t, lost in ids["channels"].items() if t.startswith("conv1") for _a, _b, after in lost]
    assert set(stem) <= {8, 16}


def test_heads_stay_whole_and_round_in_heads():
    from otoir.zoo import build

    torch.manual_seed(0)
    module, x = build("bert_like", hidden=48, heads=4, ffn=72)  # head_dim 12: 8 | 12*h only for even h
    model, ids, zeroed, prunable = _prune_with_round_to(module, x, 8, fraction=0.5, seed=1)
    _assert_multiples(ids["channels"], 8)
    heads = [g for g in prunable if "attention.query" in g.slices[0].tensor]
    assert heads and all(len(g.slices[0].indices) == 12 for g in heads)
    for layer in range(2):
        q = model.graph.initializers[f"layers.{layer}.attention.query.weight"].shape.dims
        kept = [d for d in q if d != 48]
        for d in kept:  # whole heads, and an even number of them (12*h a multiple of 8)
            assert d % 12 == 0 and (d // 12) % 2 == 0
    # the FFN units round in channels (72 -> a multiple of 8)
    ffn = [lost for t, lost in ids["channels"].items() if "intermediate.weight" in t]
    assert ffn and all(after % 8 == 0 for lost in ffn for _a, _b, after in lost)


def test_zero_groups_warns_when_it_rounds_the_count():
    from otoir.frontends.torch_export import export_torch
    from otoir.zoo import build

    module, x = build("resnet_basic")  # 8, 16, 32, 64 channels: round-to=8 zeroes multiples of 8
    model = export_torch(module, (x,), training=False)
    res = PassManager.from_text("partition-zig").run(model)
    groups = controlled_groups(res.analyses.get(ChannelGroups).groups, model, round_to=8)
    prunable = groups.subset(g for g in groups if g.prunable)
    reach = reachable_counts(prunable)
    assert not reach[20] and reach[16] and reach[24]
    frac = 20 / len(prunable)
    zr = PassManager.from_text(f"zero-groups{{kind=zig random={frac!r} round-to=8}}").run(model)
    assert len(zr.results["zeroed"]) == reachable_count(prunable, 20) == 16  # a tie: the smaller count
    warn = [d.message for d in zr.diagnostics if d.severity == Severity.WARNING]
    assert any("zeroed 16 of the 20 groups asked" in m and "round-to=8" in m for m in warn)
    kept = [d.message for d in zr.diagnostics if d.severity == Severity.REMARK]
    assert any("conv1.weight" in m and "keeps all 8 channels" in m for m in kept)


# -- training: DHSPG (torch and ONNX Runtime) selects under round-to; compress reports kept counts ---
def test_torch_dhspg_zeroes_multiples():
    from otoir.frontends.torch_export import export_torch
    from otoir.optim.from_groups import groups_for
    from otoir.train.torch_backend import make_torch_optimizer
    from otoir.zoo import build

    torch.manual_seed(0)
    module, x = build("resnet_basic", width=12)
    model = export_torch(module, x)
    groups = groups_for(model, "zig", round_to=8)
    opt = make_torch_optimizer(module, groups, target=0.5, warmup_steps=0, projection_steps=0, lr=0.01)
    opt.zero_grad()
    module(x).square().mean().backward()
    opt.step()
    k = check_valid_target(groups, 0.5)
    assert opt.num_zero_groups == k == opt.core.target_count
    assert reachable_counts(groups)[math.floor(0.5 * len(groups))] == (k == math.floor(0.5 * len(groups)))
    per: dict[str, int] = {}
    for i in np.flatnonzero(opt.zero_groups):
        t = groups[i].slices[0].tensor
        per[t] = per.get(t, 0) + 1
    chans = groups.channels
    assert per and all((chans[t] - z) % 8 == 0 and chans[t] - z > 0 for t, z in per.items())


def test_compress_round_to_end_to_end(mnist_256):
    import otoir
    from otoir.zoo import build

    small = mnist_256
    torch.manual_seed(0)
    module, _ = build("resnet_basic", in_channels=1, width=12)
    example = torch.from_numpy(small.train_x[:2])
    res = otoir.compress(otoir.load(module, example), small, mode="prune", target_sparsity=0.5, epochs=1, batch=32,
                         backend="ort", progress=False, latency_runs=0, round_to=8)
    assert "round-to=8" in res.pipeline
    k = check_valid_target(controlled_groups(res.groups, round_to=8), 0.5)
    assert len(res.zero_group_ids) == k != math.floor(0.5 * len(res.groups))  # 12-channel tensors: the nearest count
    assert f"-> {k} with round-to=8" in res.report.details["groups"]
    assert "with round-to=8" in res.report.details["groups"]
    kept = res.report.details["kept channels"]
    counts = [int(part.rsplit("->", 1)[1]) for part in kept.split("; ")]
    assert counts and all(c % 8 == 0 for c in counts)
    assert res.report.verified


def test_compress_round_to_runtime_end_to_end(mnist_256, monkeypatch):
    import otoir
    from otoir.analyses import latency as L
    from otoir.zoo import build

    monkeypatch.setattr(L, "channel_multiple", lambda threads=1: 8)  # as the probes would say on AVX2
    monkeypatch.setattr(L, "channel_work_unit", lambda block: 4 * block)
    torch.manual_seed(0)
    module, _ = build("resnet_basic", in_channels=1, width=12)  # 12, 24, 48, 96 channels
    example = torch.from_numpy(mnist_256.train_x[:2])
    res = otoir.compress(otoir.load(module, example), mnist_256, mode="prune", target_sparsity=0.3, epochs=1,
                         batch=32, backend="ort", progress=False, latency_runs=0, round_to="runtime")
    assert "round-to=runtime" in res.pipeline and "with round-to=runtime" in res.report.details["groups"]
    kept = [part.rsplit(" ", 1)[0] for part in res.report.details["kept channels"].split("; ")]
    counts = [int(part.rsplit("->", 1)[1]) for part in res.report.details["kept channels"].split("; ")]
    assert counts and all(c % 8 == 0 for c in counts), kept
    assert all(c <= 32 or c % 32 == 0 for c in counts), kept  # whole work units above one
    assert any(c > 32 for c in counts), kept  # (some tensor kept more than one unit)
    assert res.report.verified


def test_train_pass_reports_the_rounded_count_and_the_kept_tensors():
    from otoir.passes.train import _report_round_to

    class Ctx:
        def __init__(self) -> None:
            self.messages: list[tuple[str, str]] = []

        def warning(self, m: str) -> None:
            self.messages.append(("warning", m))

        def remark(self, m: str) -> None:
            self.messages.append(("remark", m))

        def error(self, m: str) -> None:
            self.messages.append(("error", m))

    channels = {"a": 8, "b": 16, "c": 16}
    groups = GroupSet(_synthetic(channels), round_to=8, channels=channels)
    ctx = Ctx()
    assert _report_round_to(ctx, groups, 0.3)
    kinds = dict(ctx.messages)
    assert "'a' keeps all 8 channels" in kinds["remark"]
    assert "8 of 40 groups are zeroed instead of the 12 asked" in kinds["warning"]
    ctx = Ctx()
    assert not _report_round_to(ctx, groups, 0.5)  # 20 > 16: an error, not a silent cut
    errors = [m for kind, m in ctx.messages if kind == "error"]
    assert len(errors) == 1 and "round-to=8" in errors[0]


# -- round-to=auto, the default: multiples of 16 from 32 channels, of 8 from 16 ------------------
@pytest.mark.parametrize("seed", range(4))
def test_auto_rounds_wide_tensors_and_leaves_small_ones_free(seed):
    """auto: a tensor of >= 32 channels keeps a multiple of 16 (or all), one of 16 to 31 a
    multiple of 8, a smaller one any count; exact and optimal against brute force over the
    allowed per-tensor counts."""
    rng = np.random.default_rng(seed)
    channels = {"small": int(rng.integers(3, 16)), "wide": int(rng.integers(16, 30)), "w2": 24,
                "w3": int(rng.integers(33, 70))}
    groups = controlled_groups(_synthetic(channels), round_to="auto")
    assert groups.round_to == 16 and groups.min_channels == 16 and groups.tiers == ((16, 8), (32, 16))
    scores = rng.normal(size=len(groups)).tolist()

    def allowed(t):
        c = channels[t]
        return [0] + [z for z in range(1, c) if c < 16 or (c - z) % (8 if c < 32 else 16) == 0]

    tensors = list(channels)
    best = _best_by_count(groups, scores, {t: allowed(t) for t in tensors})
    assert set(np.flatnonzero(reachable_counts(groups)).tolist()) == set(best)
    for k in sorted(best):
        chosen = select_redundant(groups, scores, k)
        assert len(chosen) == k and sum(scores[i] for i in chosen) == pytest.approx(best[k])
        for t in tensors:
            assert sum(1 for i in chosen if groups[i].slices[0].tensor == t) in allowed(t)
    assert groups.subset(list(groups)[:5]).min_channels == 16  # travels with subset()
    assert round_multiple(groups) == "a multiple of 16 (tensors of at least 32 channels; 8 from 16)"
    assert "small" not in round_to_kept(groups)


def test_auto_is_the_default_and_round_to_1_turns_it_off():
    from otoir.infra.registry import get_pass
    from otoir.train.config import TrainConfig

    assert TrainConfig().round_to == "auto" and TrainConfig(round_to="AUTO").round_to == "auto"
    assert get_pass("zero-groups")(kind="zig").round_to == "auto"
    p = PassManager.from_text("otoir-prune{round-to=1}").passes[0]
    assert p.round_to == 1 and "round-to=1" in p.to_text()
    assert "round-to" not in PassManager.from_text("otoir-prune").passes[0].to_text()  # the default: not printed
    assert controlled_groups(_synthetic({"a": 32}), round_to=1).round_to == 1  # the analyses' own default


def test_default_prunes_depthwise_networks_in_whole_blocks():
    """MobileNetV2 (zoo, width 1.0): zero-groups with the default round-to; every tensor of at
    least 32 channels that lost channels keeps a multiple of 16, of 16 to 31 a multiple of 8;
    smaller ones any count;
    the oracle holds (in _prune_with_round_to)."""
    from otoir.zoo import build

    module, x = build("mobilenetv2", width=1.0)
    model, ids, zeroed, prunable = _prune_with_round_to(module, x, "auto", fraction=0.5, seed=2)
    assert zeroed and prunable.min_channels == 16
    wide = {t: lost for t, lost in ids["channels"].items() for _a, before, after in lost if before >= 16}
    assert wide
    bad = {t: lost for t, lost in wide.items() for _a, before, after in lost
           if after % (8 if before < 32 else 16)}
    assert not bad, bad


def test_zero_groups_ids_are_not_rounded_by_the_default():
    """ids= names exactly the groups to zero: the default round-to leaves them be, round-to=8 refuses."""
    from otoir.frontends.torch_export import export_torch
    from otoir.zoo import build

    module, x = build("resnet_basic", width=16)
    model = export_torch(module, (x,), training=False)
    res = PassManager.from_text("partition-zig").run(model)
    g = next(g for g in res.analyses.get(ChannelGroups).groups if g.prunable and g.slices[0].tensor == "conv1.weight")
    zr = PassManager.from_text(f"zero-groups{{kind=zig ids={g.id}}}").run(model)
    assert [z for z in zr.results["zeroed"]] == [g.id]
    with pytest.raises(Exception, match="refused by the validity check or round-to=8"):
        PassManager.from_text(f"zero-groups{{kind=zig ids={g.id} round-to=8}}").run(model)


def test_erasing_with_the_default_round_to_says_nothing_about_it():
    """round-to applies to channel groups; the default must not warn on every erasing run, an explicit one does."""
    from otoir.frontends.torch_export import export_torch
    from otoir.optim.from_groups import groups_for
    from otoir.passes.train import _report_round_to
    from otoir.zoo import build

    class Ctx:
        def __init__(self):
            self.said = []

        def warning(self, m):
            self.said.append(m)

        remark = error = warning

    module, x = build("resnet_basic", width=16)
    model = export_torch(module, (x,), training=False)
    for n, expect in (("auto", False), (8, True)):
        ctx = Ctx()
        assert _report_round_to(ctx, groups_for(model, "gezig", round_to=n), 0.3)
        assert any("round-to=8 applies to channel groups" in m for m in ctx.said) is expect, ctx.said


def test_own_loop_analyze_rounds_as_the_pipeline_does():
    """otoir.analyze (the own-loop API) takes the pipeline's round-to: auto by default, 1 on request,
    and target_count is the count the optimizer will zero."""
    import otoir
    from otoir.optim.from_groups import check_valid_target
    from otoir.zoo import build

    module, x = build("resnet_basic", width=12)
    job = otoir.analyze(module, x, mode="prune", target_sparsity=0.45)
    assert job.groups.round_to == 16 and job.groups.min_channels == 16 and job.pipeline.round_to == "auto"
    assert job.target_count == check_valid_target(job.groups, 0.45)
    plain = otoir.analyze(module, x, mode="prune", target_sparsity=0.45, round_to=1)
    assert plain.groups.round_to == 1 and plain.target_count == int(0.45 * len(plain.groups))
    with pytest.raises(OtoirError, match="round-to"):
        otoir.analyze(module, x, round_to=0)


@pytest.mark.parametrize("round_to, warned", [(1, True), ("auto", False)])
def test_prune_channels_warns_when_depthwise_counts_leave_the_lattice(round_to, warned):
    """round-to=1 on MobileNetV2 leaves depthwise convolutions with counts off the multiples of 8:
    prune-channels says so, naming them; with the default it has nothing to say."""
    from otoir.analyses.latency import misaligned_depthwise
    from otoir.frontends.torch_export import export_torch
    from otoir.zoo import build

    module, x = build("mobilenetv2", width=1.0)
    model = export_torch(module, (x,), training=False)
    PassManager.from_text(f"zero-groups{{kind=zig random=0.5 round-to={round_to} seed=2}},to-inference").run(model)
    res = PassManager.from_text("prune-channels").run(model)
    said = [d.message for d in res.diagnostics if d.severity is Severity.WARNING and "depthwise" in d.message]
    off = misaligned_depthwise(model, res.results["prune-channels-ids"]["channels"])
    assert bool(said) is warned and bool(off) is warned
    if warned:
        name, before, after = off[0]
        assert f"{name} {before}->{after}" in said[0] and before % 8 == 0 and after % 8
        dw = next(n for n in model.graph if n.name == name)
        assert dw.attributes["group"].value == after == dw.inputs[1].shape[0]


def test_bench_select_times_both_selections_and_refuses_unknown_shapes(capsys, monkeypatch):
    from otoir.tools import bench_select

    monkeypatch.setitem(bench_select.SHAPES, "tiny", (2, 40, 4, 8, 24))
    assert bench_select.main(["--shapes", "tiny"]) == 0  # 1 when a selection misses its count
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("tiny"))
    groups = 2 * (40 + 4) + 24
    assert row.split()[1] == str(groups) and len(bench_select.synthetic_groups(2, 40, 4, 8, 24)) == groups
    assert bench_select.main(["--shapes", "gpt5"]) == 2
