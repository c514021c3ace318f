"""The inference form of a training-mode model.

Models exported for training (``otoir.frontends.torch_export.export_torch``) contain
``BatchNormalization`` with ``training_mode=1`` and three outputs (Y, running mean, running var)
and ``Dropout`` nodes with a mask output. :func:`to_inference` rewrites them into the form a
deployed network has, without touching any parameter value:

* ``BatchNormalization`` gets ``training_mode=0`` and a single output; it then normalises with
  the running statistics held in its ``input_mean`` / ``input_var`` initializers.
* ``Dropout`` becomes ``Identity`` (the ratio and training-mode inputs are dropped; the nodes
  that only fed them are removed).
* Stochastic depth / drop path (torchvision's ``StochasticDepth``, timm's and Hugging Face's
  ``drop_path``), which a training-mode export writes as ops, not as ``Dropout``: ``x`` times a
  per-sample Bernoulli(q) mask scaled by 1/q (``Mul(x, Div(Cast(Less(RandomUniformLike, q)), q))``,
  ``Mul(Div(x, q), Floor(Add(RandomUniformLike, q)))`` and the operand orders of these) is ``x`` at
  inference, as in the modules' eval mode; the mask's sub-graph is removed.
  :func:`random_ops` lists the random ops that are left.

The compressed sub-networks otoir writes are inference models.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from otoir.ops.fold import constant_array
from otoir.surgery.common import remove_dead_upstream, take_over

__all__ = ["InferenceFormError", "to_inference", "is_inference_form", "drop_path_input", "random_ops"]

#: Ops whose outputs are random draws.
RANDOM_OPS = frozenset({"RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Bernoulli",
                        "Multinomial"})


class InferenceFormError(ValueError):
    """A training-only output (running statistic, dropout mask) is used by the graph."""


def _is_default_domain(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def _producer(v: ir.Value | None, op: str) -> ir.Node | None:
    p = v.producer() if v is not None else None
    return p if p is not None and p.op_type == op and _is_default_domain(p) else None


def _scalar(v: ir.Value | None) -> float | None:
    """The value of a one-element constant (initializer or ``Constant`` node), or None."""
    arr = constant_array(v)
    return float(arr.reshape(-1)[0]) if arr is not None and arr.size == 1 else None


def _uniform01(v: ir.Value | None) -> bool:
    """Whether ``v`` is a draw of U[0, 1) (RandomUniform/RandomUniformLike with the default bounds)."""
    p = v.producer() if v is not None else None
    if p is None or p.op_type not in ("RandomUniform", "RandomUniformLike") or not _is_default_domain(p):
        return False
    return p.attributes.get_float("low", 0.0) == 0.0 and p.attributes.get_float("high", 1.0) == 1.0


def _bernoulli(v: ir.Value | None) -> float | None:
    """q when ``v`` is a Bernoulli(q) mask as torch exports it (``Cast(Less(U, q))``: ``bernoulli_``,
    or ``Floor(Add(U, q))``: the older ``drop_path``), else None."""
    cast = _producer(v, "Cast")
    if cast is not None:
        less = _producer(cast.inputs[0], "Less")
        if less is not None and _uniform01(less.inputs[0]):
            return _scalar(less.inputs[1])
        return None
    floor = _producer(v, "Floor")
    add = _producer(floor.inputs[0], "Add") if floor is not None else None
    if add is not None:
        for i in (0, 1):
            if _uniform01(add.inputs[i]):
                return _scalar(add.inputs[1 - i])
    return None


def _same(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and bool(np.isclose(a, b, rtol=1e-6, atol=0.0))


def drop_path_input(node: ir.Node) -> ir.Value | None:
    """The value a stochastic-depth / drop-path ``Mul`` passes on unchanged at inference, or None.

    Recognised: ``x * (B / q)`` and ``(x / q) * B`` with ``B`` a Bernoulli(q) mask (see
    :func:`_bernoulli`), in either operand order, and ``x * B`` when q is 0 (torchvision does not
    divide by a survival rate of 0). Anything else is not a drop path.
    """
    if node.op_type != "Mul" or not _is_default_domain(node) or len(node.inputs) != 2:
        return None
    for i in (0, 1):
        x, m = node.inputs[i], node.inputs[1 - i]
        div = _producer(m, "Div")
        if div is not None and _same(_bernoulli(div.inputs[0]), _scalar(div.inputs[1])):
            return x
        q = _bernoulli(m)
        if q is None:
            continue
        xdiv = _producer(x, "Div")
        if xdiv is not None and _same(q, _scalar(xdiv.inputs[1])):
            return xdiv.inputs[0]
        if q == 0.0:
            return x
    return None


def random_ops(model: ir.Model) -> list[ir.Node]:
    """The nodes of ``model``'s main graph whose outputs are random draws (``RANDOM_OPS``)."""
    return [n for n in model.graph if n.op_type in RANDOM_OPS and _is_default_domain(n)]


