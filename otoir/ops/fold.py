"""Fold functions of the built-in rules: ops evaluated on constant inputs (``OpRule.fold``).

The static-shape analysis (:func:`otoir.analyses.shapes.fold_constants`) evaluates shape
sub-graphs (``Shape -> Gather -> Unsqueeze -> Concat``, Reshape targets, Slice bounds) with the
``fold`` of each node's rule. Every function here is a :data:`otoir.ops.rules.Fold`:
``fold(node, values, shape_of) -> outputs`` (None: not folded). The table
(:mod:`otoir.ops.table`) sets them on the rules; this module only holds the evaluators.

Ops read with :func:`constant_inputs` fold only when every present input has a value (and
input 0 is present); ``Shape``/``Size`` need only the static shape of input 0 and ``Constant``
no input at all. Attribute and input forms of every opset are accepted (``Unsqueeze``/
``Squeeze`` axes as attribute or input, ``Slice`` without ``axes``/``steps``...).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from otoir.ops.rules import attr

if TYPE_CHECKING:
    from otoir.ops.rules import Fold

__all__ = ["constant_array", "constant_inputs", "row_local", "weight_transform", "evaluate_constant", "FOLDS"]

Values = Sequence["np.ndarray | None"]
ShapeOf = Callable[["ir.Value | None"], "tuple[int, ...] | None"]


def constant_array(v: ir.Value | None) -> np.ndarray | None:
    """The value of ``v`` when it is a constant: an initializer or a ``Constant`` node's ``value``
    (None otherwise, and for a ``Constant`` of another attribute form)."""
    if v is None:
        return None
    if v.const_value is not None:
        return np.asarray(v.const_value.numpy())
    p = v.producer()
    if p is not None and p.op_type == "Constant" and p.domain in ("", "ai.onnx"):
        a = p.attributes.get("value")
        if a is not None:
            return np.asarray(a.value.numpy())
    return None


def weight_transform(v: ir.Value) -> tuple[ir.Value, list[ir.Node]] | None:
    """``(W, nodes)`` when ``v`` is computed by ``nodes`` (in graph order) from constants only,
    with exactly one float initializer of rank >= 2 among them (``W``), else None."""
    nodes: list[ir.Node] = []
    seen: set[ir.Value] = set()
    weights: set[ir.Value] = set()
    stack = [v]
    while stack:
        x = stack.pop()
        if x is None or x in seen:
            continue
        seen.add(x)
        if x.is_graph_input():
            return None
        if x.is_initializer():
            cv = x.const_value
            if cv is not None and cv.dtype.is_floating_point() and len(cv.shape) >= 2:
                weights.add(x)
            continue
        p = x.producer()
        if p is None or p.graph is None or any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
                                               for a in p.attributes.values()):
            return None
        if p not in nodes:
            nodes.append(p)
        stack.extend(p.inputs)
        if len(nodes) > 64:
            return None
    if len(weights) != 1 or not nodes:
        return None
    order = {n: i for i, n in enumerate(nodes[0].graph)}
    return next(iter(weights)), sorted(nodes, key=order.__getitem__)


def evaluate_constant(nodes: Sequence[ir.Node], out: ir.Value, values: dict[str, np.ndarray] | None = None
                      ) -> np.ndarray:
    """Evaluates ``out`` computed by ``nodes`` from initializers (``values`` overrides some) with
    ONNX's reference evaluator."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    values = values or {}
    inits = {}
    for n in nodes:
        for x in n.inputs:
            if x is not None and x.is_initializer() and x.name not in inits:
                inits[x.name] = values.get(x.name, x.const_value.numpy())
    graph = onnx.helper.make_graph(
        [ir.serde.serialize_node(n) for n in nodes], "transform", [],
        [onnx.helper.make_empty_tensor_value_info(out.name)],
        [onnx.numpy_helper.from_array(np.asarray(a), k) for k, a in inits.items()])
    opset = nodes[0].graph.opset_imports.get("", 17) if nodes[0].graph is not None else 17
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    return np.asarray(ReferenceEvaluator(model).run(None, {})[0])


