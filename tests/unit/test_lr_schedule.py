"""Learning-rate schedules (TrainConfig.lr_at), per-epoch history, the dense baseline and its report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from otoir.errors import PipelineError
from otoir.infra import PassManager
from otoir.report import CompressReport, ModelFigures
from otoir.train.config import TrainConfig


def test_constant_schedule_is_the_lr():
    cfg = TrainConfig(lr=0.01)
    assert [cfg.lr_at(s, 100) for s in (0, 50, 99)] == [0.01, 0.01, 0.01]


def test_cosine_with_warmup_rises_then_anneals():
    cfg = TrainConfig(lr=0.1, lr_schedule="cosine", lr_warmup=0.1)
    total = 200
    lrs = [cfg.lr_at(s, total) for s in range(total)]
    warm = cfg.lr_warmup_steps(total)
    assert warm == 20
    assert lrs[:warm] == pytest.approx([0.1 * (s + 1) / warm for s in range(warm)])  # linear, reaching lr
    assert lrs[warm] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1:], strict=False))  # never increases after it
    assert 0 < lrs[-1] < 0.1 * 1e-3
    mid = warm + (total - warm) // 2
    assert lrs[mid] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * (mid - warm) / (total - warm))))


def test_warmup_is_a_fraction_or_a_step_count():
    assert TrainConfig(lr_warmup=0.25).lr_warmup_steps(40) == 10
    assert TrainConfig(lr_warmup=7).lr_warmup_steps(40) == 7
    assert TrainConfig(lr_warmup=500).lr_warmup_steps(40) == 40  # capped at the run


@pytest.mark.parametrize(("kw", "msg"), [({"lr_schedule": "step"}, "lr-schedule must be one of"),
                                          ({"lr_warmup": -1.0}, "lr-warmup must be >= 0")])
def test_bad_schedule_options(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**kw)


def test_schedule_options_in_pipeline_text():
    pm = PassManager.from_text("otoir-erase{lr-schedule=cosine lr-warmup=0.05 history=true}")
    p = pm.passes[0]
    assert (p.lr_schedule, p.lr_warmup, p.history) == ("cosine", 0.05, True)
    assert p.train_pass().lr_schedule == "cosine"
    with pytest.raises(PipelineError, match="lr-schedule"):
        PassManager.from_text("train{lr-schedule=linear}")


def _tiny_dataset(n=128, seed=0):
    from otoir.data import Dataset, load_dataset

    ds = load_dataset("mnist")
    rng = np.random.default_rng(seed)
    tr = rng.choice(len(ds.train_x), n, replace=False)
    va = rng.choice(len(ds.val_x), 64, replace=False)
    return Dataset(ds.train_x[tr], ds.train_y[tr], ds.val_x[va], ds.val_y[va], ds.num_classes, f"mnist-{n}")


def test_torch_backend_follows_the_schedule_and_records_history():
    torch = pytest.importorskip("torch")
    from otoir.frontends.torch_export import export_torch
    from otoir.optim.from_groups import groups_for
    from otoir.train.torch_backend import train_torch
    from otoir.zoo import build

    torch.manual_seed(0)
    module, _ = build("resnet_basic", width=4, in_channels=1)
    ds = _tiny_dataset()
    groups = groups_for(export_torch(module, torch.from_numpy(ds.train_x[:2])), "zig")
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(ds.train_x), torch.from_numpy(ds.train_y)), batch_size=32,
        shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(lr=0.01, lr_schedule="cosine", lr_warmup=2, target_sparsity=0.0)
    seen: list[float] = []
    res = train_torch(module, loader, torch.nn.functional.cross_entropy, groups, optimizer="dhspg", epochs=2,
                      progress=False, lr_at=lambda s, t: seen.append(cfg.lr_at(s, t)) or seen[-1],
                      on_epoch=lambda m: 0.5, **cfg.optimizer_kwargs(8))
    assert res.steps == 8 and seen == [cfg.lr_at(s, 8) for s in range(8)]
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert [h["lr"] for h in res.history] == [seen[3], seen[7]]  # the epoch's last step
    assert all(h["accuracy"] == 0.5 and h["group_sparsity"] == 0.0 for h in res.history)


def test_ort_train_pass_follows_the_schedule_and_records_history():
    pytest.importorskip("onnxruntime.training")
    torch = pytest.importorskip("torch")
    import otoir
    from otoir.train.config import TrainInputs
    from otoir.zoo import build

    torch.manual_seed(0)
    module, _ = build("resnet_basic", width=4, in_channels=1)
    ds = _tiny_dataset()
    model = otoir.load(module, torch.from_numpy(ds.train_x[:2]))
    pm = PassManager.from_text(f"normalize-export,classify-vertices,partition-zig,train{{data={ds.name} "
                               "groups=zig epochs=2 batch=32 lr=0.01 lr-schedule=cosine lr-warmup=2 history=true "
                               "quiet=true backend=ort}")
    run = pm.run(model, resources={TrainInputs.KEY: TrainInputs(datasets=(ds,))})
    ep = run.results_of("train")[-1]["epochs"]
    cfg = TrainConfig(lr=0.01, lr_schedule="cosine", lr_warmup=2)
    assert [e["epoch"] for e in ep] == [1, 2]
    assert [e["lr"] for e in ep] == pytest.approx([cfg.lr_at(3, 8), cfg.lr_at(7, 8)])
    assert all(0.0 <= e["accuracy"] <= 1.0 for e in ep)
    assert ep[-1]["group_sparsity"] == pytest.approx(0.5, abs=0.01)


def _fig(params, flops, acc, lat1, lat64):
    return ModelFigures(params=params, flops=flops, accuracy=acc, latency_ms=lat1, nodes=10, latency_batch=1,
                        latency_at_batch={1: lat1, 64: lat64})


def test_report_three_columns_and_deltas_against_the_dense_baseline():
    rep = CompressReport(full=_fig(1000, 2000, 0.97, 1.0, 40.0), compressed=_fig(400, 900, 0.97, 0.5, 16.0),
                         baseline=_fig(1000, 2000, 0.98, 1.2, 48.0))
    text = rep.to_text()
    head = text.splitlines()[0]
    assert "dense baseline" in head and "otoir full" in head and "otoir compressed" in head
    assert "-1.00 pt" in text and "0.450x" in text  # accuracy in points, FLOPs as a ratio, both vs dense
    assert any(line.startswith("ORT CPU latency, batch 64") for line in text.splitlines())
    d = rep.to_dict()
    assert d["columns"] == ["baseline", "full", "compressed"]
    assert d["deltas_vs_baseline"]["compressed"]["flops_ratio"] == pytest.approx(0.45)
    assert d["deltas_vs_baseline"]["compressed"]["latency_ratio_batch64"] == pytest.approx(16 / 48)
    assert d["deltas_vs_baseline"]["full"]["accuracy_pt"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="3 columns need 3 labels"):
        rep.to_text(labels=("a", "b"))


def test_report_without_baseline_keeps_two_columns():
    rep = CompressReport(full=_fig(1000, 2000, 0.9, 1.0, 40.0), compressed=_fig(400, 900, 0.9, 0.5, 16.0))
    assert rep.to_dict()["columns"] == ["full", "compressed"]
    assert rep.to_text().splitlines()[0].split()[-1] == "ratio"
    with pytest.raises(ValueError, match="no dense baseline"):
        rep.deltas(rep.full)


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_dense_baseline_same_budget_and_deterministic(backend):
    torch = pytest.importorskip("torch")
    if backend == "ort":
        pytest.importorskip("onnxruntime.training")
    import otoir
    from otoir.zoo import build

    ds = _tiny_dataset(n=96)

    def once():
        torch.manual_seed(0)
        module, _ = build("resnet_basic", width=4, in_channels=1)
        ex = torch.from_numpy(ds.train_x[:2])
        src = module if backend == "torch" else otoir.load(module, ex)
        return otoir.compress(src, ds, mode="prune", epochs=1, batch=32, lr=1e-3, variant="adam", backend=backend,
                              example_inputs=ex, progress=False, latency_runs=0, lr_schedule="cosine",
                              lr_warmup=0.1, history=True, dense_baseline=True)

    a, b = once(), once()
    ra = a.report
    assert ra.baseline is not None and a.baseline is not None
    assert (ra.baseline.params, ra.baseline.flops) == (ra.full.params, ra.full.flops)
    assert ra.compressed.flops < ra.baseline.flops
    assert [e["group_sparsity"] for e in a.history["dense"]] == [0.0]
    assert a.history["otoir"][-1]["group_sparsity"] > 0
    # identical budget: same steps and lr schedule as the otoir run
    assert [e["lr"] for e in a.history["dense"]] == [e["lr"] for e in a.history["otoir"]]
    # deterministic under the seed
    assert a.zero_group_ids == b.zero_group_ids
    assert (ra.baseline.accuracy, ra.full.accuracy) == (b.report.baseline.accuracy, b.report.full.accuracy)
    from otoir.testing import run_ort

    x = ds.val_x[:8]
    ya = run_ort(a.baseline, {a.baseline.graph.inputs[0].name: x})[0]
    yb = run_ort(b.baseline, {b.baseline.graph.inputs[0].name: x})[0]
    np.testing.assert_array_equal(ya, yb)
