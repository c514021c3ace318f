"""normalize-export: ordinary torch exports of one ResNet give otoir's groups and verify after pruning."""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import otoir  # noqa: E402
from otoir.tools.otoir_opt import main  # noqa: E402
from otoir.zoo import build  # noqa: E402

BATCH = 2
#: A dynamic batch dimension (a fixed one is a separate matter: training and --verify run other batch sizes).
DYN = {"input_names": ["x"], "dynamic_axes": {"x": {0: "N"}}}
FORMS = ["eval-folded", "train-legacy", "otoir-load", "dynamo", "otoir-load-dynamo"]


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The same small ResNet exported each way, plus a tiny dataset of its input shape."""
    d = tmp_path_factory.mktemp("exports")
    module, x = build("resnet_basic", batch=BATCH)
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.eval()
        torch.onnx.export(module, x, d / "eval.onnx", dynamo=False, do_constant_folding=True, **DYN)
        paths["eval-folded"] = d / "eval.onnx"
        module.train()
        torch.onnx.export(module, x, d / "train.onnx", dynamo=False, do_constant_folding=False,
                          training=torch.onnx.TrainingMode.TRAINING, **DYN)
        paths["train-legacy"] = d / "train.onnx"
        otoir.save(otoir.load(module, x), d / "otoir.onnx")
        paths["otoir-load"] = d / "otoir.onnx"
        otoir.save(otoir.load(module, x, exporter="dynamo"), d / "otoir-dynamo.onnx")
        paths["otoir-load-dynamo"] = d / "otoir-dynamo.onnx"
        module.eval()  # onnxscript is a dependency of the torch extra: the dynamo form is never skipped
        torch.onnx.export(module, (x,), d / "dynamo.onnx", dynamo=True, dynamic_shapes=({0: torch.export.Dim("N")},))
        paths["dynamo"] = d / "dynamo.onnx"
    rng = np.random.default_rng(0)
    shape = tuple(x.shape[1:])
    np.savez(d / "data.npz", inputs=rng.standard_normal((16, *shape)).astype(np.float32),
             labels=rng.integers(0, 10, 16), val_inputs=rng.standard_normal((8, *shape)).astype(np.float32),
             val_labels=rng.integers(0, 10, 8))
    return paths, d / "data.npz", d


def _path(exports, form):
    return exports[0][form]


def _groups(path, tmp, pipeline) -> tuple[int, int]:
    code, _, err = cli(str(path), "-p", f"{pipeline}partition-zig,print-groups", "-q", "-o", str(tmp / "g.onnx"))
    assert code == 0, err
    m = re.search(r"print-groups: (\d+) zig \((\d+) prunable\)", err)
    assert m, err
    return int(m.group(1)), int(m.group(2))


def test_eval_export_loses_groups_without_normalisation(exports):
    """The problem the pass fixes: the folded eval export has fewer prunable groups."""
    _, _, d = exports
    raw = _groups(exports[0]["eval-folded"], d, "")
    normalised = _groups(exports[0]["eval-folded"], d, "normalize-export,")
    assert raw[1] < normalised[1]


@pytest.mark.parametrize("form", FORMS)
def test_same_groups_after_normalisation(exports, form):
    path = _path(exports, form)
    _, _, d = exports
    reference = _groups(exports[0]["otoir-load"], d, "normalize-export,")
    assert _groups(path, d, "normalize-export,") == reference


@pytest.mark.parametrize("form", FORMS)
def test_prune_verifies(exports, form, tmp_path):
    path = _path(exports, form)
    data = exports[1]
    pipe = f"otoir-prune{{data={data} epochs=1 batch={BATCH} target-sparsity=0.3 quiet=true}}"
    code, _, err = cli(str(path), "-p", pipe, "--verify", "-q", "-o", str(tmp_path / "out.onnx"))
    assert code == 0, err
    assert _param_count(tmp_path / "out.onnx") < _param_count(path)


def _param_count(path) -> int:
    """Initializer elements (a dynamo export keeps its weights in a separate .data file)."""
    return sum(int(np.prod(v.shape.dims)) for v in otoir.load(path).graph.initializers.values())


@pytest.fixture(scope="module")
def eval_bn(tmp_path_factory):
    """An eval-mode export that keeps a BatchNormalization (the exporter fuses Conv+BN, not Linear+BN)."""
    d = tmp_path_factory.mktemp("evalbn")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 16), torch.nn.BatchNorm1d(16),
                                 torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    x = torch.randn(BATCH, 3, 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, x, d / "m.onnx", dynamo=False, do_constant_folding=True, **DYN)
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", inputs=rng.standard_normal((16, 3, 2, 2)).astype(np.float32),
             labels=rng.integers(0, 3, 16), val_inputs=rng.standard_normal((8, 3, 2, 2)).astype(np.float32),
             val_labels=rng.integers(0, 3, 8))
    return d / "m.onnx", d / "data.npz"


def test_eval_batchnorm_restored_to_training_form(eval_bn, tmp_path):
    src, data = eval_bn
    before = [n for n in otoir.load(src).graph if n.op_type == "BatchNormalization"]
    assert before and all(len(n.outputs) == 1 for n in before)
    out = tmp_path / "n.onnx"
    code, _, err = cli(str(src), "-p", "normalize-export", "-q", "-o", str(out))
    assert code == 0, err
    bns = [n for n in otoir.load(out).graph if n.op_type == "BatchNormalization"]
    assert len(bns) == len(before)
    assert all(len(n.outputs) == 3 and n.attributes["training_mode"].as_int() == 1 for n in bns)
    pipe = f"otoir-prune{{data={data} epochs=1 batch={BATCH} target-sparsity=0.3 quiet=true}}"
    code, _, err = cli(str(src), "-p", pipe, "--verify", "-q", "-o", str(tmp_path / "p.onnx"))
    assert code == 0, err


def test_eval_folded_has_no_identity_fed_parameters_after(exports, tmp_path):
    out = tmp_path / "n.onnx"
    code, _, err = cli(str(exports[0]["eval-folded"]), "-p", "normalize-export", "-q", "-o", str(out))
    assert code == 0, err
    graph = otoir.load(out).graph
    assert not [n for n in graph if n.op_type == "Identity" and n.inputs[0].name in graph.initializers]
    biases = [n.inputs[2].name for n in graph if n.op_type == "Conv" and len(n.inputs) > 2]
    assert biases and len(set(biases)) == len(biases)


def test_fixed_affine_warning_when_not_restored(eval_bn, tmp_path):
    code, _, err = cli(str(eval_bn[0]), "-p", "normalize-export{bn-training=false}", "-o", str(tmp_path / "n.onnx"))
    assert code == 0, err
    assert "train as a fixed affine" in err and "model.train()" in err and "otoir.load(module)" in err
