"""Import and export: ``otoir.load`` and ``otoir.save``.

``load`` accepts an ``.onnx`` path (with or without external data), an ONNX text file
(``.onnxtxt``), an ``onnx.ModelProto``, an ``onnx_ir.Model``, an onnx-graphsurgeon ``Graph``,
or a ``torch.nn.Module`` with example inputs. ``save`` writes atomically.
"""

from otoir.io._common import DEFAULT_IR_VERSION, TWO_GB, inline_proto, model_nbytes
from otoir.io.read import from_graphsurgeon, load, load_bytes, to_graphsurgeon
from otoir.io.write import atomic_write_text, resolve_output, save

__all__ = [
    "load",
    "load_bytes",
    "save",
    "resolve_output",
    "from_graphsurgeon",
    "to_graphsurgeon",
    "atomic_write_text",
    "model_nbytes",
    "inline_proto",
    "TWO_GB",
    "DEFAULT_IR_VERSION",
]
