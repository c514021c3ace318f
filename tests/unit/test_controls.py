"""User controls: ignore=, max-layer-ratio, reported kept channels, removed-group counts, safe defaults."""

from __future__ import annotations

import math

import pytest

from otoir.analyses.groups import group_is_zero, zero_group
from otoir.analyses.validity import controlled_groups, select_redundant
from otoir.analyses.zig import ChannelGroups
from otoir.errors import PassFailure
from otoir.infra import PassManager
from otoir.infra.diagnostics import Severity
from otoir.zoo.random_dag import random_conv_dag

torch = pytest.importorskip("torch")


def _zig_groups(model):
    res = PassManager.from_text("partition-zig").run(model)
    return [g for g in res.analyses.get(ChannelGroups).groups if g.prunable]


def _tensor_of(g):
    return g.slices[0].tensor


# -- ignore= ------------------------------------------------------------------------------------
def test_ignore_globs_mark_groups_kept_with_the_reason():
    model = random_conv_dag(3, n_blocks=3)
    groups = _zig_groups(model)
    tensor = _tensor_of(groups[0])
    pattern = tensor.split(".")[0] + ".w*"
    out = controlled_groups(groups, model, ignore=("nothing*", pattern))
    hit = [g for g in out if not g.prunable]
    assert hit and all(g.reason == f"ignored by ignore={pattern}" for g in hit)
    assert len(hit) < len(out)
    assert {g.id for g in out if g.prunable and _tensor_of(g) == tensor} == set()
    # never selected, whatever its score
    scores = [10.0 if not g.prunable else 0.0 for g in out]
    chosen = select_redundant(out, scores, len(out))
    assert not any(not out[i].prunable for i in chosen) and chosen


def test_ignore_matches_node_names():
    model = random_conv_dag(3, n_blocks=3)
    groups = _zig_groups(model)
    tensor = _tensor_of(groups[0])
    node = next(u.node for u in model.graph.initializers[tensor].uses())
    assert node.name
    out = controlled_groups(groups, model, ignore=(node.name,))
    assert any(not g.prunable and _tensor_of(g) == tensor for g in out)


def test_zero_groups_ignore_from_pipeline_text():
    model = random_conv_dag(3, n_blocks=3)
    groups = _zig_groups(model)
    t0, t1 = _tensor_of(groups[0]), next(_tensor_of(g) for g in groups if _tensor_of(g) != _tensor_of(groups[0]))
    res = PassManager.from_text(f"zero-groups{{kind=zig random=1.0 ignore={t0},{t1}}}").run(model)
    zeroed = set(res.results["zeroed"])
    assert zeroed
    for g in groups:
        if _tensor_of(g) in (t0, t1):
            assert g.id not in zeroed and not group_is_zero(model, g)
    assert any("ignored by ignore=" in d.message for d in res.diagnostics)
    # asking for an ignored group by id is an error that says why
    model2 = random_conv_dag(3, n_blocks=3)
    with pytest.raises(PassFailure, match="ignored by ignore="):
        PassManager.from_text(f"zero-groups{{kind=zig ids={groups[0].id} ignore={t0}}}").run(model2)


def test_ignore_and_max_layer_ratio_parse_as_train_options():
    from otoir.infra.registry import get_pass

    p = PassManager.from_text("otoir-prune{ignore=conv1*,fc.* max-layer-ratio=0.5}").passes[0]
    assert p.ignore == ("conv1*", "fc.*") and p.max_layer_ratio == 0.5
    train = p.train_pass()
    assert train.ignore == ("conv1*", "fc.*") and train.max_layer_ratio == 0.5
    with pytest.raises(ValueError, match="max-layer-ratio"):
        get_pass("train")(max_layer_ratio=0.0)


def test_compress_ignore_keeps_the_matching_groups(mnist_256):
    import otoir
    from otoir.zoo import build

    small = mnist_256
    torch.manual_seed(0)
    module, _ = build("resnet_basic", in_channels=1, width=4)
    example = torch.from_numpy(small.train_x[:2])
    source = otoir.load(module, example)
    all_groups = _zig_groups(otoir.load(module, example))
    stem = _tensor_of(all_groups[0])
    res = otoir.compress(source, small, mode="prune", target_sparsity=0.5, epochs=1, batch=32, backend="ort",
                         example_inputs=example, progress=False, latency_runs=0, ignore=(stem,))
    assert stem not in {_tensor_of(g) for g in res.groups}  # never handed to the optimizer
    assert len(res.groups) < len(all_groups)
    assert len(res.zero_group_ids) == math.floor(0.5 * len(res.groups))
    assert "ignore=" in res.pipeline
    # the report counts removed groups (what surgery removed), and names the kept ones
    assert res.report.details["groups"].startswith(f"{len(res.removed_group_ids)} of {len(res.groups)}")
    assert set(res.removed_group_ids) | set(res.kept_groups) == set(res.zero_group_ids)


