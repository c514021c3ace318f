"""Reports and verification on real-model inputs: fixed batch > 1, several inputs, int inputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import otoir
from otoir.report import batch_feeds, build_report, fixed_batch, random_inputs
from otoir.testing import cli

PRUNE = "classify-vertices,partition-zig,zero-groups{kind=zig random=0.5 seed=1},prune-channels,cleanup"


def _two_input_model(path, batch: int | str = 4) -> str:
    """x: float[B,8] and ids: int64[B,5] -> embedding mean + MatMul -> Relu -> MatMul -> Relu -> MatMul -> y[B,3]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("emb", (10, 16)), ("w1", (8, 16)), ("b1", (16,)), ("w3", (16, 12)), ("w2", (12, 3)))]
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"], name="gather"),
        helper.make_node("ReduceMean", ["e"], ["em"], name="mean", axes=[1], keepdims=0),
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="bias1"),
        helper.make_node("Add", ["h1", "em"], ["h2"], name="join"),
        helper.make_node("Relu", ["h2"], ["h3"], name="relu"),
        helper.make_node("MatMul", ["h3", "w3"], ["h4"], name="mm3"),
        helper.make_node("Relu", ["h4"], ["h5"], name="relu2"),
        helper.make_node("MatMul", ["h5", "w2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(nodes, "two_inputs",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8]),
                               helper.make_tensor_value_info("ids", TensorProto.INT64, [batch, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return str(path)



@pytest.mark.parametrize("pipeline", ["cleanup", PRUNE])
def test_report_and_verify_static_batch4_two_inputs(tmp_path, pipeline):
    src = _two_input_model(tmp_path / "m.onnx")
    rep = tmp_path / "r.json"
    code, _, err = cli(src, "-p", pipeline, "--report", "--report-json", str(rep), "--verify", "-q",
                       "-o", str(tmp_path / "o.onnx"))
    assert code == 0, err
    assert "ORT CPU latency, batch 4" in err
    import onnxruntime

    assert f"ONNX Runtime {onnxruntime.__version__} CPUExecutionProvider" in err and "intra-op threads" in err
    data = json.loads(rep.read_text())
    assert data["verified"] is True and data["max_rel_diff"] <= 1e-4
    assert data["full"]["latency_batch"] == 4 and data["full"]["latency_ms"] > 0
    assert data["compressed"]["latency_ms"] > 0
    assert data["provider"] == "CPUExecutionProvider" and data["threads"] >= 1
    assert data["runtime_version"] == onnxruntime.__version__
    if pipeline == PRUNE:
        assert data["compressed"]["params"] < data["full"]["params"]


def test_verify_static_batch4_catches_a_change(tmp_path):
    """--verify on a fixed-batch two-input model still fails when outputs change."""
    src = _two_input_model(tmp_path / "m.onnx")
    m = otoir.load(src)
    out = tmp_path / "o.onnx"
    code, _, err = cli(src, "-p", "cleanup", "--verify", "-q", "-o", str(out))
    assert code == 0, err
    full = otoir.load(src)
    w2 = full.graph.initializers["w2"]
    import onnx_ir as ir

    w2.const_value = ir.tensor(w2.const_value.numpy() * 2.0)
    feeds = random_inputs(m)
    rep = build_report(m, full, verify_inputs=feeds, latency_runs=0)
    assert rep.verified is False and rep.max_rel_diff > 1e-4


def test_dynamic_batch_latency_at_batch_1(tmp_path):
    src = _two_input_model(tmp_path / "m.onnx", batch="N")
    code, _, err = cli(src, "-p", "cleanup", "--report", "--verify", "-q", "-o", str(tmp_path / "o.onnx"))
    assert code == 0, err
    assert "ORT CPU latency, batch 1" in err


def test_batch_feeds_and_random_inputs(tmp_path):
    m = otoir.load(_two_input_model(tmp_path / "m.onnx", batch=4))
    assert fixed_batch(m) == 4
    feeds = random_inputs(m, rows=6)  # whole batches: 8 rows
    assert feeds["x"].shape == (8, 8) and feeds["ids"].shape == (8, 5)
    assert feeds["x"].dtype == np.float32 and feeds["ids"].dtype == np.int64
    cut = batch_feeds(m, feeds, 1)  # a fixed axis 0 keeps its size whatever the batch asked
    assert cut["x"].shape == (4, 8) and cut["ids"].shape == (4, 5)
    dyn = otoir.load(_two_input_model(tmp_path / "d.onnx", batch="N"))
    assert fixed_batch(dyn) is None
    assert batch_feeds(dyn, feeds, 3)["ids"].shape == (3, 5)
    assert batch_feeds(dyn, {"x": feeds["x"][:2], "ids": feeds["ids"][:2]}, 5)["x"].shape == (5, 8)  # cycled
    with pytest.raises(otoir.errors.InputError):
        batch_feeds(dyn, feeds["x"], 1)


@pytest.mark.parametrize("ratios, warned", [((1.0, 1.5), True), ((1.0, 1.02), False), ((1.0, 0.6), False)])
def test_report_warns_when_the_compressed_model_is_slower(tmp_path, monkeypatch, ratios, warned):
    """A compressed model measured slower than the full one (beyond the noise margin) gets a
    warning naming the ratio and batch, and the usual remedy."""
    from otoir import report as report_mod

    monkeypatch.setattr(report_mod, "measure_latency", lambda models, sample, **kw: list(ratios))
    m = otoir.load(_two_input_model(tmp_path / "m.onnx", batch="N"))
    rep = build_report(m, m, verify_inputs=random_inputs(m, rows=4), latency_runs=5)
    if warned:
        w = rep.details["warning"]
        assert "slower than the full model (1.50x at batch 1)" in w and "round-to" in w
        assert "warning: the compressed model is slower" in rep.to_text()
    else:
        assert "warning" not in rep.details


def test_turn_ratios_pair_each_run_with_the_full_models_in_its_turn():
    """Slow spells that last a turn (up to 3x) slow both sides of a pair: the median of the
    paired ratios recovers the true 0.5 where each model's own times spread from 1x to 3x."""
    from otoir.report import turn_ratios

    rng = np.random.default_rng(0)
    spell = np.repeat(rng.uniform(1.0, 3.0, 12), 5)  # 12 turns of 5 runs
    full = 10.0 * spell * rng.uniform(0.98, 1.02, 60)
    sub = 5.0 * spell * rng.uniform(0.98, 1.02, 60)
    r = turn_ratios(np.stack([full, sub]))
    assert r.shape == (2, 60)
    np.testing.assert_allclose(r[0], 1.0)
    np.testing.assert_allclose(r[1], sub / full)
    assert np.median(r[1]) == pytest.approx(0.5, rel=0.02)
    assert full.max() / full.min() > 2.0  # the spread the pairing removed
    np.testing.assert_allclose(turn_ratios(np.stack([np.zeros(2), np.ones(2)]))[1], 1e9)  # no division by zero


def test_report_says_when_flops_are_lower_bounds(tmp_path, monkeypatch):
    """A node with a FLOP formula but no static shape is counted as 0: the report says so."""
    import dataclasses
    import importlib

    S = importlib.import_module("otoir.stats")  # the module (otoir.stats is also the function)

    m = otoir.load(_two_input_model(tmp_path / "m.onnx"))
    real = S.stats

    def partial(model, analyses=None):
        st = real(model, analyses)
        return dataclasses.replace(st, uncounted=("a_node",)) if model is m else st

    monkeypatch.setattr(S, "stats", partial)
    sub = otoir.load(tmp_path / "m.onnx")
    rep = build_report(m, sub, latency_runs=0)
    assert rep.full.flops_uncounted == 1 and rep.compressed.flops_uncounted == 0
    assert rep.details["flops"] == ("FLOPs are lower bounds: 1 node(s) of the full model have no static shape, "
                                    "so their FLOPs are not counted")
    assert "FLOPs are lower bounds" in rep.to_text()
    assert "flops" not in build_report(sub, sub, latency_runs=0).details
    assert "flops" not in build_report(sub, sub, baseline=m, latency_runs=0).details  # the baseline is not named
