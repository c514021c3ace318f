"""Tests of otoir.zoo: every torch model exports and runs identically in ONNX Runtime; random DAGs."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from otoir.testing import session
from otoir.zoo import MODELS, PRUNING_NETWORKS, SUPERNETS, ZooEntry, names
from otoir.zoo.random_dag import random_conv_dag

ort = pytest.importorskip("onnxruntime")

EXPORTED = [n for n in MODELS if n != "resnet18_cifar"]


def test_registry_shape() -> None:
    assert set(SUPERNETS) | set(PRUNING_NETWORKS) == set(MODELS)
    assert names() == list(MODELS)
    for name, entry in MODELS.items():
        assert isinstance(entry, ZooEntry)
        factory, shape, description = entry
        assert callable(factory) and shape[0] == 2 and description, name


def test_zoo_import_is_torch_free() -> None:
    code = (
        "import sys, otoir.zoo, otoir.zoo.random_dag, otoir.zoo.strategies\n"
        "assert 'torch' not in sys.modules and 'hypothesis' not in sys.modules\n"
        "otoir.zoo.random_dag.random_conv_dag(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------
# torch models


def _torch():
    return pytest.importorskip("torch")


def _no_dropout(module):
    nn = _torch().nn
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return module


@pytest.mark.parametrize("name", EXPORTED)
def test_zoo_model_exports_and_matches_torch(name: str) -> None:
    torch = _torch()
    from otoir.frontends import export_torch, parameter_map
    from otoir.zoo import build

    module, x = build(name)
    params = dict(module.named_parameters())
    assert 0 < sum(p.numel() for p in params.values()) <= 1_000_000

    # Eval mode: running statistics, no dropout; batch 3 checks the symbolic batch dimension.
    x3 = build(name, batch=3)[1]
    model = export_torch(module, x, training=False)
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    with torch.no_grad():
        ref = copy.deepcopy(module).eval()(x3).numpy()
    out = session(proto).run(None, {"input": x3.numpy()})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))

    # Training mode (the mode otoir analyses): batch statistics; dropout set to 0 to compare.
    module = _no_dropout(module)
    model = export_torch(module, x)
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    assert all(n.attributes["training_mode"].value == 1 for n in model.graph if n.op_type == "BatchNormalization")
    assert set(parameter_map(module, model)) >= set(params)
    with torch.no_grad():
        ref = copy.deepcopy(module).train()(x).numpy()
    out = session(proto).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


def test_build_is_deterministic() -> None:
    torch = _torch()
    from otoir.zoo import build

    (a, xa), (b, xb) = build("superresnet", seed=7), build("superresnet", seed=7)
    assert torch.equal(xa, xb)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    c, _ = build("superresnet", seed=8)
    assert not torch.equal(a.stem[0].weight, c.stem[0].weight)


def test_build_unknown_name() -> None:
    _torch()
    from otoir.zoo import build

    with pytest.raises(KeyError, match="known"):
        build("nope")


def test_resnet18_cifar_builds_full_size() -> None:
    _torch()
    from otoir.zoo import build

    module, x = build("resnet18_cifar")
    n = sum(p.numel() for p in module.parameters())
    assert 11_000_000 < n < 11_300_000
    assert x.shape == (2, 3, 32, 32)


def test_demosupnet_matches_figure_1() -> None:
    _torch()
    from otoir.frontends import export_torch
    from otoir.zoo import build

    full, _ = build("demosupnet")
    assert 0.80e6 < sum(p.numel() for p in full.parameters()) < 0.85e6  # Table 1: 0.82M

    module, x = build("demosupnet", width=0.125)
    g = export_torch(module, x).graph
    by_name = {n.name: n for n in g}

    def producer(node, i: int = 0) -> str:
        return node.inputs[i].producer().name

    def consumers(name: str) -> set[str]:
        return {c.name for c in by_name[name].outputs[0].consumers()}

    assert consumers("/bn1/BatchNormalization") == {"/conv2/Conv", "/maxpool/MaxPool", "/avgpool/AveragePool"}
    cat = by_name["/Concat"]
    assert [producer(cat, i) for i in range(3)] == [f"/bn{i}/BatchNormalization" for i in (2, 3, 4)]
    assert consumers("/Concat") == {"/conv6/Conv"}
    assert by_name["/conv5/Conv"].inputs[0] is g.inputs[0]  # Conv5 reads the network input
    add = by_name["/Add"]
    assert {producer(add, 0), producer(add, 1)} == {"/bn5/BatchNormalization", "/conv6/Conv"}
    assert consumers("/Add") == {"/conv7/Conv", "/conv8/Conv"}
    add1 = by_name["/Add_1"]
    assert {producer(add1, 0), producer(add1, 1)} == {"/bn7/BatchNormalization", "/bn8/BatchNormalization"}
    assert consumers("/Add_1") == {"/gap/GlobalAveragePool"}
    assert "conv6.bias" in g.initializers and not any(k.startswith("bn6") for k in g.initializers)


# ------------------------------------------------------------------------------------------
# random ONNX DAGs


@pytest.mark.parametrize("seed", range(20))
def test_random_dag_valid_and_runs(seed: int) -> None:
    model = random_conv_dag(seed)
    assert model.ir_version == 10 and model.opset_imports[""] == 17
    assert isinstance(model.graph.inputs[0].shape[0], ir.SymbolicDim)
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    x = np.random.default_rng(seed).normal(size=(3, 3, 8, 8)).astype(np.float32)
    (y,) = session(proto).run(None, {"input": x})
    assert y.shape == (3, 5) and np.isfinite(y).all()
    ops = {n.op_type for n in model.graph}
    assert {"Conv", "GlobalAveragePool", "Flatten", "Gemm"} <= ops
    # Every node output is consumed or is the graph output: no dead code.
    for node in model.graph:
        for v in node.outputs:
            assert v.uses() or v.is_graph_output(), node.name
    bns = [n for n in model.graph if n.op_type == "BatchNormalization"]
    assert all(len(n.outputs) == 1 for n in bns)


def test_random_dags_cover_joins() -> None:
    ops: set[str] = set()
    for seed in range(20):
        ops |= {n.op_type for n in random_conv_dag(seed).graph}
    assert {"Add", "Concat", "BatchNormalization", "Relu", "MaxPool", "AveragePool"} <= ops


def test_random_dag_deterministic() -> None:
    a = ir.to_proto(random_conv_dag(3, n_blocks=5)).SerializeToString()
    b = ir.to_proto(random_conv_dag(3, n_blocks=5)).SerializeToString()
    c = ir.to_proto(random_conv_dag(4, n_blocks=5)).SerializeToString()
    assert a == b and a != c


def test_conv_dags_strategy() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    from otoir.zoo.strategies import conv_dags

    @hypothesis.settings(max_examples=15, deadline=None, database=None)
    @hypothesis.given(conv_dags(max_blocks=4))
    def check(model: ir.Model) -> None:
        params = model.meta["otoir.random_dag_params"]
        proto = ir.to_proto(model)
        onnx.checker.check_model(proto, full_check=True)
        size = params["image_size"]
        x = np.ones((2, params["in_channels"], size, size), np.float32)
        session(proto).run(None, {"input": x})

    check()


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenetv2", "demosupnet", "vit_like"])
@pytest.mark.parametrize("channels", [1, 5])
def test_example_input_follows_in_channels(name, channels):
    torch = pytest.importorskip("torch")
    from otoir.zoo import build

    module, example = build(name, in_channels=channels)
    assert example.shape[1] == channels
    with torch.no_grad():
        module.eval()
        assert module(example).shape[0] == example.shape[0]  # the example runs through the network built


# torchvision's published parameter counts (torchvision.models weights tables)
@pytest.mark.parametrize("layout, params", [
    (("ResNet", 64, "basic", (2, 2, 2, 2)), 11_689_512),  # resnet18
    (("ResNet", 64, "bottleneck", (3, 4, 6, 3)), 25_557_032),  # resnet50
    (("MobileNetV2",), 3_504_872),  # mobilenet_v2
])
def test_imagenet_layouts_have_torchvision_parameter_counts(layout, params):
    torch = _torch()
    from otoir.zoo import cnns

    name, *args = layout
    if name == "ResNet":
        module = cnns.ResNet(*args, num_classes=1000, stem="imagenet")
    else:
        stages = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                  (6, 320, 1, 1))
        module = cnns.MobileNetV2(1.0, stages, num_classes=1000, stem_stride=2, last=1280)
    assert sum(p.numel() for p in module.parameters()) == params
    with torch.no_grad():
        assert module.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


def test_resnet_refuses_an_unknown_stem():
    _torch()
    from otoir.zoo.cnns import ResNet

    with pytest.raises(ValueError, match="unknown stem 'coco'"):
        ResNet(8, stem="coco")


def test_imagenet_stem_resnet_prunes_exactly():
    """7x7 stride-2 stem and max-pool: the stem's channels are pruned through the MaxPool (oracle)."""
    torch = _torch()
    from otoir.analyses.groups import zero_groups
    from otoir.api import clone_model
    from otoir.frontends import export_torch
    from otoir.infra import PassManager
    from otoir.optim.from_groups import groups_for
    from otoir.testing import assert_same_outputs
    from otoir.zoo.cnns import ResNet

    torch.manual_seed(0)
    model = export_torch(ResNet(8, "basic", (1, 1), stem="imagenet").eval(), torch.randn(2, 3, 64, 64))
    assert "MaxPool" in {n.op_type for n in model.graph}
    stem_weight = next(n for n in model.graph if n.op_type == "Conv").inputs[1].name
    groups = groups_for(model, "zig")
    prunable = [i for i, g in enumerate(groups) if g.prunable]
    through_pool = [i for i in prunable if stem_weight in groups[i].tensors]
    assert through_pool  # the stem's channels reach the residual stream through the max-pool
    chosen = sorted(set(through_pool[:3]) | set(prunable[::3]))
    zero_groups(model, [groups[i] for i in chosen])
    PassManager.from_text("to-inference").run(model)
    sub = clone_model(model)
    PassManager.from_text("prune-channels,cleanup,to-deployment").run(sub)
    assert next(n for n in sub.graph if n.op_type == "Conv").inputs[1].shape[0] <= 8 - 3  # the stem conv lost 3
    assert_same_outputs(model, sub)