# -- max-layer-ratio -------------------------------------------------------------------------------
def test_max_layer_ratio_caps_each_tensor_and_hits_the_target_exactly():
    model = random_conv_dag(3, n_blocks=3)
    groups = _zig_groups(model)
    per: dict[str, int] = {}
    for g in groups:
        per[_tensor_of(g)] = per.get(_tensor_of(g), 0) + 1
    ratio = 0.5
    capped = controlled_groups(groups, model, max_layer_ratio=ratio)
    most = sum(min(math.floor(ratio * n), n - 1) for n in per.values())
    # scores that would take a whole tensor first: the cap must move the choice elsewhere
    big = _tensor_of(groups[0])
    scores = [1.0 + (_tensor_of(g) == big) for g in groups]
    chosen = select_redundant(capped, scores, most)
    assert len(chosen) == most
    used: dict[str, int] = {}
    for i in chosen:
        used[_tensor_of(capped[i])] = used.get(_tensor_of(capped[i]), 0) + 1
    assert all(used[t] <= math.floor(ratio * per[t]) for t in used)
    # an unreachable target is refused up front, naming the largest reachable one
    from otoir.optim.from_groups import check_valid_target

    assert check_valid_target(capped, most) == most
    with pytest.raises(ValueError, match=rf"at most {most} can be erased .*max-layer-ratio"):
        check_valid_target(capped, most + 1)


def test_max_layer_ratio_in_training_dhspg():
    from otoir.optim import build_optimizer
    from otoir.optim.from_groups import groups_for, trainable_shapes

    model = random_conv_dag(3, n_blocks=3)
    groups = groups_for(model, "zig", max_layer_ratio=0.25)
    assert groups.layer_caps
    most = len(select_redundant(groups, [0.0] * len(groups), len(groups)))
    opt = build_optimizer("dhspg", trainable_shapes(model), groups=groups, target=most, warmup_steps=1,
                          projection_steps=1)
    assert opt.core.target_count == most
    with pytest.raises(ValueError, match="max-layer-ratio"):
        build_optimizer("dhspg", trainable_shapes(model), groups=groups, target=most + 1, warmup_steps=1)


# -- what is kept is reported ----------------------------------------------------------------------
def test_prune_channels_reports_the_last_channel_it_keeps():
    model = random_conv_dag(3, n_blocks=3)
    groups = _zig_groups(model)
    tensor = _tensor_of(groups[0])
    same = [g for g in groups if _tensor_of(g) == tensor]
    assert len(same) >= 2
    for g in same:  # every channel group of one tensor zero (beyond what the selection allows)
        zero_group(model, g)
    res = PassManager.from_text("prune-channels").run(model)
    stats = res.statistics[-1][1]
    assert stats["num-last-kept"] == 1
    assert stats["num-groups-removed"] == len(same) - 1
    warn = [d for d in res.diagnostics if d.severity == Severity.WARNING and "keeps one channel" in d.message]
    assert len(warn) == 1
    ids = res.results["prune-channels-ids"]
    assert len(ids["kept"]) == 1 and next(iter(ids["kept"])) in warn[0].message
    assert len(ids["removed"]) == len(same) - 1
    assert set(ids["removed"]) | set(ids["kept"]) == {g.id for g in same}


# -- safe defaults ------------------------------------------------------------------------------
def _torch_setup():
    from otoir.frontends.torch_export import export_torch
    from otoir.optim.from_groups import groups_for
    from otoir.zoo import build

    torch.manual_seed(0)
    module, _ = build("resnet_basic", in_channels=1, width=4)
    x = torch.randn(8, 1, 28, 28)
    model = export_torch(module, x[:2])
    return module, groups_for(model, "zig"), x


def _step(module, opt, x):
    opt.zero_grad()
    module(x).square().mean().backward()
    opt.step()


def test_make_torch_optimizer_never_zeroes_at_the_first_step_by_default():
    from otoir.train.torch_backend import make_torch_optimizer

    module, groups, x = _torch_setup()
    with pytest.raises(ValueError, match="total_steps"):
        make_torch_optimizer(module, groups)
    opt = make_torch_optimizer(module, groups, total_steps=100, lr=0.01)
    assert opt.core.schedule.warmup_steps == 25 and opt.core.schedule.projection_steps == 35
    _step(module, opt, x)
    assert opt.num_zero_groups == 0
    # zeroing at the first step only when asked explicitly
    module2, groups2, _ = _torch_setup()
    opt2 = make_torch_optimizer(module2, groups2, warmup_steps=0, projection_steps=0, lr=0.01)
    _step(module2, opt2, x)
    assert opt2.num_zero_groups == opt2.core.target_count > 0


