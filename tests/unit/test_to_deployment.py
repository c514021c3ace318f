"""to-deployment: BatchNorm folded, Identity/Dropout gone, static shape sub-graphs constant; the oracle."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

torch = pytest.importorskip("torch")

from otoir.api import clone_model  # noqa: E402
from otoir.errors import PassFailure  # noqa: E402
from otoir.frontends.torch_export import export_torch  # noqa: E402
from otoir.infra.pass_manager import PassManager  # noqa: E402
from otoir.runtime import output_agreement, random_feeds  # noqa: E402
from otoir.testing import assert_same_outputs  # noqa: E402
from otoir.train.inference import to_inference  # noqa: E402
from otoir.zoo import build  # noqa: E402

TOL = 1e-4


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.all_nodes()]


def _random_bn_stats(module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so folding changes numbers."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(c, generator=g) * 0.2)


def _training_export(name: str):
    module, x = build(name)
    _random_bn_stats(module)
    return export_torch(module, (x,))  # training form: BN training_mode=1, Dropout kept


def _deploy(model):
    out = clone_model(model)
    PassManager.from_text("to-deployment").run(out)
    return out


@pytest.mark.parametrize("name", ["resnet_basic", "demosupnet", "vit_like", "bert_like"])
def test_oracle_zoo(name):
    model = _training_export(name)
    ref = to_inference(model)
    dep = _deploy(model)
    feeds = random_feeds(ref, seed=1, batch=3)
    assert output_agreement(ref, dep, feeds) <= TOL
    assert_same_outputs(ref, dep, feeds, rtol_scale=TOL)
    assert len(list(dep.graph.all_nodes())) < len(list(ref.graph.all_nodes()))
    ops = _ops(dep)
    assert "Identity" not in ops and "Dropout" not in ops
    if "BatchNormalization" in _ops(ref):
        assert ops.count("BatchNormalization") < _ops(ref).count("BatchNormalization")


def test_resnet_all_bn_folded():
    dep = _deploy(_training_export("resnet_basic"))
    assert "BatchNormalization" not in _ops(dep)


def test_oracle_pruned_model():
    model = _training_export("resnet_basic")
    PassManager.from_text("to-inference,classify-vertices,partition-zig,zero-groups{kind=zig random=0.5 seed=3},"
                          "prune-channels,cleanup").run(model)
    dep = _deploy(model)
    feeds = random_feeds(model, seed=2, batch=2)
    assert output_agreement(model, dep, feeds) <= TOL
    assert len(dep.graph) < len(model.graph) and "BatchNormalization" not in _ops(dep)


class _ShapeNet(torch.nn.Module):
    """A conv net whose flatten goes through a Shape -> Gather -> ... -> Reshape chain."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.3)
        self.fc = torch.nn.Linear(4 * 5 * 5, 2)
        self.bn1 = torch.nn.BatchNorm1d(2)

    def forward(self, x):
        y = self.drop(torch.relu(self.bn(self.conv(x))))
        y = y.reshape(y.shape[0], y.shape[1] * y.shape[2] * y.shape[3])  # batch from the shape: stays
        return self.bn1(self.fc(y))


def test_shape_chains_fold_only_where_static():
    m = _ShapeNet()
    _random_bn_stats(m)
    model = export_torch(m, (torch.randn(2, 3, 5, 5),))
    ref = to_inference(model)
    assert "Shape" in _ops(ref)
    dep = _deploy(model)
    ops = _ops(dep)
    assert "BatchNormalization" not in ops and "Identity" not in ops
    assert ops.count("Gather") < _ops(ref).count("Gather")  # C*H*W folded
    assert "Shape" in ops  # the batch size still read from the input
    for batch in (1, 4):  # batch-dependent part still computed: any batch runs
        feeds = random_feeds(ref, seed=batch, batch=batch)
        assert output_agreement(ref, dep, feeds) <= TOL



def test_a_folded_scalar_stays_a_scalar():
    # torchvision's MultiheadAttention export: seq * batch from Gathers of a Shape (scalars),
    # Unsqueezed and concatenated into a Reshape target. seq is static and folds; it must fold
    # to a 0-d initializer (a 1-d one made Mul rank 1 and the Concat inputs of mixed rank).
    text = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N,5,8] x) => (float[M,8] y)
<int64 i0 = {0}, int64 i1 = {1}, int64 i2 = {2}, int64[1] ax = {0}>
{
  t = Transpose <perm = [1, 0, 2]> (x)
  s = Shape (t)
  seq = Gather <axis = 0> (s, i0)
  batch = Gather <axis = 0> (s, i1)
  d = Gather <axis = 0> (s, i2)
  n = Mul (seq, batch)
  a = Unsqueeze (n, ax)
  b = Unsqueeze (d, ax)
  tgt = Concat <axis = 0> (a, b)
  y = Reshape (t, tgt)
}"""
    model = ir.from_onnx_text(text)
    dep = _deploy(model)
    folded = [v for v in dep.graph.initializers.values() if v.name.endswith(".folded")]
    seq = [v for v in folded if v.name.startswith("seq")]
    assert seq and seq[0].const_value.numpy().shape == ()
    for batch in (1, 3):
        assert output_agreement(model, dep, random_feeds(model, seed=batch, batch=batch)) <= TOL


def test_shared_weight_not_changed_under_another_user():
    text = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N,2,4,4] x) => (float[N,3,4,4] y, float[N,3,4,4] z)
<float[3,2,1,1] w = {1,2,3,4,5,6}, float[3] s = {1,2,3}, float[3] b = {0,1,2}, float[3] m = {3,4,5}, float[3] v = {5,6,7}>
{
  c = Conv (x, w)
  y = BatchNormalization (c, s, b, m, v)
  z = Conv (x, w)
}"""
    model = ir.from_onnx_text(text)
    dep = _deploy(model)
    assert "BatchNormalization" not in _ops(dep)
    assert np.array_equal(dep.graph.initializers["w"].const_value.numpy(), np.arange(1, 7, dtype=np.float32).reshape(3, 2, 1, 1))
    assert output_agreement(model, dep, random_feeds(model, seed=0)) <= TOL


def test_failure_is_a_one_line_error():
    text = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N,2] x) => (float[N,2] y, float[2] rm)
<float[2] s = {1,2}, float[2] b = {0,1}, float[2] m = {3,4}, float[2] v = {5,6}>
{
  y, rm, rv = BatchNormalization <training_mode = 1> (x, s, b, m, v)
}"""
    with pytest.raises(PassFailure, match="running-statistics output 'rm' is used"):
        PassManager.from_text("to-deployment").run(ir.from_onnx_text(text))
