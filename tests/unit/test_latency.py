"""The measured latency model (otoir.analyses.latency) and latency-aware selection."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from otoir.analyses import latency as L
from otoir.analyses.validity import GroupSet
from otoir.infra import PassManager
from otoir.infra.diagnostics import Severity


def _chain() -> ir.Model:
    """x(1x16x8x8) -> Conv 16->16 -> Relu -> Conv 16->24 -> Relu -> GAP -> Flatten -> Gemm 24->10."""
    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]
    inits = [init("w1", 16, 16, 3, 3), init("b1", 16), init("w2", 24, 16, 3, 3), init("b2", 24),
             init("wf", 10, 24), init("bf", 10)]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


@pytest.fixture
def counted(monkeypatch):
    """Counts calls of the one timer (the real one still runs)."""
    calls = {"n": 0}
    real = L._measure

    def measure(sess, feeds, runs, **kw):
        calls["n"] += 1
        return real(sess, feeds, runs, **kw)

    monkeypatch.setattr(L, "_measure", measure)
    return calls


def test_table_is_built_then_read_from_the_cache(tmp_path, counted):
    model = _chain()
    t1 = L.build_latency_table(model, cache=tmp_path, rounds=2)
    assert set(t1.layers) == {"conv1", "conv2", "fc"}
    assert counted["n"] > 0 and t1.timings > 0
    lc = t1.layers["conv2"]
    assert (lc.cin, lc.cout, lc.in_axis, lc.out_axis) == (16, 24, 1, 0)
    assert lc.out_aligned and lc.in_aligned and lc.full_ms > 0
    assert t1.full_ms > 0  # the whole model was timed too
    assert len(list(tmp_path.glob("*.json"))) == 1
    n = counted["n"]
    t2 = L.build_latency_table(model, cache=tmp_path, rounds=2)
    assert counted["n"] == n, "the second build must not time anything"
    assert t2.timings == 0 and t2.key == t1.key
    assert t2.layers["conv2"].out_aligned == t1.layers["conv2"].out_aligned
    # another thread count is another table
    L.build_latency_table(model, cache=tmp_path, rounds=1, threads=2)
    assert counted["n"] > n and len(list(tmp_path.glob("*.json"))) == 2


def test_weight_values_do_not_change_the_cache_key():
    a, b = _chain(), _chain()
    w = b.graph.initializers["w1"]
    w.const_value = ir.tensor(np.zeros((16, 16, 3, 3), np.float32), name="w1")
    assert L.structure_hash(a) == L.structure_hash(b)
    c = _chain()
    c.graph.node(0).attributes["pads"] = ir.AttrInt64s("pads", [0, 0, 0, 0])
    assert L.structure_hash(a) != L.structure_hash(c)


def test_interpolation_is_monotone_and_uses_the_misaligned_series():
    lc = L.LayerCost("c", "Conv", "w", cin=64, cout=64, in_axis=1, out_axis=0, align=8, full_ms=1.0,
                     out_aligned=[(16, 0.3), (32, 0.9), (48, 0.7)],  # an outlier at 32
                     out_misaligned=[(20, 0.8), (36, 1.1)],
                     in_aligned=[(16, 0.25), (32, 0.5), (48, 0.75)])
    aligned = [lc.predict(64, c) for c in range(8, 65, 8)]
    assert all(b >= a - 1e-12 for a, b in zip(aligned, aligned[1:], strict=False))
    assert lc.predict(64, 64) == pytest.approx(1.0)
    assert lc.predict(64, 0) == 0.0 and lc.predict(0, 64) == 0.0
    # a misaligned count is predicted from the misaligned samples (slower than its neighbours)
    assert lc.predict(64, 20) > lc.predict(64, 24)
    assert lc.predict(64, 20, smooth=True) <= lc.predict(64, 24, smooth=True)
    # separable in the two counts
    assert lc.predict(32, 64) == pytest.approx(0.5)
    assert lc.predict(32, 16) == pytest.approx(lc.predict(64, 16) * 0.5)


def test_a_thinner_layer_is_never_predicted_cheaper_per_multiply_accumulate_than_the_full_one():
    # alone, the half-width layer took 0.2 of the full time (its weights fit the caches); inside
    # the network its kernel takes its work's share, so the prediction is floored at the work kept
    lc = L.LayerCost("c", "Conv", "w", cin=64, cout=64, in_axis=1, out_axis=0, align=16, full_ms=1.0,
                     out_aligned=[(16, 0.05), (32, 0.2), (48, 0.5)], in_aligned=[(32, 0.5)])
    assert lc.predict(64, 32) == pytest.approx(0.5)
    assert lc.predict(64, 48) == pytest.approx(0.75)
    assert lc.predict(32, 32) == pytest.approx(0.25)
    # above the floor the samples stand (a fixed cost: 16 outputs take more than a quarter)
    lc.out_aligned = [(16, 0.4), (32, 0.6), (48, 0.8)]
    assert lc.predict(64, 16) == pytest.approx(0.4)


def test_calibration_scales_every_sample_to_the_in_graph_time():
    lc = L.LayerCost("c", "Conv", "w", cin=64, cout=64, in_axis=1, out_axis=0, align=16, full_ms=2.0,
                     out_aligned=[(32, 1.2)], out_misaligned=[(40, 1.8)], in_aligned=[(32, 1.0)],
                     in_misaligned=[(40, 1.4)])
    before = [lc.predict(64, c) for c in (16, 32, 40, 48)]
    lc.calibrate(3.0)
    assert lc.full_ms == 3.0 and lc.calibration == pytest.approx(1.5)
    assert lc.out_aligned == [(32, pytest.approx(1.8))] and lc.in_misaligned == [(40, pytest.approx(2.1))]
    assert [lc.predict(64, c) for c in (16, 32, 40, 48)] == pytest.approx([1.5 * b for b in before])
    lc.calibrate(0.0)  # no in-graph time: unchanged
    assert lc.full_ms == 3.0


def test_table_layers_carry_their_in_graph_times(resnet_table):
    model, table = resnet_table
    convs = [n.name for n in model.graph if n.op_type in ("Conv", "Gemm")]
    assert set(convs) <= set(table.layers)
    # every layer was found in the whole model's profile (a fused Conv+Add+Relu counts for its
    # Conv) and scaled to it: an unmatched key would leave calibration at exactly 1.0
    assert all(table.layers[n].calibration != 1.0 for n in convs)
    # each layer carries a positive in-graph time (how it compares with the separately timed
    # whole model depends on the load: not asserted, tests do not assert on wall time; it was
    # 0.43 of it under a loaded suite on 2026-11-30, about 0.9 on a quiet machine)
    assert all(table.layers[n].full_ms > 0 for n in convs)


def test_runtime_alignment_keeps_an_explicit_round_to_and_makes_it_a_multiple_of_the_block(resnet_table, monkeypatch):
    import dataclasses

    from otoir.analyses.validity import controlled_groups
    from otoir.optim.from_groups import groups_for

    monkeypatch.setattr(L, "channel_work_unit", lambda block: block)  # no work units here (see the next test)
    model, table = resnet_table
    costs = L.cost_model(model, [], table=dataclasses.replace(table, align=16))
    groups = groups_for(model, "zig")
    plain, note = L.runtime_aligned(model, groups, costs)
    assert plain.round_to == 16 and "multiples of 16" in note
    rt8, note = L.runtime_aligned(model, controlled_groups(groups, model, round_to=8), costs)
    assert rt8.round_to == 16 and "round-to=8" in note  # a multiple of 16 is a multiple of 8
    assert rt8.channels and all(c in (32, 64, 128, 256) for c in rt8.channels.values())
    rt32 = controlled_groups(groups, model, round_to=32)
    same, note = L.runtime_aligned(model, rt32, costs)
    assert same is rt32 and note == ""
    rt24, _ = L.runtime_aligned(model, controlled_groups(groups, model, round_to=24), costs)
    assert rt24.round_to == 48


def test_runtime_alignment_keeps_dense_conv_outputs_in_whole_work_units(resnet_table, monkeypatch):
    import dataclasses

    from otoir.analyses.validity import controlled_groups, select_redundant
    from otoir.optim.from_groups import groups_for

    monkeypatch.setattr(L, "channel_work_unit", lambda block: 4 * block)
    model, table = resnet_table
    costs = L.cost_model(model, [], table=dataclasses.replace(table, align=16))
    groups = groups_for(model, "zig")
    aligned, note = L.runtime_aligned(model, groups, costs)
    assert aligned.round_to == 16 and aligned.units and set(aligned.units.values()) == {64}
    assert "multiple of 64" in note
    assert all(aligned.channels[t] > 64 for t in aligned.units)  # a unit only where more than one fits
    dense = {n.inputs[1].name for n in model.graph if n.op_type == "Conv"}
    assert set(aligned.units) <= dense
    rng = np.random.default_rng(0)
    scores = rng.random(len(aligned)).tolist()
    for k in (len(aligned) // 4, len(aligned) // 2):
        chosen = select_redundant(aligned, scores, k)
        assert len(chosen) == k  # still exact
        zeroed: dict[str, int] = {}
        for i in chosen:
            zeroed[aligned[i].slices[0].tensor] = zeroed.get(aligned[i].slices[0].tensor, 0) + 1
        for t, z in zeroed.items():
            kept = aligned.channels[t] - z
            assert kept % 16 == 0
            if t in aligned.units:
                assert kept <= 64 or kept % 64 == 0, (t, kept)
    # an explicit round-to the block divides still gets the units
    rt32 = controlled_groups(groups, model, round_to=32)
    with_units, _ = L.runtime_aligned(model, rt32, costs)
    assert with_units is not rt32 and with_units.round_to == 32 and with_units.units == aligned.units


def test_work_unit_probe_reads_the_step_of_the_timings_and_is_cached(monkeypatch):
    import itertools

    def fake(times):
        it = itertools.cycle(times)  # 4, 5 and 8 blocks of outputs at 2 threads, 8 at 1 thread, in turn

        def fastest(sess, feeds, runs, fastest=False):
            assert fastest  # the probe keeps the least disturbed run
            calls.append(runs)
            return next(it)
        return fastest

    calls: list[int] = []
    monkeypatch.setattr(L.time, "sleep", lambda s: None)
    monkeypatch.setattr(L, "_UNIT_CACHE", {})
    monkeypatch.setattr(L, "_measure", fake([1.0, 1.9, 2.0, 3.6]))  # a fifth block costs nearly four more
    assert L.channel_work_unit(16) == 64 and calls
    calls.clear()
    assert L.channel_work_unit(16) == 64 and not calls  # cached: nothing timed again
    monkeypatch.setattr(L, "_UNIT_CACHE", {})
    monkeypatch.setattr(L, "_measure", fake([1.0, 1.25, 2.0, 3.6]))  # linear in the blocks
    assert L.channel_work_unit(16) == 16
    monkeypatch.setattr(L, "_UNIT_CACHE", {})
    monkeypatch.setattr(L.os, "cpu_count", lambda: 1)  # one CPU: no threads to split among
    calls.clear()
    assert L.channel_work_unit(16) == 16 and not calls
    monkeypatch.setattr(L, "_UNIT_CACHE", {})
    monkeypatch.setattr(L.os, "cpu_count", lambda: 2)
    assert L.channel_work_unit(16) == 16 and calls  # two CPUs: timed


def test_work_unit_probe_waits_until_two_threads_run_in_parallel(monkeypatch):
    """A step read while another process holds a core (2 threads no faster than 1) is not
    trusted: the probe tries again; when it never sees two threads at work it answers one
    block without caching it, so a later call probes again."""
    import itertools

    slept: list[float] = []
    monkeypatch.setattr(L.time, "sleep", slept.append)
    monkeypatch.setattr(L, "_UNIT_CACHE", {})
    disturbed = [1.0, 1.25, 2.0, 2.1]  # one core busy: 8 blocks at 2 threads as slow as at 1
    quiet = [0.5, 0.95, 1.0, 1.8]
    seq = itertools.chain(itertools.repeat(disturbed, 15 * 2), itertools.repeat(quiet))  # two tries of 15 rounds
    flat = (t for round_ in seq for t in round_)
    monkeypatch.setattr(L, "_measure", lambda sess, feeds, runs, fastest=False: next(flat))
    assert L.channel_work_unit(16) == 64  # read on the third try, when both threads ran
    assert len(slept) == 2
    monkeypatch.setattr(L, "_UNIT_CACHE", {})
    slept.clear()
    monkeypatch.setattr(L, "_measure", lambda sess, feeds, runs, fastest=False: 1.0)
    assert L.channel_work_unit(16) == 16 and len(slept) == 4
    assert L._UNIT_CACHE == {}  # not cached: the next call probes again


def test_isotonic_averages_an_outlier_instead_of_lifting_everything():
    assert L._isotonic([1.0, 5.0, 2.0, 3.0, 6.0]) == pytest.approx([1.0, 10 / 3, 10 / 3, 10 / 3, 6.0])


def test_sample_counts_are_aligned_and_misaligned():
    aligned, mis = L._sample_counts(96, 8)
    assert aligned == [24, 48, 72] and all(c % 8 == 0 for c in aligned)
    assert mis and all(c % 8 for c in mis)


def _zoo_resnet():
    pytest.importorskip("torch")
    import torch

    from otoir.frontends import export_torch
    from otoir.zoo import build

    module, _ = build("resnet_basic", width=32, layers=(1, 1, 1, 1))
    return export_torch(module, torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)))


@pytest.fixture(scope="module")
def resnet_table(tmp_path_factory):
    model = _zoo_resnet()
    return model, L.build_latency_table(model, cache=tmp_path_factory.mktemp("lat"), rounds=3)


def _flops_timer(overhead: float, log: list | None = None):
    """A stand-in for otoir.report.time_interleaved: a model's "ms" is ``overhead`` plus its
    MFLOPs (deterministic; a fixed cost the layer table does not see, so measurement and
    prediction disagree). ``log`` collects the models of every call."""
    import otoir

    def timer(models, sample, *, runs, warmup, threads, batch):
        if log is not None:
            log.append(list(models))
        return np.array([[overhead + otoir.stats(m).flops / 1e6] * runs for m in models])

    return timer


def _stub_ratio(model, removed_model, overhead):
    import otoir

    return (overhead + otoir.stats(removed_model).flops / 1e6) / (overhead + otoir.stats(model).flops / 1e6)


def test_target_latency_selection_meets_the_measured_fraction_and_the_oracle(resnet_table, tmp_path, monkeypatch):
    import otoir
    from otoir import report
    from otoir.analyses.zig import ChannelGroups
    from otoir.api import clone_model
    from otoir.report import random_inputs
    from otoir.runtime import output_agreement

    model, table = resnet_table
    monkeypatch.setenv("OTOIR_CACHE_DIR", str(tmp_path))
    (tmp_path / "latency").mkdir()
    (tmp_path / "latency" / f"{table.key}.json").write_text(table.to_json())  # no re-timing here
    deployed = clone_model(model)
    PassManager.from_text("to-deployment").run(deployed)
    overhead = 0.3 * otoir.stats(deployed).flops / 1e6
    monkeypatch.setattr(report, "time_interleaved", _flops_timer(overhead))
    res = PassManager.from_text("zero-groups{kind=zig target-latency=0.6 seed=3}").run(model)
    predicted = res.results["predicted-latency"]
    assert 0.0 < predicted <= 0.6
    zeroed = res.results["zeroed"]
    groups = GroupSet(g for g in res.analyses.get(ChannelGroups).groups if g.prunable)
    assert 0 < len(zeroed) < len(groups)
    notes = [d.message for d in res.diagnostics if d.severity == Severity.REMARK]
    assert any("multiples of" in m for m in notes)  # aligned to the runtime's channel multiple
    # oracle: the zeroed full model and the constructed sub-network agree
    full = clone_model(model)
    PassManager.from_text("to-inference").run(full)
    PassManager.from_text("to-inference,prune-channels,cleanup").run(model)
    assert len(model.graph.initializers["fc.weight"].const_value.shape) == 2
    xs = random_inputs(full, rows=4)
    assert output_agreement(full, model, xs) < 1e-4
    # the stat is the measured ratio of the constructed deployment-form network
    PassManager.from_text("to-deployment").run(model)
    assert predicted == pytest.approx(_stub_ratio(deployed, model, overhead))


def test_counter_of_the_empty_selection_is_the_full_model_and_results_are_cached(resnet_table):
    from otoir.optim.from_groups import groups_for

    model, _ = resnet_table
    groups = groups_for(model, "zig")
    log: list = []
    counter = L.LatencyCounter(model, groups, timer=_flops_timer(1.0, log))
    assert counter.constructions == 1 and len(log) == 1 and len(log[0]) == 1  # the full model alone
    assert counter(()) == counter.full > 0
    assert counter.constructions == 1 and len(log) == 1
    sel = [0, 5, 9]
    first = counter(sel)
    assert counter.constructions == 2 and len(log) == 2
    assert counter(list(reversed(sel))) == first and counter(tuple(sel)) == first  # cached per selection
    assert counter.constructions == 2 and len(log) == 2
    assert 0 < first < counter.full
    # confirming the selection just timed times it again without building it again
    assert counter.confirm(sel) == pytest.approx(first)
    assert counter.constructions == 2 and len(log) == 3 and log[-1][1] is log[-2][1]
    counter([1, 2])
    counter.confirm(sel)  # not the last one timed: built again
    assert counter.constructions == 4


def test_counter_times_the_network_the_pipeline_builds(resnet_table):
    import otoir
    from otoir.analyses.groups import zero_group
    from otoir.api import clone_model
    from otoir.optim.from_groups import groups_for
    from otoir.report import random_inputs
    from otoir.runtime import output_agreement

    model, _ = resnet_table
    groups = groups_for(model, "zig")
    log: list = []
    counter = L.LatencyCounter(model, groups, timer=_flops_timer(0.5, log))
    sel = list(range(0, len(groups), 7))[:40]
    ratio = counter(sel) / counter.full
    reference, timed = log[-1]  # the full model and the sub-network, interleaved
    zeroed = clone_model(model)
    for i in sel:
        zero_group(zeroed, groups[i])
    PassManager.from_text("to-inference").run(zeroed)
    built = clone_model(zeroed)
    PassManager.from_text("prune-channels,cleanup,to-deployment").run(built)
    assert len(timed.graph) == len(built.graph)
    assert otoir.stats(timed).flops == otoir.stats(built).flops < otoir.stats(zeroed).flops  # channels cut out
    assert {k: tuple(v.const_value.shape) for k, v in timed.graph.initializers.items()} == \
        {k: tuple(v.const_value.shape) for k, v in built.graph.initializers.items()}
    assert output_agreement(zeroed, timed, random_inputs(zeroed, rows=4)) < 1e-4  # oracle
    full = clone_model(model)
    PassManager.from_text("to-deployment").run(full)
    assert len(reference.graph) == len(full.graph)
    assert ratio == pytest.approx(_stub_ratio(full, built, 0.5))


def test_bisection_takes_the_smallest_selection_the_measurement_accepts(resnet_table):
    import otoir
    from otoir.api import clone_model
    from otoir.optim.from_groups import groups_for

    model, _ = resnet_table
    groups = groups_for(model, "zig")
    full = clone_model(model)
    PassManager.from_text("to-deployment").run(full)
    # the layer model: FLOPs (deterministic); the "measurement": a fixed cost of half the full
    # model's FLOPs on top, so every measured ratio is above the predicted one
    timer = _flops_timer(0.5 * otoir.stats(full).flops / 1e6)
    costs = L.flops_cost_model(model, groups)
    costs.counter = L.LatencyCounter(model, groups, timer=timer)
    scores = np.random.default_rng(1).random(len(groups))
    target = 0.7
    pick = L.latency_select(groups, scores, costs, target_latency=target)
    assert costs.predict(pick) / costs.full <= target
    assert costs.predict(pick[:-1]) / costs.full > target  # one group fewer misses it: the smallest
    # the layer model alone stops earlier, at a selection the measurement rejects
    predicted_only = L.latency_select(groups, scores, L.flops_cost_model(model, groups), target_latency=target)
    assert len(predicted_only) < len(pick)
    assert costs.predict(predicted_only) / costs.full > target
    assert costs.layer_predict(predicted_only) / costs.layer_full <= target
    assert frozenset(pick) in costs.counter.confirmed  # the answer was timed twice
    # the search was bounded: far fewer constructions than groups
    assert costs.counter.constructions < 2 * np.log2(len(groups)) + 4


def test_confirm_times_again_and_keeps_the_median_of_all_rounds(resnet_table):
    from otoir.optim.from_groups import groups_for

    model, _ = resnet_table
    groups = groups_for(model, "zig")
    ratios = iter([None, 0.4, 0.7])  # the full model alone, then the selection twice

    def timer(models, sample, *, runs, warmup, threads, batch):
        r = next(ratios)
        return np.array([[2.0] * runs] + ([[2.0 * r] * runs] if len(models) > 1 else []))

    counter = L.LatencyCounter(model, groups, timer=timer, min_runs=4, max_runs=4)
    assert counter.full == 2.0 and counter.runs == 4
    assert counter([1, 2]) / counter.full == pytest.approx(0.4)
    n = counter.constructions
    assert counter.confirm([2, 1]) / counter.full == pytest.approx(0.55)  # median of 4 x 0.4 and 4 x 0.7
    assert counter([1, 2]) / counter.full == pytest.approx(0.55) and counter.constructions == n  # the last one timed: not built again
    assert frozenset({1, 2}) in counter.confirmed


def test_smallest_count_from_estimates_finds_the_same_count():
    costs = [1.0 - 0.013 * k for k in range(61)]  # falls with k; goal 0.5 first met at k = 39
    seen: list[int] = []

    def at(k):
        seen.append(k)
        return list(range(k)), costs[k]

    assert L._smallest_count(at, 60, 0.5) == 39
    for known in ((1,), (10,), (38,), (39,), (40,), (59,), (30, 45), (45, 50), (5, 20)):
        assert L._smallest_count(at, 60, 0.5, known=known) == 39, known
    assert L._smallest_count(at, 60, 0.1, known=(30,)) == 60  # unreachable: the most
    seen.clear()
    assert L._smallest_count(at, 60, 0.5, known=(38, 40)) == 39
    assert set(seen) == {38, 39, 40}  # a tight bracket: one more evaluation
    assert L.smallest_selection(at, 60, 0.5) == list(range(39))


def test_latency_selector_with_a_count_and_validity(resnet_table):
    from otoir.optim.from_groups import groups_for

    model, table = resnet_table
    groups = groups_for(model, "zig")
    costs = L.cost_model(model, groups, table=table)
    assert costs.source == "onnxruntime" and costs.full > 0
    scores = np.random.default_rng(0).random(len(groups))
    picked = L.latency_select(groups, scores, costs, k=10)
    assert len(picked) == 10 and len(set(picked)) == 10
    # groups that save more per unit of importance come first: the top pick saves at least the median
    save = costs.savings()
    imp = L._importance(scores)
    assert costs.work is not None and costs.work.source == "flops" and len(costs.work.savings()) == len(groups)
    assert save[picked[0]] / imp[picked[0]] >= np.median(save / imp)
    with pytest.raises(ValueError, match="exactly one"):
        L.latency_select(groups, scores, costs)


class _Additive(L.CostModel):
    """A cost model whose groups' savings add up (for selection tests)."""

    def __init__(self, per_group, work=None):
        super().__init__("test", [], 0.0, [[] for _ in per_group])
        self.per = np.asarray(per_group, dtype=np.float64)
        self.work = work

    @property
    def full(self) -> float:
        return float(self.per.sum())

    @property
    def layer_full(self) -> float:
        return self.full

    def savings(self):
        return self.per

    def layer_predict(self, removed):
        return self.full - float(self.per[list(removed)].sum())

    def predict(self, removed):
        return self.layer_predict(removed)