def test_dhspg_zeroes_only_removable_channel_groups():
    """Asked K, removed K: DHSPG's selection never zeroes every channel of a tensor."""
    from otoir.frontends.torch_export import export_torch
    from otoir.optim.from_groups import groups_for
    from otoir.train.torch_backend import copy_state_to_model, make_torch_optimizer
    from otoir.zoo import build

    torch.manual_seed(0)
    module, _ = build("resnet_basic", in_channels=1, width=4)
    x = torch.randn(8, 1, 28, 28)
    model = export_torch(module, x[:2])
    groups = groups_for(model, "zig")
    opt = make_torch_optimizer(module, groups, target=0.9, warmup_steps=0, projection_steps=0, lr=0.01)
    _step(module, opt, x)
    k = opt.core.target_count
    assert opt.num_zero_groups == k > 0
    copy_state_to_model(module, model)
    res = PassManager.from_text("to-inference,prune-channels").run(model)
    stats = res.statistics[-1][1]
    assert stats["num-groups-removed"] == k and stats["num-last-kept"] == 0


# -- values that carry part of several tensors' groups (channel shuffle, split) ----------------
class _ShuffleNet(torch.nn.Module):
    """ShuffleNetV2's units in small: a stride-2 unit (two branches, concatenated, shuffled), then
    stride-1 units that split the shuffled channels in halves (``Slice``): each half carries half
    of each branch's groups, so no tensor the selection counts groups by covers it."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, c, 3, padding=1)
        self.b1 = torch.nn.Sequential(torch.nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c),
                                      torch.nn.Conv2d(c, c, 1), torch.nn.ReLU())
        self.b2 = torch.nn.Sequential(torch.nn.Conv2d(c, c, 1), torch.nn.ReLU(),
                                      torch.nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c),
                                      torch.nn.Conv2d(c, c, 1), torch.nn.ReLU())
        self.units = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Conv2d(c, c, 1), torch.nn.ReLU(),
                                                             torch.nn.Conv2d(c, c, 3, padding=1, groups=c),
                                                             torch.nn.Conv2d(c, c, 1), torch.nn.ReLU())
                                         for _ in range(2))
        self.head = torch.nn.Conv2d(2 * c, 4, 1)

    @staticmethod
    def shuffle(x):
        n, ch, h, w = x.shape
        return x.view(n, 2, ch // 2, h, w).transpose(1, 2).reshape(n, ch, h, w)

    def forward(self, x):
        x = self.stem(x)
        x = self.shuffle(torch.cat([self.b1(x), self.b2(x)], 1))
        for u in self.units:
            a, b = x.chunk(2, dim=1)
            x = self.shuffle(torch.cat([a, u(b)], 1))
        return self.head(x).mean((2, 3))


@pytest.mark.parametrize("round_to", [1, "auto"])
def test_channel_shuffle_halves_keep_a_channel_without_prune_channels_keeping_one_back(round_to):
    """Random selections at every count: prune-channels never has to keep a group back (the
    analysis kept one group per shuffled half), so the count zeroed is the count asked, round-to
    holds, and the oracle holds."""
    import numpy as np

    from otoir.api import clone_model
    from otoir.frontends.torch_export import export_torch
    from otoir.infra.analysis import AnalysisManager
    from otoir.optim.from_groups import groups_for
    from otoir.report import random_inputs
    from otoir.runtime import output_agreement

    torch.manual_seed(0)
    model = export_torch(_ShuffleNet().eval(), torch.randn(1, 3, 16, 16))
    cg = ChannelGroups(model, AnalysisManager(model))
    kept = [g for g in cg.groups if not g.prunable and "keeps a channel" in g.reason]
    assert kept and all("carries only part of the groups" in g.reason for g in kept)
    groups = groups_for(model, "zig", round_to=round_to)
    assert not {g.id for g in kept} & {g.id for g in groups}
    rng = np.random.default_rng(0)
    for k in (len(groups) // 4, len(groups) // 2, 3 * len(groups) // 4, len(groups)):
        chosen = select_redundant(groups, rng.random(len(groups)).tolist(), k)
        zeroed = clone_model(model)
        for i in chosen:
            zero_group(zeroed, groups[i])
        PassManager.from_text("to-inference").run(zeroed)
        sub = clone_model(zeroed)
        res = PassManager.from_text("prune-channels").run(sub)
        stats = res.statistics[-1][1]
        assert stats["num-last-kept"] == 0, [d.message for d in res.diagnostics]
        assert stats["num-groups-removed"] == len(chosen)
        if round_to == "auto":  # on the tensors the selection counts groups by (the shuffle couples
            # channels of other tensors in pairs across branches, so their counts follow those)
            for t, axis in {(g.slices[0].tensor, g.slices[0].axis) for g in groups}:
                for a, before, after in res.results["prune-channels-ids"]["channels"].get(t, ()):
                    assert a != axis or before < 16 or after % (8 if before < 32 else 16) == 0, (t, before, after)
        assert output_agreement(zeroed, sub, random_inputs(zeroed, rows=2)) <= 1e-4