def is_inference_form(model: ir.Model) -> bool:
    """Whether ``model``'s main graph has no training-mode BatchNormalization, no Dropout and no
    drop path (:func:`drop_path_input`)."""
    for node in model.graph:
        if not _is_default_domain(node):
            continue
        if node.op_type == "Dropout" or (node.op_type == "Mul" and drop_path_input(node) is not None):
            return False
        if node.op_type == "BatchNormalization":
            attr = node.attributes.get("training_mode")
            if len(node.outputs) > 1 or (attr is not None and attr.as_int() != 0):
                return False
    return True


def _to_identity(graph: ir.Graph, node: ir.Node, x: ir.Value) -> None:
    """Replaces ``node`` (one output) by ``Identity(x)`` keeping the output's name, type and shape."""
    ident = ir.node("Identity", inputs=[x], name=node.name)
    graph.insert_before(node, ident)
    take_over(graph, node.outputs[0], ident.outputs[0])
    old_inputs = list(node.inputs)
    graph.remove(node, safe=True)
    remove_dead_upstream(graph, old_inputs)


def to_inference(model: ir.Model, *, copy: bool = True) -> ir.Model:
    """Returns the inference form of ``model`` (see the module docstring).

    Parameter values and initializer names are unchanged: the BatchNorm running statistics in
    the initializers are what inference uses, so the model should carry trained statistics.

    Args:
        model: The model, typically a training-mode export.
        copy: Work on a clone (default); with ``False`` the model is rewritten in place.

    Returns:
        The inference-form model (the clone, or ``model`` itself).

    Raises:
        InferenceFormError: A running-statistics output of a BatchNormalization, or a Dropout
            mask, is used by another node or is a graph output.
    """
    out = model.clone() if copy else model
    graph = out.graph
    for node in list(graph):
        if not _is_default_domain(node) or node.graph is not graph:  # (removed as a drop path's mask)
            continue
        if node.op_type == "BatchNormalization":
            for extra in node.outputs[1:]:
                if extra.uses() or extra.is_graph_output():
                    raise InferenceFormError(
                        f"BatchNormalization {node.name!r}: its running-statistics output {extra.name!r} is used; "
                        "cannot convert it to inference mode"
                    )
            if len(node.outputs) > 1:
                node.resize_outputs(1)
            node.attributes.pop("training_mode", None)
        elif node.op_type == "Dropout":
            for extra in node.outputs[1:]:
                if extra.uses() or extra.is_graph_output():
                    raise InferenceFormError(
                        f"Dropout {node.name!r}: its mask output {extra.name!r} is used; cannot remove the Dropout"
                    )
            _to_identity(graph, node, node.inputs[0])
        elif node.op_type == "Mul":
            x = drop_path_input(node)
            if x is not None:
                _to_identity(graph, node, x)
    return out