@pytest.mark.parametrize(("time", "work", "expected"), [
    # the rank alone takes group 0 (it saves the most); weighed by work, groups 1 and 2 save as
    # much time and keep 9 of 11 FLOPs where group 0 keeps 3: the work-weighted selection is kept
    ([3.0, 1.5, 1.5, 1.4, 2.6], [8.0, 1.0, 1.0, 1.0, 0.0], [1, 2]),
    # weighed by work, group 1 goes first but then group 0 is needed too: fewer FLOPs kept (2
    # of 9) than by the rank's group 0 alone (3): the rank's selection is kept
    ([3.0, 1.2, 1.2, 1.2, 3.4], [6.0, 1.0, 1.0, 1.0, 0.0], [0]),
])
def test_target_latency_keeps_the_ranking_whose_selection_keeps_more_flops(time, work, expected):
    from otoir.optim.from_groups import groups_for

    groups = groups_for(_chain(), "zig")[:5]
    scores = [0.5, 0.4, 0.3, 0.2, -np.inf]  # importance 1/4 .. 1 by rank; group 4 is never chosen
    costs = _Additive(time)  # the rank alone: group 0 saves 3 of 10 by itself
    assert sorted(L.latency_select(groups, scores, costs, target_latency=0.7)) == [0]
    costs = _Additive(time, work=_Additive(work))
    assert sorted(L.latency_select(groups, scores, costs, target_latency=0.7)) == expected
    assert L.latency_select(groups, scores, costs, k=1) == [0]  # a count: the rank's ranking
    # a group saving no FLOPs is weighed at the floor, not divided by zero
    assert np.all(np.isfinite(L._work_share(np.array([0.0, 1.0])))) and L._work_share(np.array([0.0, 1.0]))[0] > 0