def row_local(nodes: Sequence[ir.Node], w: ir.Value, out: ir.Value, *, seed: int = 0) -> bool:
    """Whether ``out = f(w)`` (computed by ``nodes``) maps zeroed rows of ``w`` (axis 0) to zero
    rows and leaves the other rows unchanged, checked on ``w``'s values with a third of its rows
    zeroed (a random choice, ``seed``). False when it cannot be evaluated."""
    try:
        full = evaluate_constant(nodes, out)
        arr = np.asarray(w.const_value.numpy())
        if full.shape != arr.shape or arr.shape[0] < 2:
            return False
        rng = np.random.default_rng(seed)
        rows = rng.random(arr.shape[0]) < 1 / 3
        rows[rng.integers(arr.shape[0])] = True
        z = arr.copy()
        z[rows] = 0
        part = evaluate_constant(nodes, out, {w.name: z})
    except Exception:  # noqa: BLE001 - an op the reference evaluator lacks: not recognised
        return False
    scale = max(float(np.max(np.abs(full))), 1e-30)
    return bool(np.all(np.abs(part[rows]) <= 1e-6 * scale)
                and np.allclose(part[~rows], full[~rows], rtol=1e-5, atol=1e-6 * scale))


def constant_inputs(fn: Callable[[ir.Node, list[np.ndarray]], list[np.ndarray] | None]) -> Fold:
    """Turns ``fn(node, values)`` into a :data:`~otoir.ops.rules.Fold` that runs only on constants.

    The fold returns None (not folded) unless input 0 is present and every present input has a
    value; ``fn`` then sees the values (None for absent optional inputs).
    """

    @functools.wraps(fn)
    def fold(node: ir.Node, values: Values, shape_of: ShapeOf) -> list[np.ndarray] | None:
        if not values or values[0] is None:
            return None
        if any(v is not None and a is None for v, a in zip(node.inputs, values)):
            return None
        return fn(node, list(values))

    return fold


# -- ops read from attributes or static shapes -------------------------------------------
#: Constant's attribute forms (``value_string(s)``, ``sparse_value``: not folded) and the
#: element type ONNX gives the list forms.
_CONSTANT_FORMS = (("value", None), ("value_ints", np.int64), ("value_int", np.int64),
                   ("value_floats", np.float32), ("value_float", np.float32))


def _constant(node: ir.Node, values: Values, shape_of: ShapeOf) -> list[np.ndarray] | None:
    for key, dtype in _CONSTANT_FORMS:
        a = node.attributes.get(key)
        if a is not None:
            v = a.value
            return [v.numpy() if hasattr(v, "numpy") else np.array(v, dtype=dtype)]
    return None


def _shape(node: ir.Node, values: Values, shape_of: ShapeOf) -> list[np.ndarray] | None:
    s = shape_of(node.inputs[0])
    if s is None:
        return None
    return [np.array(s, dtype=np.int64)[attr(node, "start", 0):attr(node, "end", None)]]


def _size(node: ir.Node, values: Values, shape_of: ShapeOf) -> list[np.ndarray] | None:
    s = shape_of(node.inputs[0])
    return None if s is None else [np.array(int(np.prod(s)), dtype=np.int64)]


# -- ops on constant inputs ----------------------------------------------------------------
@constant_inputs
def _identity(node, v):
    return [v[0]]


@constant_inputs
def _cast(node, v):
    return [v[0].astype(ir.DataType(attr(node, "to")).numpy())]


@constant_inputs
def _gather(node, v):
    return [np.take(v[0], v[1], axis=attr(node, "axis", 0))]


def _axes(node: ir.Node, v: list) -> object:
    """Axes of Squeeze/Unsqueeze: input 1 (opset >= 13) or the ``axes`` attribute."""
    return v[1] if len(v) > 1 and v[1] is not None else attr(node, "axes", None)


@constant_inputs
def _unsqueeze(node, v):
    x = v[0]
    axes = _axes(node, v)
    for a in sorted(int(a) % (x.ndim + len(axes)) for a in np.atleast_1d(axes)):
        x = np.expand_dims(x, a)
    return [x]


@constant_inputs
def _squeeze(node, v):
    axes = _axes(node, v)
    return [np.squeeze(v[0], axis=None if axes is None else tuple(int(a) for a in np.atleast_1d(axes)))]


@constant_inputs
def _concat(node, v):
    if any(a is None for a in v):
        return None
    return [np.concatenate([np.atleast_1d(a) if a.ndim == 0 else a for a in v], axis=attr(node, "axis", 0))]


def _binary(fn: Callable[[ir.Node, np.ndarray, np.ndarray], np.ndarray]) -> Fold:
    """A fold of a binary op that needs both operands."""

    @constant_inputs
    def fold(node, v):
        if any(a is None for a in v):
            return None
        return [fn(node, v[0], v[1])]

    return fold


