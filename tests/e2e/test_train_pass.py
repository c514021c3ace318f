"""The ``train`` pass on the shipped MNIST subset: only initializer values change."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime.training")

from otoir.errors import PassFailure  # noqa: E402
from otoir.frontends.torch_export import export_torch  # noqa: E402
from otoir.infra import PassManager  # noqa: E402
from otoir.train import evaluate  # noqa: E402


def _model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, 2, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10),
    )
    return export_torch(m, torch.randn(2, 1, 28, 28))


def _structure(model):
    g = model.graph
    nodes = [(n.op_type, n.name, [v.name if v else None for v in n.inputs], [v.name for v in n.outputs],
              sorted(n.attributes)) for n in g]
    inits = [(k, tuple(v.const_value.shape), v.const_value.dtype) for k, v in g.initializers.items()]
    io = ([v.name for v in g.inputs], [v.name for v in g.outputs])
    return nodes, inits, io


def _values(model):
    return {k: v.const_value.numpy().copy() for k, v in model.graph.initializers.items()}


PIPE = "train{batch=64 lr=0.1 max-steps=60 seed=3 threads=1 quiet=true}"


def test_train_changes_only_initializer_values_and_learns(capfd):
    model = _model()
    struct, before = _structure(model), _values(model)
    from otoir.data import load_dataset

    val = load_dataset("mnist")
    acc0 = evaluate(model, val.val_x, val.val_y).accuracy
    res = PassManager.from_text(PIPE).run(model)
    assert res.changed
    assert _structure(model) == struct
    after = _values(model)
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert set(changed) == set(before)  # every parameter and running statistic moved
    stats = res.statistics[0][1]
    assert stats["steps"] == 60
    assert stats["val-accuracy"] > max(0.3, acc0 + 0.1)
    assert stats["samples-per-second"] > 0
    assert "samples/s" not in capfd.readouterr().err  # quiet: no progress bar


def test_train_is_deterministic_under_seed():
    a, b = _model(), _model()
    PassManager.from_text(PIPE.replace("max-steps=60", "max-steps=10")).run(a)
    PassManager.from_text(PIPE.replace("max-steps=60", "max-steps=10")).run(b)
    va, vb = _values(a), _values(b)
    for k in va:
        np.testing.assert_array_equal(va[k], vb[k], err_msg=k)
    c = _model()
    PassManager.from_text(PIPE.replace("max-steps=60", "max-steps=10").replace("seed=3", "seed=4")).run(c)
    assert not np.array_equal(_values(c)["0.weight"], va["0.weight"])


def test_progress_bar_goes_to_stderr(capfd):
    model = _model()
    PassManager.from_text("train{max-steps=3 threads=1}").run(model)
    out = capfd.readouterr()
    assert "samples/s" in out.err and "loss=" in out.err
    assert out.out == ""


def test_bad_data_path_names_the_file(tmp_path):
    bad = tmp_path / "missing.npz"
    with pytest.raises(PassFailure) as info:
        PassManager.from_text(f"train{{data={bad} quiet=true}}").run(_model())
    assert "missing.npz" in str(info.value) + "".join(str(d) for d in getattr(info.value, "diagnostics", []))


def test_input_shape_mismatch_is_reported(tmp_path):
    p = tmp_path / "small.npz"
    np.savez(p, inputs=np.zeros((4, 1, 8, 8), np.uint8), labels=np.zeros(4, np.int64))
    with pytest.raises(PassFailure) as info:
        PassManager.from_text(f"train{{data={p} quiet=true}}").run(_model())
    assert "(1, 8, 8)" in str(info.value) + "".join(str(d) for d in getattr(info.value, "diagnostics", []))


def test_structured_optimizer_reaches_exact_group_sparsity():
    from otoir.analyses.groups import group_is_zero
    from otoir.optim.from_groups import groups_for

    model = _model()
    struct = _structure(model)
    res = PassManager.from_text(
        "train{optimizer=dhspg batch=64 lr=0.1 max-steps=40 warmup=10 projection=10 target-sparsity=0.5 "
        "threads=1 quiet=true}").run(model)
    assert _structure(model) == struct  # values only
    groups = groups_for(model, "zig", res.analyses)
    zero = sum(group_is_zero(model, g) for g in groups)
    assert zero == len(groups) // 2  # exactly the target
    assert res.statistics[0][1]["group-sparsity"] == pytest.approx(zero / len(groups))


def test_structured_optimizer_schedule_error_is_clear():
    with pytest.raises(PassFailure) as info:
        PassManager.from_text("train{optimizer=dhspg max-steps=10 warmup=8 projection=8 quiet=true}").run(_model())
    assert "exceed the 10 training steps" in str(info.value)