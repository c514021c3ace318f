"""to_inference: training-mode BatchNorm / Dropout become their inference forms, values untouched."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from otoir.frontends.torch_export import export_torch  # noqa: E402
from otoir.testing import run_ort  # noqa: E402
from otoir.train.inference import InferenceFormError, is_inference_form, to_inference  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self, dropout_last: bool = False) -> None:
        super().__init__()
        self.c = torch.nn.Conv2d(2, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.d1 = torch.nn.Dropout(0.5)
        self.fc = torch.nn.Linear(4, 3)
        self.d2 = torch.nn.Dropout(0.3) if dropout_last else torch.nn.Identity()

    def forward(self, x):
        return self.d2(self.fc(self.d1(torch.relu(self.bn(self.c(x))).mean((2, 3)))))


def _export(dropout_last: bool = False):
    torch.manual_seed(0)
    m = Net(dropout_last)
    with torch.no_grad():  # non-trivial running statistics
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    model = export_torch(m, torch.randn(2, 2, 6, 6))
    inits = model.graph.initializers
    m.load_state_dict({k: torch.from_numpy(inits[k].const_value.numpy().copy()) for k in m.state_dict() if k in inits},
                      strict=False)
    return m, model


def _ops(model):
    return [n.op_type for n in model.graph]


@pytest.mark.parametrize("dropout_last", [False, True])
def test_inference_form_equals_torch_eval(dropout_last):
    m, model = _export(dropout_last)
    assert "Dropout" in _ops(model) and not is_inference_form(model)
    inf = to_inference(model)
    assert is_inference_form(inf)
    assert "Dropout" not in _ops(inf)
    for node in inf.graph:
        if node.op_type == "BatchNormalization":
            assert len(node.outputs) == 1
            assert node.attributes.get("training_mode") is None or node.attributes["training_mode"].as_int() == 0
    assert [v.name for v in inf.graph.outputs] == [v.name for v in model.graph.outputs]
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6)).astype(np.float32)
    m.eval()
    want = m(torch.from_numpy(x)).detach().numpy()
    got = run_ort(inf, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # the training form normalises with batch statistics, so it differs
    train_out = run_ort(model, {"input": x})[0]
    assert np.abs(train_out - want).max() > 1e-3


def test_values_unchanged_and_original_untouched():
    _, model = _export()
    ops_before = _ops(model)
    inf = to_inference(model)
    assert _ops(model) == ops_before  # copy=True leaves the input alone
    assert list(inf.graph.initializers) == list(model.graph.initializers)
    for name, v in model.graph.initializers.items():
        np.testing.assert_array_equal(inf.graph.initializers[name].const_value.numpy(), v.const_value.numpy())


def test_in_place_and_idempotent():
    _, model = _export()
    out = to_inference(model, copy=False)
    assert out is model and is_inference_form(model)
    ops = _ops(model)
    to_inference(model, copy=False)
    assert _ops(model) == ops


def test_used_running_stat_output_is_an_error():
    text = """
    <ir_version: 10, opset_import: ["" : 17]>
    g (float[2,3] x) => (float[2,3] y, float[3] rm) <float[3] s = {1.,1.,1.}, float[3] b = {0.,0.,0.},
                                                     float[3] m = {0.,0.,0.}, float[3] v = {1.,1.,1.}> {
        y, rm, rv = BatchNormalization <training_mode: int = 1> (x, s, b, m, v)
    }
    """
    model = ir.from_onnx_text(text)
    with pytest.raises(InferenceFormError, match="running-statistics output"):
        to_inference(model)