def _variadic(fn: np.ufunc) -> Fold:
    """A fold of a variadic element-wise op (Min, Max): ``fn`` over every operand."""

    @constant_inputs
    def fold(node, v):
        if any(a is None for a in v):
            return None
        return [functools.reduce(fn, v)]

    return fold


def _div(node, a, b):
    if np.issubdtype(a.dtype, np.integer):
        return np.trunc(a / b).astype(a.dtype)
    return a / b


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Fold:
    return constant_inputs(lambda node, v: [fn(v[0])])


@constant_inputs
def _where(node, v):
    if any(a is None for a in v[:3]):
        return None
    return [np.where(v[0], v[1], v[2])]


@constant_inputs
def _slice(node, v):
    if any(a is None for a in v[1:3]):
        return None
    x, starts, ends = v[0], v[1], v[2]
    axes = v[3] if len(v) > 3 and v[3] is not None else np.arange(len(starts))
    steps = v[4] if len(v) > 4 and v[4] is not None else np.ones(len(starts), np.int64)
    idx = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        idx[int(a)] = slice(int(s), int(e), int(st))
    return [x[tuple(idx)]]


@constant_inputs
def _range(node, v):
    if any(a is None for a in v[:3]):
        return None
    return [np.arange(v[0], v[1], v[2]).astype(v[0].dtype)]


@constant_inputs
def _constant_of_shape(node, v):
    a = node.attributes.get("value")
    fill = a.value.numpy() if a is not None else np.zeros(1, np.float32)
    return [np.full([int(d) for d in v[0]], fill.reshape(-1)[0], dtype=fill.dtype)]


@constant_inputs
def _expand(node, v):
    if v[1] is None:
        return None
    return [v[0] * np.ones([int(d) for d in v[1]], dtype=v[0].dtype)]


@constant_inputs
def _reshape(node, v):
    if v[1] is None:
        return None
    x = v[0]
    return [x.reshape([int(d) if int(d) != 0 else x.shape[i] for i, d in enumerate(v[1])])]


@constant_inputs
def _reduce_prod(node, v):
    """ReduceProd: axes as attribute (opset < 18) or input 1; none: every axis (or, with
    ``noop_with_empty_axes``, the input unchanged)."""
    axes = v[1] if len(v) > 1 and v[1] is not None else attr(node, "axes", None)
    if axes is None or len(axes) == 0:
        if attr(node, "noop_with_empty_axes", 0):
            return [v[0]]
        axes = None
    return [np.prod(v[0], axis=None if axes is None else tuple(int(a) for a in axes),
                    keepdims=bool(attr(node, "keepdims", 1)))]


@constant_inputs
def _transpose(node, v):  # torch's F.pad exports its pads list through Reshape/Slice/Transpose
    perm = attr(node, "perm", None)
    return [np.transpose(v[0], None if perm is None else [int(p) for p in perm])]


#: The built-in fold functions by ONNX op type, set on the rules of :mod:`otoir.ops.table`
#: (the analyses read ``OpRule.fold``, never this dict).
FOLDS: dict[str, Fold] = {
    "Constant": _constant, "Shape": _shape, "Size": _size,
    "Identity": _identity, "Cast": _cast, "Gather": _gather, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
    "Concat": _concat,
    "Add": _binary(lambda n, a, b: a + b), "Sub": _binary(lambda n, a, b: a - b),
    "Mul": _binary(lambda n, a, b: a * b), "Div": _binary(_div), "Equal": _binary(lambda n, a, b: a == b),
    "Min": _variadic(np.minimum), "Max": _variadic(np.maximum),
    "Mod": _binary(lambda n, a, b: np.fmod(a, b) if attr(n, "fmod", 0) else np.mod(a, b)),
    "Pow": _binary(lambda n, a, b: np.power(a, b)),
    "Neg": _unary(np.negative), "Abs": _unary(np.abs), "Floor": _unary(np.floor), "Ceil": _unary(np.ceil),
    "Sqrt": _unary(np.sqrt), "Not": _unary(np.logical_not),
    "Where": _where, "Slice": _slice, "Range": _range, "ConstantOfShape": _constant_of_shape, "Expand": _expand,
    "Reshape": _reshape, "ReduceProd": _reduce_prod, "Transpose": _transpose,
}