def test_no_runtime_falls_back_to_flops_with_a_remark(monkeypatch):
    from otoir import runtime

    model = _chain()
    monkeypatch.setattr(runtime, "available", lambda: False)
    res = PassManager.from_text("zero-groups{kind=zig target-latency=0.6}").run(model)
    notes = [d.message for d in res.diagnostics if d.severity == Severity.REMARK]
    assert any("predicted from FLOPs" in m for m in notes)
    assert 0.0 < res.results["predicted-latency"] <= 0.6
    from otoir.optim.from_groups import groups_for

    groups = groups_for(model, "zig")
    costs = L.cost_model(model, groups)
    assert costs.source == "flops" and costs.table is None and "FLOPs" in costs.remark
    import otoir

    assert costs.full == pytest.approx(otoir.stats(model).flops)


def test_hybrid_core_takes_the_count_of_a_variable_count_selector():
    from otoir.optim.core import HybridCore, SparsitySchedule
    from otoir.optim.layout import GroupLayout

    layout = GroupLayout.from_slices([[("w", 0, (i,))] for i in range(6)], {"w": (6, 3)})

    class Pick3:
        variable_count = True

        def __call__(self, scores, k):
            return [0, 2, 4]

    core = HybridCore(layout, SparsitySchedule(target=0.0), Pick3())
    core.partition()
    assert core.target_count == 3 and core.redundant.tolist() == [True, False, True, False, True, False]


