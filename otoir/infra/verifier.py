"""The structural verifier, run after every pass by default.

It checks what every later pass relies on: the graph is in topological order, every node
input is defined before use (graph input, initializer or an earlier node's output), value
names are unique, graph outputs are defined, initializers carry data, every node's domain is
imported, and subgraphs obey the same rules (with access to outer-scope values).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from otoir.infra.diagnostics import Diagnostic, Severity

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["verify_model"]


def verify_model(model: ir.Model, limit: int = 20) -> list[Diagnostic]:
    """Returns the structural errors of ``model`` (empty when it is well-formed).

    Args:
        model: The model to check.
        limit: Stop after this many errors.
    """
    diags: list[Diagnostic] = []
    opsets = dict(model.opset_imports)
    _verify_graph(model.graph, set(), opsets, diags, limit)
    return diags


def _verify_graph(graph, outer: set, opsets: dict, diags: list[Diagnostic], limit: int) -> None:
    import onnx_ir as ir

    defined: set = set(outer)
    names: dict[str, object] = {}

    def define(value, where) -> None:
        if value is None:
            return
        defined.add(value)
        if value.name:
            prev = names.get(value.name)
            if prev is not None and prev is not value:
                diags.append(Diagnostic.at(where if isinstance(where, ir.Node) else None, Severity.ERROR,
                                           f"value name '{value.name}' is defined twice"))
            names[value.name] = value

    for v in graph.inputs:
        define(v, None)
    for name, v in graph.initializers.items():
        define(v, None)
        if v.const_value is None:
            diags.append(Diagnostic(Severity.ERROR, f"initializer '{name}' has no data"))
    for node in graph:
        if len(diags) >= limit:
            return
        domain = "" if node.domain == "ai.onnx" else node.domain
        if domain not in opsets and not (domain == "" and "ai.onnx" in opsets):
            diags.append(Diagnostic.at(node, Severity.ERROR, f"domain '{domain or 'ai.onnx'}' is not imported by the model"))
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if v not in defined:
                producer = v.producer()
                why = "is used before it is defined (graph not in topological order)" if producer is not None and producer.graph is graph else "is not defined"
                diags.append(Diagnostic.at(node, Severity.ERROR, f"input {i} '{v.name}' {why}"))
        for attr in node.attributes.values():
            sub = []
            if attr.type == ir.AttributeType.GRAPH:
                sub = [attr.value]
            elif attr.type == ir.AttributeType.GRAPHS:
                sub = list(attr.value)
            for g in sub:
                _verify_graph(g, defined, opsets, diags, limit)
        for v in node.outputs:
            define(v, node)
    for i, v in enumerate(graph.outputs):
        if v not in defined:
            diags.append(Diagnostic(Severity.ERROR, f"graph output {i} '{v.name}' is not defined"))
