"""The inference form of a training-mode model.

Models exported for training (``otoir.frontends.torch_export.export_torch``) contain
``BatchNormalization`` with ``training_mode=1`` and three outputs (Y, running mean, running var)
and ``Dropout`` nodes with a mask output. :func:`to_inference` rewrites them into the form a
deployed network has, without touching any parameter value:

* ``BatchNormalization`` gets ``training_mode=0`` and a single output; it then normalises with
  the running statistics held in its ``input_mean`` / ``input_var`` initializers.
* ``Dropout`` becomes ``Identity`` (the ratio and training-mode inputs are dropped; ``Constant``
  nodes that only fed them are removed).

The compressed sub-networks otoir writes are inference models.
"""

from __future__ import annotations

import onnx_ir as ir

__all__ = ["InferenceFormError", "to_inference", "is_inference_form"]


class InferenceFormError(ValueError):
    """A training-only output (running statistic, dropout mask) is used by the graph."""


def _is_default_domain(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def is_inference_form(model: ir.Model) -> bool:
    """Whether ``model``'s main graph has no training-mode BatchNormalization and no Dropout."""
    for node in model.graph:
        if not _is_default_domain(node):
            continue
        if node.op_type == "Dropout":
            return False
        if node.op_type == "BatchNormalization":
            attr = node.attributes.get("training_mode")
            if len(node.outputs) > 1 or (attr is not None and attr.as_int() != 0):
                return False
    return True


def _drop_dead_constants(graph: ir.Graph, values: list[ir.Value | None]) -> None:
    for v in values:
        if v is None or v.uses() or v.is_graph_output():
            continue
        prod = v.producer()
        if prod is not None and prod.op_type == "Constant" and _is_default_domain(prod) and prod.graph is graph:
            if all(not o.uses() and not o.is_graph_output() for o in prod.outputs):
                graph.remove(prod, safe=True)


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
        if not _is_default_domain(node):
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
            old_inputs = list(node.inputs)
            y_old = node.outputs[0]
            name = y_old.name
            ident = ir.node("Identity", inputs=[node.inputs[0]], name=node.name)
            y_new = ident.outputs[0]
            y_new.shape, y_new.type = y_old.shape, y_old.type
            graph.insert_before(node, ident)
            y_old.replace_all_uses_with(y_new, replace_graph_outputs=True)
            graph.remove(node, safe=True)
            y_new.name = name
            _drop_dead_constants(graph, old_inputs[1:])
    return out