def test_target_latency_option_is_validated_and_round_trips():
    from otoir.train.config import TrainConfig

    with pytest.raises(ValueError, match="target-latency"):
        TrainConfig(target_latency=1.5)
    pm = PassManager.from_text("otoir-prune{target-latency=0.4}")
    assert "target-latency=0.4" in pm.to_text()
    with pytest.raises(Exception, match="target-latency"):
        PassManager.from_text("zero-groups{kind=zig target-latency=2}")


def test_latency_threads_and_batch_are_validated_and_round_trip():
    from otoir.train.config import TrainConfig

    for bad in ({"latency_threads": 0}, {"latency_batch": -2}, {"latency_batch": 1.5}):
        with pytest.raises(ValueError, match="latency-"):
            TrainConfig(**bad)
    pm = PassManager.from_text("otoir-prune{target-latency=0.4 latency-threads=2 latency-batch=16}")
    assert "latency-threads=2" in pm.to_text() and "latency-batch=16" in pm.to_text()
    train = pm.passes[0].train_pass()  # forwarded to the train pass
    assert (train.latency_threads, train.latency_batch) == (2, 16)
    with pytest.raises(Exception, match="latency-batch"):
        PassManager.from_text("zero-groups{kind=zig target-latency=0.5 latency-batch=0}")
    import otoir
    from otoir.errors import OtoirError

    with pytest.raises(OtoirError, match="compress: latency-batch must be a positive integer"):
        otoir.compress(_chain(), "mnist", mode="prune", target_latency=0.5, latency_batch=0, progress=False)
    with pytest.raises(OtoirError, match="compress: latency-threads must be a positive integer"):
        otoir.compress(_chain(), "mnist", mode="prune", target_latency=0.5, latency_threads=0, progress=False)


