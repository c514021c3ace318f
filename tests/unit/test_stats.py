"""Tests of otoir.stats: parameter and FLOP accounting."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

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
