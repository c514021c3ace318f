"""Tests of otoir.stats: parameter and FLOP accounting."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from otoir.stats import format_report, stats


def _model():
    import onnx
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.ones(shape, np.float32), name) for name, shape in
             (("w", (4, 3, 3, 3)), ("b", (4,)), ("fw", (5, 256)), ("fb", (5,)))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5])], inits)
    return ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))


def test_counts_params_and_flops():
    s = stats(_model())
    assert s.params == 4 * 27 + 4 + 5 * 256 + 5
    assert s.per_op["Conv"] == (4 * 27 + 4, 2 * 4 * 8 * 8 * 27)
    assert s.per_op["Gemm"][1] == 2 * 5 * 256
    assert s.per_op["Relu"][1] == 4 * 64
    assert s.flops == sum(f for _, f in s.per_op.values())


def test_report_mentions_totals():
    m = _model()
    s = stats(m)
    text = format_report(s, s)
    assert "total" in text and "0.0% of parameters" in text


def test_flops_see_through_a_long_chain_of_shape_sub_graphs():
    """Eight channel shuffles, each a Reshape whose target the previous block's output shape
    fixes (ShuffleNet's): shape inference resolves one per round; every convolution is counted
    and none is left uncounted (with only 4 rounds, the later ones were silently counted as 0)."""
    torch = pytest.importorskip("torch")
    from otoir.analyses.shapes import infer_static_shapes
    from otoir.frontends.torch_export import export_torch
    from otoir.stats import stats

    class Shuffle(torch.nn.Module):  # torchvision's ShuffleNetV2 unit, stride 1
        def __init__(self, c):
            super().__init__()
            self.conv = torch.nn.Conv2d(c // 2, c // 2, 1, bias=False)

        def forward(self, x):
            a, b = x.chunk(2, dim=1)
            x = torch.cat((a, self.conv(b)), dim=1)
            n, c, h, w = x.size()
            return x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)

    c, hw, blocks = 8, 6, 8
    m = torch.nn.Sequential(*[Shuffle(c) for _ in range(blocks)]).eval()
    model = export_torch(m, (torch.randn(2, c, hw, hw),), training=False)
    st = stats(model)
    assert st.uncounted == ()
    assert st.per_op["Conv"][1] == blocks * 2 * (c // 2) ** 2 * hw * hw
    shapes, _ = infer_static_shapes(model, max_rounds=4)  # the old cap: the later blocks stay unknown
    assert any(o.name not in shapes for n in model.graph for o in n.outputs if o.name)
    short = stats(model, _Rounds(model, 4))
    assert short.uncounted and short.per_op["Conv"][1] < st.per_op["Conv"][1]  # and stats says so


class _Rounds:
    """An analysis manager whose StaticShapes stop after ``rounds`` rounds of shape inference."""

    def __init__(self, model, rounds):
        from otoir.analyses.shapes import StaticShapes, infer_static_shapes

        self._ss = StaticShapes.__new__(StaticShapes)
        self._ss.shapes, self._ss.consts = infer_static_shapes(model, max_rounds=rounds)
        self._ss._model, self._ss._dims = model, None

    def get(self, _cls):
        return self._ss