def test_target_latency_is_measured_at_the_threads_and_batch_asked(resnet_table, monkeypatch):
    import otoir
    from otoir import report

    model, table = resnet_table
    built: list = []

    def table_at(m, *, analyses=None, threads=1, batch=1, cache=True, **kw):
        built.append((threads, batch))
        return table

    monkeypatch.setattr(L, "build_latency_table", table_at)
    timed: list = []
    stub = _flops_timer(0.2 * otoir.stats(model).flops / 1e6)

    def timer(models, sample, *, runs, warmup, threads, batch):
        timed.append((threads, batch, next(iter(sample.values())).shape[0]))
        return stub(models, sample, runs=runs, warmup=warmup, threads=threads, batch=batch)

    monkeypatch.setattr(report, "time_interleaved", timer)
    res = PassManager.from_text("zero-groups{kind=zig target-latency=0.6 latency-threads=2 latency-batch=4}").run(model)
    assert 0 < len(res.results["zeroed"]) and res.results["predicted-latency"] <= 0.6
    assert built == [(2, 4)]
    assert timed and all(t[:2] == (2, 4) and t[2] >= 4 for t in timed)


def test_compress_with_target_latency_trains_to_the_latency_target(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    import otoir
    from otoir.data import Dataset, load_dataset
    from otoir.zoo import build

    monkeypatch.setenv("OTOIR_CACHE_DIR", str(tmp_path))
    ds = load_dataset("mnist")
    rng = np.random.default_rng(0)
    tr, va = rng.choice(len(ds.train_x), 128, replace=False), rng.choice(len(ds.val_x), 32, replace=False)
    small = Dataset(ds.train_x[tr], ds.train_y[tr], ds.val_x[va], ds.val_y[va], ds.num_classes, "mnist-128")
    torch.manual_seed(0)
    module, _ = build("resnet_basic", in_channels=1, width=16, layers=(1, 1, 1, 1))
    example = torch.from_numpy(small.train_x[:2])
    res = otoir.compress(otoir.load(module, example), small, mode="prune", target_latency=0.6, epochs=1, batch=32,
                         backend="ort", example_inputs=example, progress=False, latency_runs=0)
    assert "target-latency=0.6" in res.pipeline
    assert res.report.details["groups"].endswith(f"(target-latency 0.6 -> {len(res.zero_group_ids)})")
    assert 0 < len(res.zero_group_ids) < len(res.groups)
    assert res.report.verified is not False  # the oracle held on the held-out inputs
    assert res.report.compressed.flops < res.report.full.flops
    assert list(tmp_path.glob("latency/*.json"))  # the table was cached


def test_bench_latency_lists_its_networks_and_refuses_unknown_ones(capsys):
    from otoir.tools import bench_latency

    assert bench_latency.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("resnet18", "resnet50", "mobilenetv2", "efficientnet", "vit", "bert"))
    assert bench_latency.main(["--models", "alexnet"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert bench_latency.main(["--models", "resnet18", "--variants", "lat,fast"]) == 2
    assert "unknown variant(s) fast" in capsys.readouterr().err


def test_bench_latency_by_kind_splits_the_profile_by_kind_of_kernel():
    torch = pytest.importorskip("torch")
    from otoir.frontends import export_torch
    from otoir.report import KernelTime
    from otoir.tools import bench_latency

    module = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 1), torch.nn.Conv2d(8, 8, 3, padding=1, groups=8),
                                 torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 16, 2))
    model = export_torch(module, torch.randn(2, 4, 4, 4))
    names = {n.op_type + ("dw" if n.op_type == "Conv" and n.attributes.get("group") is not None
                          and n.attributes["group"].value > 1 else ""): n.name for n in model.graph}
    full = {names["Conv"]: KernelTime("Conv", 60.0, 512.0), names["Convdw"]: KernelTime("Conv", 20.0, 1152.0),
            names["Gemm"]: KernelTime("Gemm", 10.0, 256.0), names["Relu"]: KernelTime("Relu", 5.0, 128.0),
            "ReorderOutput_token_3": KernelTime("ReorderOutput", 5.0, 128.0)}
    half = {names["Conv"]: KernelTime("Conv", 15.0, 128.0), names["Convdw"]: KernelTime("Conv", 10.0, 576.0),
            names["Gemm"]: KernelTime("Gemm", 5.0, 128.0), names["Relu"]: KernelTime("Relu", 2.5, 64.0)}
    kinds = bench_latency._by_kind(model, {"full": full, "half": half})
    assert list(kinds["full"]) == ["conv", "dwconv", "matmul", "other", "reorder"]  # by share of the full time
    assert kinds["full"]["conv"] == (0.6, 1.0, 1.0)
    assert kinds["half"]["conv"] == (0.6, 0.25, 0.25)  # 1x1 conv: both sides halved
    assert kinds["half"]["dwconv"] == (0.2, 0.5, 0.5)  # depthwise: linear in the channels
    assert kinds["half"]["reorder"] == (0.05, 0.0, 0.0)  # the sub-network has none


