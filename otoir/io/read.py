"""Reading models: ``otoir.load`` and ``otoir.io.load_bytes``.

``load`` accepts an ``.onnx`` path (with or without external data), an ONNX text file
(``.onnxtxt``), an ``onnx.ModelProto``, an ``onnx_ir.Model``, an onnx-graphsurgeon ``Graph``,
or a ``torch.nn.Module`` with example inputs. External data is resolved against the model
file's directory, never the current directory.
"""

from __future__ import annotations

import math
import os
import stat
from typing import Any

import onnx_ir as ir

from otoir.errors import InputError
from otoir.io._common import DEFAULT_IR_VERSION, _reason

__all__ = ["load", "load_bytes", "from_graphsurgeon", "to_graphsurgeon"]


def load(source: Any, example_inputs: Any = None, **torch_kwargs: Any) -> ir.Model:
    """Loads a model into onnx-ir.

    External data is resolved relative to the model file (never the current directory) and
    checked when loading: every referenced file must exist inside the model's directory and
    hold the tensor's bytes. The loaded tensors read their data from the file lazily (memory
    mapped) and serialize inline, so a loaded model behaves the same from any directory,
    also after a copy through protobuf (``onnx_ir.to_proto``) or in an ONNX Runtime session.
    (A ``ModelProto``'s external data, having no file, is resolved against the current directory.)

    Args:
        source: A path to ``.onnx`` or ONNX text, an ``onnx.ModelProto``, an ``onnx_ir.Model``
            (returned as is), an onnx-graphsurgeon ``Graph``, or a ``torch.nn.Module``.
        example_inputs: For a torch module: a tensor or a tuple of tensors to trace with.
        **torch_kwargs: Passed to :func:`otoir.frontends.torch_export.export_torch`.

    Raises:
        InputError: The source cannot be read; the message names the file and the reason.
    """
    if isinstance(source, ir.Model):
        return source
    if isinstance(source, (str, os.PathLike)):
        return _load_path(os.fspath(source))
    kind = type(source).__module__ + "." + type(source).__qualname__
    if kind.startswith("onnx.") and type(source).__name__ == "ModelProto":
        try:
            model = ir.serde.deserialize_model(source)
        except Exception as exc:
            raise InputError(f"cannot convert ModelProto: {_reason(exc)}") from None
        return _check_and_resolve(model, "ModelProto", os.getcwd())
    if kind.startswith("onnx_graphsurgeon"):
        return from_graphsurgeon(source)
    if _is_torch_module(source):
        if example_inputs is None:
            raise InputError("loading a torch.nn.Module needs example_inputs")
        from otoir.frontends.torch_export import export_torch

        return export_torch(source, example_inputs, **torch_kwargs)
    raise InputError(f"cannot load an object of type {kind}")


def load_bytes(data: bytes, *, name: str = "<stdin>", base_dir: str | os.PathLike | None = None) -> ir.Model:
    """Loads a model from bytes (binary ONNX or ONNX text), e.g. read from stdin.

    Args:
        data: The file's content.
        name: How error messages name the source.
        base_dir: Directory external data is resolved against (default: the current one).

    Raises:
        InputError: The bytes are not a model; the message names ``name``.
    """
    base = os.path.abspath(os.fspath(base_dir) if base_dir is not None else os.getcwd())
    return _load_data(data, name, base)


