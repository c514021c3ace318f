"""otoir-demo end to end (--quick): three-column report.json, models, plot; one-line errors."""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")

from otoir.tools.demo import LATENCY_THREADS, PRESETS, RECIPE, main  # noqa: E402


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    rc = main(["--quick", "-q", "--out", str(out)])
    return rc, out


def test_quick_writes_three_column_report(quick_run):
    rc, out = quick_run
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert set(rep) == {"demosupnet", "resnet_basic"}
    for name, r in rep.items():
        assert r["columns"] == ["baseline", "full", "compressed"], name
        base, full, comp = r["baseline"], r["full"], r["compressed"]
        # the dense baseline is the same network as the otoir full model, only trained densely
        assert base["params"] == full["params"] and base["flops"] == full["flops"] and base["nodes"] == full["nodes"]
        assert comp["flops"] < base["flops"] and comp["params"] < base["params"]
        for fig in (base, full, comp):
            assert 0.0 <= fig["accuracy"] <= 1.0
            assert set(fig["latency_at_batch"]) == {"1", "64"}  # batch 1 and the training batch
        d = r["deltas_vs_baseline"]["compressed"]
        assert d["flops_ratio"] == pytest.approx(comp["flops"] / base["flops"])
        assert d["accuracy_pt"] == pytest.approx(100 * (comp["accuracy"] - base["accuracy"]))
        assert r["verified"] is True
        assert r["threads"] == LATENCY_THREADS  # timed as deployed: one thread for a sub-ms network
        # per-epoch history of both runs; the dense run never zeroes a group
        hist = r["history"]
        assert len(hist["dense"]) == len(hist["otoir"]) == PRESETS["quick"]["epochs"]
        assert all(e["group_sparsity"] == 0.0 for e in hist["dense"])
        assert hist["otoir"][-1]["group_sparsity"] > 0.0
        assert all(os.path.isfile(f) for f in r["files"])
    # DemoSupNet reads the digits at 14x14 (its receptive field sees them whole), the ResNet at 28x28
    assert rep["demosupnet"]["details"]["dataset"] == f"{PRESETS['quick']['data']}[:1000]" == "mnist-14[:1000]"
    assert rep["resnet_basic"]["details"]["dataset"] == "mnist[:1000]"
    sub = rep["demosupnet"]["subnetwork"]
    assert sub["valid"] is True and sub["kept"], sub
    # the FLOPs budget of the recipe holds for the erased network (the quick ResNet, width 4 with
    # round-to 8, has too few channels to reach it: most of its tensors have 8 or fewer)
    r = rep["demosupnet"]
    assert r["compressed"]["flops"] <= RECIPE["target_flops"] * r["baseline"]["flops"] + 1e-9


def test_quick_writes_models_and_plot(quick_run):
    rc, out = quick_run
    assert rc == 0
    import onnx

    for stem, comp, side in (("demosupnet", "demosupnet_erased.onnx", 14), ("resnet", "resnet_pruned.onnx", 28)):
        for f in (comp, f"{stem}_full.onnx", f"{stem}_dense.onnx"):
            m = onnx.load(str(out / f))
            onnx.checker.check_model(m, full_check=True)
            dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
            assert dims[1:] == [1, side, side], (f, dims)
    pytest.importorskip("matplotlib")
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_out_is_a_file_is_a_one_line_error(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["--quick", "--out", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a directory" in err and str(f) in err


def test_out_below_a_file_is_a_one_line_error(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["--quick", "--out", str(f / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("otoir-demo: error: --out") and "Traceback" not in err


def test_bad_epochs_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--epochs", "0", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err
