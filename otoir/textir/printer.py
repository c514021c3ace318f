"""Prints a model in the ONNX text syntax, one node a line, with analysis annotations.

Annotations appear as a comment line above the node they describe::

    # otoir.vertex=stem otoir.reason="sets the output channel count"
    conv1_out = Conv <...> (x, conv1.weight)

With ``metadata=True`` a node's ``otoir.*`` ``metadata_props`` (e.g. ``otoir.groups``, written by
``print-groups{annotate-metadata=true}``) appear as a ``# metadata:`` comment line above it.

The ONNX parser skips comments, so annotated text parses back to the same model (unless
initializers were elided, which drops their data; node metadata is not kept by the text form).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx.printer
import onnx_ir as ir

if TYPE_CHECKING:
    from otoir.infra.analysis import Analysis

__all__ = ["print_model", "format_annotation"]


def _quoted(value: object) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"#' for c in text):
        text = '"' + text.replace('"', "'") + '"'
    return text


def format_annotation(values: dict[str, object]) -> str:
    """Formats ``{key: value}`` as ``otoir.key=value`` pairs (quoted when needed)."""
    return " ".join(f"otoir.{key}={_quoted(value)}" for key, value in values.items())


def print_model(model: ir.Model, *, analyses: Iterable[Analysis] = (), elide_larger_than: int | None = None,
                metadata: bool = False) -> str:
    """Returns the ONNX text of ``model``.

    Args:
        model: The model.
        analyses: Analyses whose ``annotations()`` are printed above the nodes.
        elide_larger_than: Drop the data of initializers with more elements than this (a
            comment lists them); ``None`` prints everything, so the text parses back.
        metadata: Print each node's ``otoir.*`` ``metadata_props`` as a comment line above it
            (other keys, such as exporters' stack traces, are left out).
    """
    annotations: dict[ir.Node, dict[str, object]] = {}
    for a in analyses:
        for node, values in a.annotations().items():
            annotations.setdefault(node, {}).update(values)

    proto = _header_proto(model, elide_larger_than)
    elided = [n for n, v in model.graph.initializers.items()
              if elide_larger_than is not None and v.const_value is not None and _numel(v) > elide_larger_than]
    header = onnx.printer.to_text(proto).rstrip()
    if not header.endswith("}"):
        raise RuntimeError("unexpected ONNX printer output")
    body = header[:-1].rstrip()
    if body.endswith("{"):
        body = body[:-1].rstrip()
    lines = [body, "{"]
    for name in elided:
        v = model.graph.initializers[name]
        lines.append(f"   # otoir.elided-initializer: {_type_str(v)} {name}")
    for node in model.graph:
        note = annotations.get(node)
        if note:
            lines.append("   # " + format_annotation(note))
        ours = {k: v for k, v in node.metadata_props.items() if k.startswith("otoir.")} if metadata else {}
        if ours:  # only otoir's keys: exporters leave long ones (stack traces) there
            lines.append("   # metadata: " + " ".join(f"{k}={_quoted(v)}" for k, v in ours.items()))
        lines.append(onnx.printer.to_text(ir.serde.serialize_node(node)).rstrip("\n"))
    lines.append("}")
    for func in model.functions.values():
        lines.append(onnx.printer.to_text(ir.serde.serialize_function(func)).rstrip("\n"))
    return "\n".join(lines) + "\n"


def _numel(v: ir.Value) -> int:
    return int(np.prod(v.const_value.shape.numpy())) if v.const_value is not None else 0


def _type_str(v: ir.Value) -> str:
    t = v.const_value
    dtype = t.dtype.name.lower() if t is not None else "?"
    dims = ",".join(str(d) for d in t.shape) if t is not None else ""
    return f"{dtype}[{dims}]"


def _header_proto(model: ir.Model, elide: int | None) -> onnx.ModelProto:
    """A proto of the model without nodes or functions, with large initializers dropped."""
    graph = model.graph
    proto = onnx.ModelProto()
    proto.ir_version = model.ir_version
    if model.producer_name:
        proto.producer_name = model.producer_name
    for domain, version in model.opset_imports.items():
        entry = proto.opset_import.add()
        entry.domain = domain
        entry.version = version
    g = proto.graph
    g.name = graph.name or "main_graph"
    for v in graph.inputs:
        g.input.append(ir.serde.serialize_value(v))
    for v in graph.outputs:
        g.output.append(ir.serde.serialize_value(v))
    for name, v in graph.initializers.items():
        if v.const_value is None:
            continue
        if elide is not None and _numel(v) > elide:
            continue
        t = ir.serde.serialize_tensor(v.const_value)
        t.name = name
        g.initializer.append(t)
    return proto
