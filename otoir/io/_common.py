"""Pieces shared by reading and writing models: size limits, error reasons, inline protos."""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

__all__ = ["TWO_GB", "DEFAULT_IR_VERSION", "model_nbytes", "inline_proto"]

#: Protobuf's hard limit on a serialized message.
TWO_GB = 2**31
#: Default IR version stamped on models otoir creates (the highest onnxruntime-training 1.19 reads).
DEFAULT_IR_VERSION = 10


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty).

    onnx-ir's ``SerdeError`` ("Error calling _deserialize_graph with: g") wraps the real reason:
    the innermost cause is reported instead.
    """
    seen = 0
    while type(exc).__name__ == "SerdeError" and (exc.__cause__ or exc.__context__) is not None and seen < 20:
        exc = exc.__cause__ or exc.__context__
        seen += 1
    text = str(exc).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(exc).__name__


def model_nbytes(model: ir.Model) -> int:
    """Total bytes of the model's initializers (all graphs)."""
    total = 0
    for graph in [model.graph, *model.graph.subgraphs()]:
        for v in graph.initializers.values():
            t = v.const_value
            if t is not None:
                total += t.nbytes
    return total


def inline_proto(model: ir.Model) -> Any:
    """The ``onnx.ModelProto`` of ``model`` with every tensor inline.

    Tensors the model keeps in external data files are read in, so the proto can be written as
    one file or handed to ONNX Runtime or the ONNX checker as bytes, whatever the current
    directory.
    """
    import onnx

    proto = ir.serde.serialize_model(model)
    tensors = None
    for graph in _graph_protos(proto.graph):
        for t in graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                if tensors is None:
                    tensors = {name: v.const_value for g in [model.graph, *model.graph.subgraphs()]
                               for name, v in g.initializers.items()}
                t.raw_data = tensors[t.name].tobytes()
                del t.external_data[:]
                t.data_location = onnx.TensorProto.DEFAULT
    return proto


def _graph_protos(graph: Any):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graph_protos(attr.g)
            for g in attr.graphs:
                yield from _graph_protos(g)
