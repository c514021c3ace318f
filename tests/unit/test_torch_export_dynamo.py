"""otoir.load(module) through the dynamo exporter: when asked, and when the TorchScript exporter is gone."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

import otoir  # noqa: E402
from otoir.frontends import torch_export  # noqa: E402
from otoir.frontends.torch_export import EXPORTER_KEY, ExportError, export_torch  # noqa: E402
from otoir.runtime import run_model  # noqa: E402
from otoir.train import to_inference  # noqa: E402
from otoir.zoo import build  # noqa: E402


@pytest.fixture(scope="module")
def resnet():
    module, x = build("resnet_basic", batch=2)
    return module, x


def test_dynamo_export_keeps_state_dict_names_and_training_form(resnet):
    module, x = resnet
    legacy = export_torch(module, x, exporter="torchscript")
    dyn = otoir.load(module, x, exporter="dynamo")
    assert dyn.meta[EXPORTER_KEY] == "dynamo" and legacy.meta[EXPORTER_KEY] == "torchscript"
    state = module.state_dict()
    named = {n for n in dyn.graph.initializers if n in state}  # others: folded constants (zero conv biases)
    assert named == set(legacy.graph.initializers)
    for name in named:
        assert np.array_equal(dyn.graph.initializers[name].const_value.numpy(), state[name].numpy()), name
    bns = [n for n in dyn.graph if n.op_type == "BatchNormalization"]
    assert bns and all(n.attributes["training_mode"].as_int() == 1 and len(n.outputs) == 3 for n in bns)
    assert [v.name for v in dyn.graph.inputs] == ["input"] and dyn.graph.inputs[0].shape.dims[0] != 2
    module.eval()
    with torch.no_grad():
        want = module(x).numpy()
    got = run_model(to_inference(dyn), {"input": x.numpy()})[0]
    assert np.max(np.abs(got - want)) <= 1e-4 * max(1.0, float(np.max(np.abs(want))))


def test_auto_uses_dynamo_when_torchscript_is_gone(resnet, monkeypatch):
    module, x = resnet
    assert export_torch(module, x).meta[EXPORTER_KEY] == "torchscript"  # this torch still has it
    monkeypatch.setattr(torch_export, "torchscript_available", lambda: False)
    assert otoir.load(module, x).meta[EXPORTER_KEY] == "dynamo"


def test_compress_torch_backend_without_torchscript(monkeypatch):
    """Training the user's module and copying its state back works on the dynamo export."""
    monkeypatch.setattr(torch_export, "torchscript_available", lambda: False)
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                 torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                 torch.nn.Flatten(), torch.nn.Linear(8, 4))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 3, 8, 8, generator=g), torch.randint(0, 4, (48,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    res = otoir.compress(module, loader, mode="prune", target_sparsity=0.5, epochs=2, progress=False,
                         latency_runs=0)
    assert res.report.verified and res.removed_group_ids
    assert res.report.details["backend"] == "torch"
    trained = module.state_dict()
    full = res.full.graph.initializers
    for name in ("0.weight", "3.weight", "7.weight"):  # the trained module's values reached the ONNX model
        assert np.array_equal(full[name].const_value.numpy(), trained[name].numpy())


def test_exporter_option_is_checked(resnet):
    module, x = resnet
    with pytest.raises(ValueError, match="exporter must be one of"):
        export_torch(module, x, exporter="onnx")


def test_dict_inputs_must_not_skip_forward_arguments():
    class Two(torch.nn.Module):
        def forward(self, a, b, c=None):
            return a + b

    with pytest.raises(ExportError, match="skip Two.forward argument 'a'"):
        export_torch(Two(), {"b": torch.ones(2, 3)})
    model = export_torch(Two(), {"b": torch.ones(2, 3), "a": torch.ones(2, 3)})
    assert [v.name for v in model.graph.inputs] == ["a", "b"]  # forward's order, its names


def test_dynamo_keeps_parameters_read_through_transpose():
    """A Linear on 3-D input is Transpose(weight) + MatMul: folding constants must not fold the weight away."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    x = torch.randn(2, 5, 4)
    model = export_torch(module, x, exporter="dynamo")
    assert {"0.weight", "0.bias", "2.weight", "2.bias"} <= set(model.graph.initializers)
    with torch.no_grad():
        want = module(x).numpy()
    got = run_model(to_inference(model), {"input": x.numpy()})[0]
    assert np.max(np.abs(got - want)) <= 1e-5


def test_auto_falls_back_to_dynamo_when_torchscript_lacks_an_op():
    """torch.nn.RMSNorm (aten::rms_norm) has no TorchScript symbolic at opset 17: ``auto`` warns
    and exports through dynamo; an explicit ``torchscript`` keeps the exporter's error."""
    if not torch_export.torchscript_available():
        pytest.skip("this torch has no TorchScript exporter")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.RMSNorm(16), torch.nn.Linear(16, 4))
    x = torch.randn(2, 8)
    with pytest.warns(UserWarning, match="dynamo exporter instead"):
        model = export_torch(module, x)
    assert model.meta[EXPORTER_KEY] == "dynamo"
    inf = to_inference(model)
    (y,) = run_model(inf, {inf.graph.inputs[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(y, module.eval()(x).numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(torch.onnx.errors.UnsupportedOperatorError):
        export_torch(module, x, exporter="torchscript")
