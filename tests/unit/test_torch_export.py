"""Tests of otoir.frontends.torch_export (legacy TRAINING export with state_dict names)."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from torch import nn  # noqa: E402

from otoir.frontends import ExportError, export_torch, parameter_map  # noqa: E402
from otoir.frontends.torch_export import ALIASES_KEY, UNUSED_PARAMETERS_KEY  # noqa: E402
from otoir.testing import session  # noqa: E402
from otoir.zoo import build  # noqa: E402


def _run(model: ir.Model, *inputs: torch.Tensor) -> list[np.ndarray]:
    sess = session(model)
    feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs, strict=True)}
    return sess.run(None, feeds)


class _DropNet(nn.Module):
    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(p)
        self.fc = nn.Linear(4, 3)
        self.pooler = nn.Linear(3, 3)  # never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).mean((2, 3)))


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.proj = nn.Linear(6, 6)
        self.out = nn.Linear(6, 10, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.proj(self.emb(ids))))


@pytest.fixture(scope="module")
def resnet() -> tuple[nn.Module, torch.Tensor, ir.Model]:
    module, x = build("resnet_basic", seed=1)
    return module, x, export_torch(module, x)


def test_every_parameter_maps_to_one_initializer(resnet) -> None:
    module, _, model = resnet
    inits = model.graph.initializers
    sd = module.state_dict()
    expected = {k for k in sd if not k.endswith("num_batches_tracked")}
    assert set(inits) == expected
    mapping = parameter_map(module, model)
    for name, p in module.named_parameters():
        assert mapping[name] == name
        np.testing.assert_array_equal(inits[name].const_value.numpy(), p.detach().numpy())
    assert "layer1.0.conv1.weight" in inits
    assert "layer2.0.downsample.0.weight" in inits
    assert sorted(model.meta[UNUSED_PARAMETERS_KEY]) == sorted(k for k in sd if k.endswith("num_batches_tracked"))


def test_model_contract(resnet) -> None:
    _, _, model = resnet
    assert model.ir_version == 10
    assert model.opset_imports[""] == 17
    assert model.graph.inputs[0].name == "input"
    assert model.graph.outputs[0].name == "output"
    assert isinstance(model.graph.inputs[0].shape[0], ir.SymbolicDim)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


def test_batchnorm_kept_in_training_mode(resnet) -> None:
    _, _, model = resnet
    bns = [n for n in model.graph if n.op_type == "BatchNormalization"]
    assert len(bns) == 20
    for n in bns:
        assert n.attributes["training_mode"].value == 1
        assert len(n.outputs) == 3
    assert not [n for n in model.graph if n.op_type == "Identity"]


def test_matches_torch_train_mode(resnet) -> None:
    module, x, model = resnet
    ref_module = copy.deepcopy(module).train()
    with torch.no_grad():
        ref = ref_module(x).numpy()
    (out,) = _run(model, x)[:1]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_eval_export_matches_torch_eval_and_dynamic_batch() -> None:
    module, x = build("resnet_basic", seed=2)
    model = export_torch(module, x, training=False)
    bns = [n for n in model.graph if n.op_type == "BatchNormalization"]
    assert bns and all(len(n.outputs) == 1 for n in bns)
    # Fresh BNs have identical values; EVAL-mode dedup is undone: every BN reads its own tensors.
    for n in bns:
        prefix = n.inputs[1].name.rsplit(".", 1)[0]
        assert [v.name for v in n.inputs[1:]] == [f"{prefix}.{s}" for s in ("weight", "bias", "running_mean", "running_var")]
    x3 = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = copy.deepcopy(module).eval()(x3).numpy()
    np.testing.assert_allclose(_run(model, x3)[0], ref, rtol=1e-4, atol=1e-5)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


def test_module_untouched() -> None:
    module, x = build("resnet_basic", seed=3)
    module.eval()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    export_torch(module, x)
    assert not module.training
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_dropout_node_kept_and_unused_parameters_listed() -> None:
    torch.manual_seed(0)
    module = _DropNet()
    x = torch.randn(4, 3, 6, 6)
    model = export_torch(module, x)
    drops = [n for n in model.graph if n.op_type == "Dropout"]
    assert len(drops) == 1
    assert sorted(model.meta[UNUSED_PARAMETERS_KEY]) == ["bn.num_batches_tracked", "pooler.bias", "pooler.weight"]
    assert "pooler.weight" not in parameter_map(module, model)
    eval_model = export_torch(module, x, training=False)
    assert not [n for n in eval_model.graph if n.op_type == "Dropout"]


def test_dropout_zero_train_mode_matches_torch() -> None:
    torch.manual_seed(0)
    module = _DropNet(p=0.0)
    x = torch.randn(4, 3, 6, 6)
    model = export_torch(module, x)
    with torch.no_grad():
        ref = copy.deepcopy(module).train()(x).numpy()
    np.testing.assert_allclose(_run(model, x)[0], ref, rtol=1e-4, atol=1e-5)


def test_tied_weights_exported_once() -> None:
    torch.manual_seed(0)
    module = _Tied()
    ids = torch.randint(0, 10, (2, 5))
    model = export_torch(module, ids)
    assert "emb.weight" in model.graph.initializers
    assert "out.weight" not in model.graph.initializers
    assert model.meta[ALIASES_KEY] == {"out.weight": "emb.weight"}
    assert parameter_map(module, model)["out.weight"] == "emb.weight"
    with torch.no_grad():
        ref = module(ids).numpy()
    np.testing.assert_allclose(_run(model, ids)[0], ref, rtol=1e-5, atol=1e-6)


def test_parameter_baked_into_constant_is_an_error() -> None:
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x) + x @ self.b.weight.data.t()

    torch.manual_seed(0)
    with pytest.raises(ExportError, match=r"'b\.weight'"):
        export_torch(Bad(), torch.randn(2, 4))


def test_multiple_inputs_and_outputs_and_names() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.l(x), self.l(y) * 2

    torch.manual_seed(0)
    model = export_torch(Two(), (torch.randn(2, 4), torch.randn(2, 4)))
    assert [v.name for v in model.graph.inputs] == ["input_0", "input_1"]
    assert [v.name for v in model.graph.outputs] == ["output_0", "output_1"]
    named = export_torch(Two(), (torch.randn(2, 4), torch.randn(2, 4)), input_names=["a", "b"], output_names=["p", "q"])
    assert [v.name for v in named.graph.inputs] == ["a", "b"]
    static = export_torch(Two(), (torch.randn(2, 4), torch.randn(2, 4)), dynamic_batch=False)
    assert static.graph.inputs[0].shape[0] == 2


def test_deterministic_bytes() -> None:
    module, x = build("demosupnet", width=0.125)
    a = ir.to_proto(export_torch(module, x)).SerializeToString()
    b = ir.to_proto(export_torch(module, x)).SerializeToString()
    assert a == b


def test_bad_example_inputs() -> None:
    with pytest.raises(TypeError):
        export_torch(nn.Linear(2, 2), "not a tensor")


def test_import_does_not_import_torch() -> None:
    code = "import sys, otoir.frontends, otoir.zoo; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("training", [True, False])
def test_initializers_equal_module_state(training: bool) -> None:
    # The TRAINING export's tracing forward updates the copy's BN running stats; the model
    # must still start from the module's own state.
    module, x = build("resnet_basic", seed=4)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 1.5)
    model = export_torch(module, x, training=training)
    state = module.state_dict()
    for name, value in model.graph.initializers.items():
        np.testing.assert_array_equal(value.const_value.numpy(), state[name].numpy(), err_msg=name)
