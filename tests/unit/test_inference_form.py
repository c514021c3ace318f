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


# -- stochastic depth / drop path: written as ops by a training-mode export ----------------------
def _sd_torchvision(x, p: float, training: bool):
    """torchvision's ``stochastic_depth(mode="row")``: a Bernoulli(1-p) mask per sample / (1-p)."""
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    noise = torch.empty([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype).bernoulli_(keep)
    if keep > 0.0:
        noise.div_(keep)
    return x * noise


def _dp_floor(x, p: float, training: bool):
    """The older timm / Hugging Face ``drop_path``: ``x.div(keep) * floor(keep + U)``."""
    if not training or p == 0.0:
        return x
    keep = 1 - p
    r = keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype)
    r.floor_()
    return x.div(keep) * r


class _Residual(torch.nn.Module):
    def __init__(self, drop) -> None:
        super().__init__()
        self.drop = drop
        self.c1 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.c2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        x = x + self.drop(torch.relu(self.c1(x)), 0.3, self.training)
        x = x + self.drop(self.c2(x), 0.5, self.training)  # two in a row, operand orders differ
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("drop", [_sd_torchvision, _dp_floor])
def test_stochastic_depth_is_identity_at_inference(drop):
    from otoir.train.inference import random_ops

    torch.manual_seed(0)
    m = _Residual(drop)
    x = torch.randn(2, 4, 6, 6)
    model = export_torch(m, x)
    assert len(random_ops(model)) == 2 and not is_inference_form(model)
    inf = to_inference(model)
    assert random_ops(inf) == [] and is_inference_form(inf)
    assert not any(n.op_type in ("Less", "Floor", "ConstantOfShape") for n in inf.graph)  # the masks are gone
    with torch.no_grad():
        want = m.eval()(x).numpy()
    got = run_ort(inf, {inf.graph.inputs[0].name: x.numpy()})[0]
    assert np.allclose(got, want, atol=1e-5)
    # deterministic: two sessions agree exactly
    assert np.array_equal(got, run_ort(inf, {inf.graph.inputs[0].name: x.numpy()})[0])


def test_other_random_ops_stay_and_the_deployment_form_warns():
    from otoir.infra.pass_manager import PassManager
    from otoir.train.inference import random_ops

    text = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N,4] mu) => (float[N,4] z)
<float[4] sigma = {1, 2, 3, 4}>
{
  eps = RandomNormalLike (mu)
  s = Mul (eps, sigma)
  z = Add (mu, s)
}"""
    model = ir.from_onnx_text(text)
    inf = to_inference(model)
    assert [n.op_type for n in random_ops(inf)] == ["RandomNormalLike"]  # a VAE's sample is not a drop path
    res = PassManager.from_text("to-deployment").run(inf)
    assert any(d.severity.name.lower() == "warning" and "RandomNormalLike" in d.message and "random" in d.message
               for d in res.diagnostics)
