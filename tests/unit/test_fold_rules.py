"""Constant folding of shape sub-graphs is the rules' ``fold`` field (``OpRule.fold``).

Every op the static-shape analysis folds is checked against ONNX's reference evaluator on small
constant inputs, through the analysis itself (:func:`otoir.analyses.shapes.infer_static_shapes`);
the analysis is shown to use nothing but the rule (a user rule without ``fold`` stops a built-in
op folding, a user rule with one makes a custom op fold and static shapes flow through it).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir
import pytest
from onnx.reference import ReferenceEvaluator

import otoir
from otoir.analyses import shapes as shapes_mod
from otoir.analyses.shapes import StaticShapes, infer_static_shapes
from otoir.ops import OpRule, VertexKind, lookup_rule, register_rule, unregister_rule
from otoir.ops.fold import FOLDS

ACME = "com.acme"
I64 = np.int64
F32 = np.float32


def _a(*values, dtype=I64) -> np.ndarray:
    return np.array(values, dtype=dtype)


#: (case id, op type, opset, inputs (None: an absent optional input), attributes); the data
#: input of Shape/Size is a graph input (its values unknown, its shape static).
CASES = [
    ("Constant-value", "Constant", 17, [], {"value": onh.from_array(_a(2, 3, 4))}),
    ("Constant-value_ints", "Constant", 17, [], {"value_ints": [4, 5]}),
    ("Constant-value_int", "Constant", 17, [], {"value_int": 7}),
    ("Constant-value_floats", "Constant", 17, [], {"value_floats": [1.5, 2.5]}),
    ("Constant-value_float", "Constant", 17, [], {"value_float": 0.5}),
    ("Shape", "Shape", 17, ["x"], {}),
    ("Shape-start-end", "Shape", 17, ["x"], {"start": 1, "end": -1}),
    ("Size", "Size", 17, ["x"], {}),
    ("Identity", "Identity", 17, [_a(1, 2)], {}),
    ("Cast-float", "Cast", 17, [_a(3, 4)], {"to": onnx.TensorProto.FLOAT}),
    ("Cast-int", "Cast", 17, [_a(3.7, -1.2, dtype=F32)], {"to": onnx.TensorProto.INT64}),
    ("Gather-scalar", "Gather", 17, [_a(2, 3, 4), np.array(1, I64)], {}),
    ("Gather-axis1", "Gather", 17, [np.arange(6, dtype=I64).reshape(2, 3), _a(2, -1)], {"axis": 1}),
    ("Unsqueeze-attr", "Unsqueeze", 11, [_a(5)], {"axes": [0]}),
    ("Unsqueeze-input", "Unsqueeze", 13, [np.array(5, I64), _a(0, -1)], {}),
    ("Squeeze-attr", "Squeeze", 11, [_a(5).reshape(1, 1)], {"axes": [1]}),
    ("Squeeze-input", "Squeeze", 13, [_a(5).reshape(1, 1), _a(0)], {}),
    ("Squeeze-all", "Squeeze", 13, [_a(5).reshape(1, 1)], {}),
    ("Concat", "Concat", 17, [_a(1, 2), _a(3)], {"axis": 0}),
    ("Add", "Add", 17, [_a(1, 2), _a(10)], {}),
    ("Sub", "Sub", 17, [_a(1, 2), _a(10, 20)], {}),
    ("Mul", "Mul", 17, [_a(3, 4), _a(2)], {}),
    ("Div-int", "Div", 17, [_a(7, 9, 12), _a(2, 4, 3)], {}),
    ("Div-float", "Div", 17, [_a(7, 9, dtype=F32), _a(2, 4, dtype=F32)], {}),
    ("Equal", "Equal", 17, [_a(1, 2, 3), _a(1, 0, 3)], {}),
    ("Min", "Min", 17, [_a(1, 5, 3), _a(4, 2, 3)], {}),
    ("Min-3", "Min", 17, [_a(1, 5, 3), _a(4, 2, 3), _a(0, 9, 9)], {}),
    ("Max", "Max", 17, [_a(1, 5, 3), _a(4, 2, 3)], {}),
    ("Max-3", "Max", 17, [_a(1, 5, 3), _a(4, 2, 3), _a(0, 9, 9)], {}),
    ("Mod", "Mod", 17, [_a(7, -7, 9), _a(3, 3, -4)], {}),
    ("Mod-fmod", "Mod", 17, [_a(7.5, -7.5, dtype=F32), _a(2, 2, dtype=F32)], {"fmod": 1}),
    ("Pow", "Pow", 17, [_a(2, 3, dtype=F32), _a(3, 2, dtype=F32)], {}),
    ("Neg", "Neg", 17, [_a(2, -3)], {}),
    ("Abs", "Abs", 17, [_a(2, -3)], {}),
    ("Floor", "Floor", 17, [_a(2.5, -3.5, dtype=F32)], {}),
    ("Ceil", "Ceil", 17, [_a(2.5, -3.5, dtype=F32)], {}),
    ("Sqrt", "Sqrt", 17, [_a(4, 9, dtype=F32)], {}),
    ("Not", "Not", 17, [np.array([True, False])], {}),
    ("Where", "Where", 17, [np.array([True, False]), _a(1, 2), _a(3, 4)], {}),
    ("Slice", "Slice", 17, [_a(1, 2, 3, 4, 5), _a(1), _a(4)], {}),
    ("Slice-axes-steps", "Slice", 17, [np.arange(12, dtype=I64).reshape(3, 4), _a(3), _a(0), _a(1), _a(-2)], {}),
    ("Slice-negative", "Slice", 17, [_a(1, 2, 3, 4, 5), _a(-3), _a(-1), _a(0)], {}),
    ("Range", "Range", 17, [np.array(0, I64), np.array(7, I64), np.array(2, I64)], {}),
    ("ConstantOfShape", "ConstantOfShape", 17, [_a(2, 3)], {}),
    ("ConstantOfShape-value", "ConstantOfShape", 17, [_a(2)], {"value": onh.from_array(_a(7))}),
    ("Expand", "Expand", 17, [_a(1, 2), _a(3, 2)], {}),
    ("Reshape", "Reshape", 17, [np.arange(6, dtype=I64), _a(2, -1)], {}),
    ("Reshape-zero", "Reshape", 17, [np.arange(6, dtype=I64).reshape(2, 3), _a(0, 3, 1)], {}),
    ("ReduceProd", "ReduceProd", 17, [_a(2, 3, 4)], {"keepdims": 0}),
    ("ReduceProd-keepdims", "ReduceProd", 17, [_a(2, 3, 4)], {}),
    ("ReduceProd-axes-attr", "ReduceProd", 17, [np.arange(1, 7, dtype=I64).reshape(2, 3)], {"axes": [1], "keepdims": 0}),
    ("ReduceProd-axes-input", "ReduceProd", 18, [np.arange(1, 7, dtype=I64).reshape(2, 3), _a(0)], {}),
    ("Transpose", "Transpose", 17, [np.arange(6, dtype=I64).reshape(2, 3)], {}),
    ("Transpose-perm", "Transpose", 17, [np.arange(24, dtype=I64).reshape(2, 3, 4)], {"perm": [1, 2, 0]}),
]

#: The data input of Shape/Size.
X_SHAPE = (2, 3, 5, 7)


def _single_node_model(op: str, opset: int, inputs: list, attrs: dict, out_type: int = 0,
                       out_shape: tuple[int, ...] | None = None) -> onnx.ModelProto:
    names, inits, graph_inputs = [], [], []
    for i, v in enumerate(inputs):
        if isinstance(v, str):
            graph_inputs.append(oh.make_tensor_value_info(v, onnx.TensorProto.FLOAT, list(X_SHAPE)))
            names.append(v)
        elif v is None:
            names.append("")
        else:
            names.append(f"in{i}")
            inits.append(onh.from_array(np.asarray(v), f"in{i}"))
    node = oh.make_node(op, names, ["y"], name="n", **attrs)
    graph = oh.make_graph([node], "fold", graph_inputs, [oh.make_tensor_value_info("y", out_type, out_shape)], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=8)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fold_matches_reference_evaluator(case):
    _, op, opset, inputs, attrs = case
    feeds = {"x": np.zeros(X_SHAPE, F32)} if any(isinstance(v, str) for v in inputs) else {}
    (expected,) = ReferenceEvaluator(_single_node_model(op, opset, inputs, attrs)).run(None, feeds)
    out_type = onnx.helper.np_dtype_to_tensor_dtype(np.asarray(expected).dtype)
    proto = _single_node_model(op, opset, inputs, attrs, out_type, np.shape(expected))
    onnx.checker.check_model(proto, full_check=True)
    _, consts = infer_static_shapes(ir.from_proto(proto))
    assert "y" in consts, f"{op} did not fold"
    got = consts["y"]
    assert got.shape == np.shape(expected)
    assert got.dtype == np.asarray(expected).dtype
    np.testing.assert_array_equal(got, expected)


def test_every_folding_op_has_a_rule_with_its_fold_and_a_case():
    """The built-in folds are set on the rules, and every one is checked above."""
    for op, fn in FOLDS.items():
        r = lookup_rule(op, "", 17)
        assert r is not None and r.fold is fn, op
    assert {c[1] for c in CASES} == set(FOLDS)


def test_ops_without_fold_are_not_folded():
    """An op whose rule has no fold (Relu) or that has no rule (a custom op) stays unknown."""
    for op in ("Relu", "MyOp"):
        assert lookup_rule(op) is None or lookup_rule(op).fold is None
        proto = _single_node_model(op, 17, [_a(1, -2, dtype=F32)], {}, onnx.TensorProto.FLOAT, (2,))
        _, consts = infer_static_shapes(ir.from_proto(proto))
        assert "y" not in consts


@pytest.fixture
def user_rules():
    declared: list[tuple[str, str]] = []

    def _declare(r: OpRule) -> None:
        register_rule(r)
        declared.append((r.op_type, r.domain))

    yield _declare
    for op, domain in declared:
        unregister_rule(op, domain=domain)


def test_analysis_folds_only_what_the_rule_says(user_rules):
    """A user rule for Shape without ``fold`` stops the analysis folding Shape (no op list elsewhere)."""
    proto = _single_node_model("Shape", 17, ["x"], {}, onnx.TensorProto.INT64, (4,))
    _, consts = infer_static_shapes(ir.from_proto(proto))
    np.testing.assert_array_equal(consts["y"], X_SHAPE)
    user_rules(lookup_rule("Shape").with_(fold=None))
    _, consts = infer_static_shapes(ir.from_proto(proto))
    assert "y" not in consts
    source = Path(shapes_mod.__file__).read_text()
    assert not re.search(r"op_type\s*(==|!=|in\b|not in\b)|\bop\s*==", source)


# -- a custom op that folds: static shapes flow through a Reshape whose target it computes ----
def _acme_model() -> ir.Model:
    """x [2,3,4,4] -> acme::FlatShape(x) = [N, C*H*W] -> Reshape(x, .) -> y."""
    body = [
        oh.make_node("Shape", ["X"], ["s"]),
        oh.make_node("Slice", ["s", "one", "big"], ["rest"]),
        oh.make_node("ReduceProd", ["rest"], ["p"], keepdims=1),
        oh.make_node("Slice", ["s", "zero", "one"], ["n"]),
        oh.make_node("Concat", ["n", "p"], ["Y"], axis=0),
    ]
    consts = [oh.make_node("Constant", [], [name], value=onh.from_array(_a(v))) for name, v in
              (("zero", 0), ("one", 1), ("big", 1 << 30))]
    fn = oh.make_function(ACME, "FlatShape", ["X"], ["Y"], consts + body, [oh.make_opsetid("", 17)])
    nodes = [oh.make_node("FlatShape", ["x"], ["t"], name="flat_shape", domain=ACME),
             oh.make_node("Reshape", ["x", "t"], ["r"], name="reshape"),
             oh.make_node("Relu", ["r"], ["y"], name="relu")]
    graph = oh.make_graph(nodes, "acme", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 4, 4])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", "f"])])
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid(ACME, 1)],
                          functions=[fn], ir_version=8)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _flat_shape(node, values, shape_of):
    s = shape_of(node.inputs[0])
    return None if s is None else [np.array([s[0], int(np.prod(s[1:]))], dtype=np.int64)]


def test_custom_op_fold_makes_reshape_target_constant():
    model = _acme_model()
    without = StaticShapes(model)
    assert without.const(model.graph.node(0).outputs[0]) is None
    assert without.shape(model.graph.outputs[0]) is None

    @otoir.ops.rule("FlatShape", domain=ACME, kind=VertexKind.CONSTANT, data_inputs=(), fold=_flat_shape)
    def flat_shape(node, is_data):
        return VertexKind.CONSTANT, "acme shape computation"

    try:
        with_fold = StaticShapes(model)
        np.testing.assert_array_equal(with_fold.const(model.graph.node(0).outputs[0]), [2, 48])
        assert with_fold.shape(model.graph.node(1).outputs[0]) == (2, 48)
        assert with_fold.shape(model.graph.outputs[0]) == (2, 48)
    finally:
        unregister_rule("FlatShape", domain=ACME)
