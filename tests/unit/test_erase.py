"""Sub-network construction golden tests (OTOv3 Figure 3, oto-notes 6.2)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

pytest.importorskip("torch")

import otoir  # noqa: E402
from otoir.analyses.gezig import GeZIGPartition  # noqa: E402
from otoir.testing import assert_same_outputs  # noqa: E402


def _load(name: str, width: float) -> ir.Model:
    import otoir.zoo as zoo

    m, x = zoo.build(name, width=width)
    return otoir.load(m, x)


def _copy(m: ir.Model) -> ir.Model:
    return ir.from_proto(ir.to_proto(m))


def _ids(m: ir.Model, prefixes) -> list[str]:
    p = GeZIGPartition(m, None)
    return [next(g.id for g in p.groups if g.meta["params"][0].startswith(pre + ".")) for pre in prefixes]


def test_figure3_demosupnet():
    m = _load("demosupnet", 0.125)
    w6 = np.array(m.graph.initializers["conv6.weight"].const_value.numpy())
    ids = _ids(m, ("conv2", "conv3", "conv8"))
    otoir.PassManager.from_text(f"zero-groups{{ids={','.join(ids)}}}").run(m)
    zeroed = _copy(m)
    r = otoir.PassManager.from_text("eliminate-dead-branches").run(m)
    names = {n.name for n in m.graph}
    for gone in ("/conv2/Conv", "/bn2/BatchNormalization", "/maxpool/MaxPool", "/conv3/Conv", "/bn3/BatchNormalization",
                 "/conv8/Conv", "/bn8/BatchNormalization", "/Add_1", "/Concat"):
        assert gone not in names
    for kept in ("/conv1/Conv", "/avgpool/AveragePool", "/conv4/Conv", "/conv6/Conv", "/Add", "/conv7/Conv", "/linear/Gemm"):
        assert kept in names
    # The first two column blocks of Conv6's weight are erased (8 channels each at width 0.125).
    w6_new = m.graph.initializers["conv6.weight"].const_value.numpy()
    assert w6_new.shape == (w6.shape[0], 8, 3, 3)
    np.testing.assert_array_equal(w6_new, w6[:, 16:24])
    assert not any(k.startswith(("conv2.", "bn2.", "conv3.", "conv8.", "bn8.")) for k in m.graph.initializers)
    assert dict(r.statistics)["eliminate-dead-branches"]["joints-removed"] == 2
    assert_same_outputs(zeroed, m)


def test_stackedunets_right_unet_removed():
    m = _load("stackedunets", 0.5)
    ids = _ids(m, ("left.down3", "right.down3", "right.up63", "right.out"))
    otoir.PassManager.from_text(f"zero-groups{{ids={','.join(ids)}}}").run(m)
    zeroed = _copy(m)
    otoir.PassManager.from_text("eliminate-dead-branches").run(m)
    names = [n.name for n in m.graph]
    assert not any(n.startswith("/right/") for n in names)
    assert not any(k.startswith("right.") for k in m.graph.initializers)
    assert not any(n.startswith("/left/down3/") for n in names)
    assert "/Add" not in names and "/left/Add" not in names  # add76, add20 gone
    assert any(n.startswith("/left/up26/") for n in names) and any(n.startswith("/left/out/") for n in names)
    assert_same_outputs(zeroed, m)


def test_invalid_zero_set_is_refused():
    m = _load("demosupnet", 0.125)
    p = GeZIGPartition(m, None)
    from otoir.analyses.groups import zero_group

    for g in p.groups:
        if g.meta["params"][0].startswith(("conv7.", "conv8.")):
            zero_group(m, g)
    with pytest.raises(otoir.PassFailure, match="invalid set"):
        otoir.PassManager.from_text("eliminate-dead-branches").run(m)


def test_zero_groups_refuses_invalid_ids():
    m = _load("demosupnet", 0.125)
    ids = _ids(m, ("conv7", "conv8"))
    with pytest.raises(otoir.PassFailure, match="refused by the validity check"):
        otoir.PassManager.from_text(f"zero-groups{{ids={','.join(ids)}}}").run(m)


def test_no_zero_groups_no_change():
    m = _load("demosupnet", 0.125)
    r = otoir.PassManager.from_text("eliminate-dead-branches").run(m)
    assert not r.changed


def _cat_module(dim: int):
    import torch
    from torch import nn

    class CatNet(nn.Module):
        """Two conv branches concatenated along ``dim`` (issue 10: ``torch.cat(dim=2)``), then a linear head."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.a = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
            n = 4 * 4 * 6 * 2
            self.fc = nn.Linear(n, 3)

        def forward(self, x):
            y = torch.relu(self.stem(x))
            return self.fc(torch.cat([self.a(y), self.b(y)], dim=dim).flatten(1))

    torch.manual_seed(0)
    return CatNet(), torch.randn(2, 3, 4, 6)


@pytest.mark.parametrize("dim", [1, 2, 3, -1])
def test_torch_cat_along_each_axis(dim):
    # Along the channels (dim=1) a zero branch is erased with the matching Gemm columns; along
    # height or width it is part of the flattened features' layout: kept, with the reason.
    module, x = _cat_module(dim)
    m = otoir.load(module, x)
    p = GeZIGPartition(m, None)
    branch = {pre: [v for v in p.verdicts.values() if any(q.startswith(pre + ".") for q in v.params)]
              for pre in ("a", "b")}
    for pre, verdicts in branch.items():
        assert len(verdicts) == 1, pre
        if dim == 1:
            assert verdicts[0].gezig, verdicts[0].reason
        else:
            assert not verdicts[0].gezig
            assert f"Concat stacks along axis {dim % 4}, not the channel axis 1" in verdicts[0].reason
    otoir.PassManager.from_text("zero-groups{random=1.0 seed=0}").run(m)
    zeroed = _copy(m)
    r = otoir.PassManager.from_text("eliminate-dead-branches").run(m)
    assert_same_outputs(zeroed, m)
    if dim == 1:
        assert r.changed and not any(n.op_type == "Concat" for n in m.graph)
    else:
        assert not r.changed