def _is_torch_module(obj: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    stripped = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")).lstrip()
    return stripped.startswith("<") or (stripped[:1].isalpha() and "{" in text)


def _is_utf8_text(head: bytes) -> bool:
    if not head or any(b < 32 and b not in (9, 10, 12, 13) for b in head):
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _load_path(path: str) -> ir.Model:
    if not os.path.exists(path):
        raise InputError(f"cannot read '{path}': no such file")
    if os.path.isdir(path):
        raise InputError(f"cannot read '{path}': is a directory")
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read '{path}': permission denied")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise InputError(f"cannot read '{path}': {exc.strerror or _reason(exc)}") from None
    text = path.endswith((".onnxtxt", ".txt"))
    return _load_data(data, path, os.path.dirname(os.path.abspath(path)), text=text)


def _load_data(data: bytes, display: str, base_dir: str, *, text: bool = False) -> ir.Model:
    """Parses a model file's bytes (``display`` names it in errors; external data is under ``base_dir``)."""
    import onnx

    head = data[:4096]
    if text or _looks_like_text(head):
        return _check_and_resolve(_load_text(data, display), display, base_dir)
    try:
        proto = onnx.ModelProto()
        proto.ParseFromString(data)
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # protobuf DecodeError and friends
        if _is_utf8_text(head):  # a text file that is not ONNX text either
            return _check_and_resolve(_load_text(data, display), display, base_dir)
        raise InputError(f"'{display}' is not a valid ONNX model: {_reason(exc)}") from None
    if model.graph is None or (len(model.graph) == 0 and not model.graph.outputs):
        raise InputError(f"'{display}' is not a valid ONNX model: empty graph")
    return _check_and_resolve(model, display, base_dir)


def _load_text(data: bytes, display: str) -> ir.Model:
    import onnx.parser

    text = data.decode("utf-8", errors="replace")
    try:
        proto = onnx.parser.parse_model(text)
    except Exception as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        reason = " ".join(str(detail).split())
        raise InputError(f"'{display}' is not valid ONNX text: {reason}") from None
    if not proto.graph.node and not proto.graph.output:
        raise InputError(f"'{display}' is not valid ONNX text: no graph")
    try:
        return ir.serde.deserialize_model(proto)
    except Exception as exc:
        raise InputError(f"'{display}' is not valid ONNX text: {_reason(exc)}") from None


def _tensor_nbytes(dtype: ir.DataType, shape: ir.Shape) -> int | None:
    """Bytes a dense tensor of this dtype and shape takes (None when unknown, e.g. strings)."""
    try:
        itemsize = dtype.itemsize
        dims = [int(d) for d in shape]
    except (TypeError, ValueError):
        return None
    size = 1
    for d in dims:
        size *= d
    return math.ceil(size * itemsize)


def _check_and_resolve(model: ir.Model, display: str, base_dir: str) -> ir.Model:
    """Checks every tensor's data; makes external data independent of the current directory.

    Each external tensor is checked (a relative location inside ``base_dir``, the file present
    and long enough) and replaced by a lazy tensor reading the absolute path: it stays memory
    mapped, and copies through protobuf carry the bytes inline instead of a relative location.

    Raises:
        InputError: Naming ``display`` and the tensor.
    """
    for graph in [model.graph, *model.graph.subgraphs()]:
        for name, value in graph.initializers.items():
            tensor = value.const_value
            if tensor is None:
                continue
            if isinstance(tensor, ir.ExternalTensor):
                value.const_value = _resolved_external(tensor, f"initializer '{name}'", display, base_dir)
            else:
                _check_inline(tensor, f"initializer '{name}'", display)
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.TENSOR and attr.value is not None:
                    where = f"attribute '{attr.name}' of node '{node.name or node.op_type}'"
                    if isinstance(attr.value, ir.ExternalTensor):
                        _resolved_external(attr.value, where, display, base_dir)
                    else:
                        _check_inline(attr.value, where, display)
    return model


def _check_inline(tensor: Any, what: str, display: str) -> None:
    expected = _tensor_nbytes(tensor.dtype, tensor.shape)
    raw = getattr(tensor, "raw", None)
    raw_data = getattr(raw, "raw_data", None) if raw is not None and hasattr(raw, "HasField") else None
    if raw_data and expected is not None:
        if len(raw_data) != expected:
            raise InputError(f"'{display}': {what} has {len(raw_data)} bytes of data, but its type "
                             f"{tensor.dtype.name}{list(tensor.shape)} needs {expected}")
        return  # the right number of bytes: readable
    if tensor.dtype == ir.DataType.STRING:
        return
    try:
        tensor.numpy()
    except Exception as exc:
        raise InputError(f"'{display}': {what} has unreadable data: {_reason(exc)}") from None


def _resolved_external(tensor: ir.ExternalTensor, label: str, display: str, base_dir: str) -> ir.TensorProtocol:
    location = os.fspath(tensor.location)
    if not location or os.path.isabs(location):
        raise InputError(f"'{display}': {label}: external data location '{location}' must be a relative file name")
    base_real = os.path.realpath(base_dir)
    full = os.path.normpath(os.path.join(base_dir, location))
    real = os.path.realpath(full)
    inside = (full + os.sep).startswith(os.path.normpath(base_dir) + os.sep) and real.startswith(base_real + os.sep)
    if not inside:
        raise InputError(f"'{display}': {label}: external data '{location}' is outside the model's directory")
    try:
        st = os.stat(real)
    except OSError as exc:
        raise InputError(f"'{display}': {label}: cannot read external data '{full}': {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"'{display}': {label}: external data '{full}' is not a regular file")
    offset = tensor.offset or 0
    expected = _tensor_nbytes(tensor.dtype, tensor.shape)
    length = tensor.length if tensor.length is not None else expected
    if offset < 0 or (length is not None and length < 0):
        raise InputError(f"'{display}': {label}: bad external data offset/length ({offset}, {length})")
    if expected is not None and length is not None and length != expected:
        raise InputError(f"'{display}': {label}: external data length {length} does not match its type "
                         f"{tensor.dtype.name}{list(tensor.shape)} ({expected} bytes)")
    if length is not None and offset + length > st.st_size:
        raise InputError(f"'{display}': {label}: external data '{full}' is too short "
                         f"({st.st_size} bytes, the tensor needs bytes {offset}..{offset + length})")
    resolved = ir.ExternalTensor(os.path.basename(real), tensor.offset, tensor.length, tensor.dtype,
                                 shape=tensor.shape, name=tensor.name, doc_string=tensor.doc_string,
                                 base_dir=os.path.dirname(real))
    return ir.LazyTensor(lambda: resolved, dtype=tensor.dtype, shape=tensor.shape, name=tensor.name,
                         doc_string=tensor.doc_string)


def from_graphsurgeon(graph: Any) -> ir.Model:
    """Converts an onnx-graphsurgeon ``Graph`` to onnx-ir (stamping IR 10 when gs leaves it newer)."""
    import onnx_graphsurgeon as gs

    proto = gs.export_onnx(graph)
    if proto.ir_version > DEFAULT_IR_VERSION:
        proto.ir_version = DEFAULT_IR_VERSION
    return ir.serde.deserialize_model(proto)


def to_graphsurgeon(model: ir.Model) -> Any:
    """Converts an onnx-ir model to an onnx-graphsurgeon ``Graph``."""
    import onnx_graphsurgeon as gs

    return gs.import_onnx(ir.serde.serialize_model(model))