def test_bench_latency_times_a_setting_again_while_its_threads_did_not_run_in_parallel():
    from otoir.tools import bench_latency

    full_ms = {1: [10.0], 2: [9.5, 9.0, 6.0], 4: [9.9, 9.9, 9.9]}  # per thread count, one per try
    calls = []

    def timer(models, sample, *, runs, threads, batch):
        calls.append((threads, batch, runs))
        ms = full_ms[threads][sum(1 for t, b, _ in calls if (t, b) == (threads, batch)) - 1]
        return [ms, ms / 2], [1.0, 0.5], [ms, ms / 2]

    lat, ratio, best, serial = bench_latency.time_settings(["full", "sub"], None, [2, 1, 4], [1], 10, timer=timer)
    # 1 thread first (the reference); 2 threads: 0.95 and 0.90 of it are timed again, 0.60 is kept
    assert [c[0] for c in calls] == [1, 2, 2, 2, 4, 4, 4] and all(r == 30 for _, _, r in calls)
    assert lat[(2, 1)] == [6.0, 3.0] and ratio[(2, 1)] == [1.0, 0.5]
    assert serial == ["t4 b1"]  # never below the threshold in three tries: named
    calls.clear()
    lat, *_, serial = bench_latency.time_settings(["full", "sub"], None, [1], [16], 10, timer=timer)
    assert calls == [(1, 16, 10)] and not serial


def test_latency_counter_builds_the_full_models_timing_session_once(monkeypatch):
    from otoir import report
    from otoir.optim.from_groups import groups_for

    model = _chain()
    groups = groups_for(model, "zig")
    built: list = []
    real = report.timing_session

    def timing_session(m, sample, **kw):
        built.append(m)
        return real(m, sample, **kw)

    monkeypatch.setattr(report, "timing_session", timing_session)
    counter = L.LatencyCounter(model, groups, min_runs=2, max_runs=2, budget_s=0.001)
    ref = counter.reference
    for sel in ([0], [1], [0, 2]):
        assert 0 < counter(sel) < 10 * counter.full
    counter.confirm([1])
    # the full model once; each selection once, and [1] again to confirm it ([0, 2] was the last timed)
    assert sum(m is ref for m in built) == 1 and len(built) == 1 + 3 + 1
    counter.release()
    counter([2])
    assert sum(m is ref for m in built) == 2  # released: built again on the next comparison
