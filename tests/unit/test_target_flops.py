"""``target-flops=F``: FLOPs-aware selection of the redundant groups (otoir.analyses.latency).

The FLOPs a selection is predicted to leave are checked against the one FLOP counter
(``otoir.stats``) on the sub-network the named pipelines construct, reached by another path
(``zero-groups{ids=...}`` then the construction passes).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import otoir  # noqa: E402
from otoir.analyses import latency as L  # noqa: E402
from otoir.api import clone_model  # noqa: E402
from otoir.infra import PassManager  # noqa: E402
from otoir.optim.from_groups import groups_for  # noqa: E402
from otoir.stats import stats  # noqa: E402

ZOO = {  # name -> (build kwargs, group kind)
    "resnet_basic": (dict(width=16, layers=(1, 1, 1, 1)), "zig"),
    "demosupnet": (dict(width=0.25), "gezig"),
    "mobilenetv2": ({}, "zig"),
}


def _model(name: str):
    from otoir.zoo import build

    module, x = build(name, **ZOO[name][0])
    model = otoir.load(module, x)
    PassManager.from_text("normalize-export").run(model)
    return model


def _constructed_flops(model, groups, chosen) -> tuple[int, int]:
    """(FLOPs of the sub-network built by zero-groups{ids} + the construction, full FLOPs), inference form."""
    kind = groups[0].kind
    full = clone_model(model)
    PassManager.from_text("to-inference").run(full)
    sub = clone_model(model)
    if chosen:
        ids = ",".join(groups[i].id for i in chosen)
        PassManager.from_text(f"zero-groups{{kind={kind} ids={ids}}}").run(sub)
    PassManager.from_text(f"to-inference,{L.CONSTRUCTION[kind]},cleanup").run(sub)
    return stats(sub).flops, stats(full).flops


@pytest.mark.parametrize("name", list(ZOO))
def test_prediction_agrees_with_the_exact_counter_on_the_constructed_network(name):
    model = _model(name)
    groups = groups_for(model, ZOO[name][1])
    costs = L.exact_flops_cost_model(model, groups)
    assert costs.full == stats(model).flops  # the full model: counted, same form
    rng = np.random.default_rng(1)
    for k in (1, max(2, len(groups) // 4)):
        scores = rng.random(len(groups))
        chosen = L.flops_select(groups, scores, costs, k=k)
        assert chosen
        sub, full = _constructed_flops(model, groups, chosen)
        assert costs.predict(chosen) == sub
        assert full == costs.full
        assert sub < full


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("frac", [0.3, 0.5, 0.8])
def test_constructed_network_meets_the_flops_target(name, frac):
    model = _model(name)
    groups = groups_for(model, ZOO[name][1])
    sel = L.flops_selector(model, groups, frac)
    chosen = sel(np.random.default_rng(2).random(len(groups)), 0)
    sub, full = _constructed_flops(model, groups, chosen)
    assert sub <= frac * full
    assert sel.predicted == pytest.approx(sub / full)
    # the smallest such count: one group fewer (same ranking) misses the target
    fewer = L.flops_select(groups, np.random.default_rng(2).random(len(groups)), sel.costs, k=len(chosen) - 1)
    assert len(fewer) < len(chosen)
    assert sel.costs.predict(fewer) > frac * full


def test_round_to_and_layer_caps_hold_under_target_flops():
    from otoir.analyses.validity import controlled_groups

    model = _model("resnet_basic")
    groups = controlled_groups(groups_for(model, "zig"), model, round_to=4, max_layer_ratio=0.75)
    groups = groups.subset(g for g in groups if g.prunable)
    sel = L.flops_selector(model, groups, 0.6)
    chosen = sel(np.random.default_rng(0).random(len(groups)), 0)
    per_tensor: dict[str, int] = {}
    for i in chosen:
        t = groups[i].slices[0].tensor
        per_tensor[t] = per_tensor.get(t, 0) + 1
    total = {}
    for g in groups:
        total[g.slices[0].tensor] = total.get(g.slices[0].tensor, 0) + 1
    for t, n in per_tensor.items():
        assert (total[t] - n) % 4 == 0, t  # kept channels a multiple of 4
        assert n <= int(0.75 * total[t]), t
    sub, full = _constructed_flops(model, groups, chosen)
    assert sub <= 0.6 * full


def _label(g) -> str:
    return str(g.meta["label"])


def test_gezig_savings_count_the_collateral():
    model = _model("demosupnet")
    groups = groups_for(model, "gezig")
    costs = L.exact_flops_cost_model(model, groups)
    save = costs.savings()
    conv2 = next(i for i, g in enumerate(groups) if _label(g).startswith("/conv2/"))
    conv6 = next(i for i, g in enumerate(groups) if _label(g).startswith("/conv6/"))
    layer = {lc.name: lc.full_ms for lc in costs.layers}
    # erasing Conv2-BN2 also takes Conv6's column block for it: more than Conv2's own FLOPs
    assert save[conv2] > layer["/conv2/Conv"]
    # erasing Conv6 kills Conv2, Conv3 and Conv4 (their only consumer was the Concat feeding it)
    killed = sum(layer[n] for n in ("/conv2/Conv", "/conv3/Conv", "/conv4/Conv", "/conv6/Conv"))
    assert save[conv6] >= killed
    # and the counted figure of erasing Conv6 alone (with its collateral) agrees
    chosen = L.flops_select(groups, [10.0 if i == conv6 else 0.0 for i in range(len(groups))], costs, k=4)
    assert chosen[0] == conv6 and len(chosen) == 4
    assert costs.full - costs.predict(chosen) >= killed


def test_erase_prefers_expensive_segments_over_conv5():
    """Conv5 (cheap) is the most redundant, Conv7/Conv8 (expensive) next: the budget goes to Conv7/Conv8."""
    model = _model("demosupnet")
    groups = groups_for(model, "gezig")
    costs = L.exact_flops_cost_model(model, groups)
    idx = {lab: i for i, g in enumerate(groups) for lab in ("conv5", "conv7", "conv8") if _label(g).startswith(f"/{lab}/")}
    scores = np.zeros(len(groups))
    scores[idx["conv5"]], scores[idx["conv7"]], scores[idx["conv8"]] = 3.0, 2.9, 2.8
    for frac in (0.5, 0.8):
        chosen = L.flops_select(groups, scores, costs, target_flops=frac)
        assert idx["conv5"] not in chosen
        assert idx["conv7"] in chosen or idx["conv8"] in chosen
        assert costs.predict(chosen) <= frac * costs.full
    # the count-based walk of the same scores would spend its first pick on Conv5
    from otoir.analyses.validity import select_redundant

    assert select_redundant(groups, scores.tolist(), 1) == [idx["conv5"]]


def test_zero_groups_target_flops_is_exact_and_refuses_bad_combinations():
    model = _model("demosupnet")
    res = PassManager.from_text("zero-groups{target-flops=0.5 seed=1}").run(model)
    predicted = res.results["predicted-flops"]
    full = clone_model(model)
    PassManager.from_text("to-inference").run(full)
    PassManager.from_text("to-inference,eliminate-dead-branches,cleanup").run(model)
    assert predicted == pytest.approx(stats(model).flops / stats(full).flops)
    assert 0.0 < predicted <= 0.5
    with pytest.raises(otoir.PassFailure, match="target-flops= chooses the groups itself"):
        PassManager.from_text("zero-groups{target-flops=0.5 random=0.5}").run(_model("demosupnet"))


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "1", "nan"])
def test_bad_target_flops_values_are_refused(bad):
    from otoir.train.config import TrainConfig

    with pytest.raises(ValueError, match="target-flops"):
        TrainConfig(target_flops=float(bad))
    with pytest.raises(Exception, match="target-flops"):
        PassManager.from_text(f"zero-groups{{target-flops={bad}}}")
    with pytest.raises(Exception, match="target-flops"):
        PassManager.from_text(f"otoir-erase{{target-flops={bad}}}")


def test_both_targets_are_refused():
    from otoir.train.config import TrainConfig

    with pytest.raises(ValueError, match="not both"):
        TrainConfig(target_flops=0.5, target_latency=0.5)
    with pytest.raises(Exception, match="not both"):
        PassManager.from_text("otoir-prune{target-flops=0.5 target-latency=0.5}")
    with pytest.raises(Exception, match="not both"):
        PassManager.from_text("zero-groups{kind=zig target-flops=0.5 target-latency=0.5}")
    with pytest.raises(otoir.OtoirError, match="not both"):
        otoir.compress(_model("demosupnet"), "mnist", target_flops=0.5, target_latency=0.5, progress=False)
    pm = PassManager.from_text("otoir-erase{target-flops=0.4}")
    assert "target-flops=0.4" in pm.to_text()


def test_compress_erase_demosupnet_meets_the_flops_target(mnist_256):
    from otoir.zoo import build

    module, _ = build("demosupnet", width=0.25)
    example = torch.from_numpy(mnist_256.train_x[:2])
    res = otoir.compress(module, mnist_256, mode="erase", target_flops=0.5, epochs=1, batch=32,
                         example_inputs=example, progress=False, latency_runs=0)
    assert "target-flops=0.5" in res.pipeline
    assert res.report.details["groups"].endswith(f"(target-flops 0.5 -> {len(res.zero_group_ids)})")
    assert res.report.verified is not False  # the oracle held on the held-out inputs
    assert 0 < len(res.removed_group_ids) < len(res.groups)
    assert res.report.compressed.flops <= 0.5 * res.report.full.flops
    # like for like (both in inference form, before to-deployment folds BatchNorm): still within
    sub = clone_model(res.full)
    by = {g.id: g for g in res.groups}
    from otoir.analyses.groups import zero_group

    for gid in res.zero_group_ids:
        zero_group(sub, by[gid])
    PassManager.from_text("eliminate-dead-branches,cleanup").run(sub)
    assert stats(sub).flops <= 0.5 * stats(res.full).flops


def test_compress_prune_ort_meets_the_flops_target_with_round_to(mnist_256):
    from otoir.zoo import build

    torch.manual_seed(0)
    module, _ = build("resnet_basic", in_channels=1, width=16, layers=(1, 1, 1, 1))
    example = torch.from_numpy(mnist_256.train_x[:2])
    res = otoir.compress(otoir.load(module, example), mnist_256, mode="prune", target_flops=0.5, round_to=4,
                         epochs=1, batch=64, backend="ort", progress=False, latency_runs=0)
    assert "target-flops=0.5" in res.pipeline
    assert res.report.verified is not False
    assert res.report.compressed.flops <= 0.5 * res.report.full.flops
    # kept channel counts of the sliced convolutions are multiples of 4
    kept = res.report.details["kept channels"]
    assert kept
    for item in kept.split("; "):
        after = int(item.rsplit("->", 1)[1])
        assert after % 4 == 0, item


def test_train_pass_reports_predicted_flops_and_warns_when_unreachable(mnist_256):
    from otoir.infra.diagnostics import Severity
    from otoir.train.config import TrainInputs
    from otoir.zoo import build

    module, _ = build("demosupnet", width=0.25)
    m = otoir.load(module, torch.from_numpy(mnist_256.train_x[:2]))
    full = stats(m).flops
    r = PassManager.from_text("otoir-erase{data=mnist-256 target-flops=0.05 backend=ort quiet=true}").run(
        m, resources={TrainInputs.KEY: TrainInputs(datasets=(mnist_256,))})
    st = {k.split("{")[0]: v for k, v in r.statistics}
    predicted = st["train"]["predicted-flops"]
    assert 0.05 < predicted < 1.0  # the most that can be erased validly
    warn = [d.message for d in r.diagnostics if d.severity == Severity.WARNING]
    assert any("target-flops=0.05" in w and f"{predicted:.3f}" in w for w in warn)
    assert stats(m).flops <= predicted * full  # deployment form: BatchNorm folded on top
