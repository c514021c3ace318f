"""Import and export: ``otoir.load`` and ``otoir.save``.

``load`` accepts an ``.onnx`` path (with or without external data), an ONNX text file
(``.onnxtxt``), an ``onnx.ModelProto``, an ``onnx_ir.Model``, an onnx-graphsurgeon ``Graph``,
or a ``torch.nn.Module`` with example inputs. ``save`` writes atomically.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

import onnx_ir as ir

from otoir.errors import InputError

if TYPE_CHECKING:
    from otoir.infra.loadcheck import Baseline

__all__ = [
    "load",
    "save",
    "from_graphsurgeon",
    "to_graphsurgeon",
    "atomic_write_text",
    "model_nbytes",
    "TWO_GB",
]

#: Protobuf's hard limit on a serialized message.
TWO_GB = 2**31
#: Default IR version stamped on models otoir creates (the highest onnxruntime-training 1.19 reads).
DEFAULT_IR_VERSION = 10


def load(source: Any, example_inputs: Any = None, **torch_kwargs: Any) -> ir.Model:
    """Loads a model into onnx-ir.

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
            return ir.serde.deserialize_model(source)
        except Exception as exc:
            raise InputError(f"cannot convert ModelProto: {exc}") from None
    if kind.startswith("onnx_graphsurgeon"):
        return from_graphsurgeon(source)
    if _is_torch_module(source):
        if example_inputs is None:
            raise InputError("loading a torch.nn.Module needs example_inputs")
        from otoir.frontends.torch_export import export_torch

        return export_torch(source, example_inputs, **torch_kwargs)
    raise InputError(f"cannot load an object of type {kind}")


def _is_torch_module(obj: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _looks_like_text(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    stripped = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")).lstrip()
    return stripped.startswith("<") or (stripped[:1].isalpha() and "{" in text)


def _is_utf8_text(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
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
    if path.endswith((".onnxtxt", ".txt")) or _looks_like_text(path):
        return _load_text(path)
    try:
        model = ir.load(path)
    except Exception as exc:  # protobuf DecodeError and friends
        if _is_utf8_text(path):  # a text file that is not ONNX text either
            return _load_text(path)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"'{path}' is not a valid ONNX model: {reason}") from None
    if model.graph is None or (len(model.graph) == 0 and not model.graph.outputs):
        raise InputError(f"'{path}' is not a valid ONNX model: empty graph")
    return model


def _load_text(path: str) -> ir.Model:
    import onnx.parser

    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    try:
        proto = onnx.parser.parse_model(text)
    except Exception as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        reason = " ".join(str(detail).split())
        raise InputError(f"'{path}' is not valid ONNX text: {reason}") from None
    if not proto.graph.node and not proto.graph.output:
        raise InputError(f"'{path}' is not valid ONNX text: no graph")
    return ir.serde.deserialize_model(proto)


def model_nbytes(model: ir.Model) -> int:
    """Total bytes of the model's initializers (all graphs)."""
    total = 0
    for graph in [model.graph, *model.graph.subgraphs()]:
        for v in graph.initializers.values():
            t = v.const_value
            if t is not None:
                total += t.nbytes
    return total


def save(model: ir.Model, path: str | os.PathLike, *, external_data: bool | str | None = None,
         size_threshold_bytes: int = 1024, check: bool | Baseline = True) -> None:
    """Saves a model atomically.

    The model is written to a temporary directory beside ``path`` and moved into place only
    when complete, so an error or Ctrl-C never leaves a partial file. External data is used
    when asked (``external_data=True`` gives ``<name>.data``; a string names the file) or
    when the initializers exceed 2 GB.

    Args:
        model: The model.
        path: The ``.onnx`` path to write (``.onnxtxt`` writes ONNX text).
        external_data: See above. ``False`` forbids it (and fails above 2 GB).
        size_threshold_bytes: Tensors smaller than this stay inline when external data is used.
        check: Before anything is written, prove the model loads (:mod:`otoir.infra.loadcheck`:
            ``onnx.checker`` full check, and with ONNX Runtime installed a session run once on
            random inputs; where this ORT lacks support, e.g. a custom-domain operator or a newer
            opset, the checker alone judges). ``False`` skips it (huge models); a
            :class:`~otoir.infra.loadcheck.Baseline` of the input requires only what the input passed.

    Raises:
        LoadCheckError: The model fails the load check (nothing is written; the message names the
            node and the pass that made it).
        OSError: The file cannot be written (nothing is left behind).
        ValueError: The model is over 2 GB and ``external_data=False``.
    """
    if check is not False:
        from otoir.infra.loadcheck import check_loadable

        check_loadable(model, baseline=None if check is True else check, subject=f"the model to write to '{os.fspath(path)}'")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    if path.endswith((".onnxtxt", ".txt")):
        from otoir.textir import print_model

        atomic_write_text(path, print_model(model, elide_larger_than=None))
        return
    big = model_nbytes(model) >= TWO_GB - 64 * 2**20
    if external_data is None:
        external_data = big
    if external_data is False and big:
        raise ValueError(f"cannot save '{path}' without external data: initializers exceed 2 GB")
    data_name = None
    if external_data:
        data_name = external_data if isinstance(external_data, str) else base + ".data"
    tmpdir = tempfile.mkdtemp(prefix=".otoir-save-", dir=directory)
    try:
        tmp_model = os.path.join(tmpdir, base)
        if data_name is not None:
            ir.save(model, tmp_model, external_data=data_name, size_threshold_bytes=size_threshold_bytes)
        else:
            _save_inline(model, tmp_model)
        # Data first, model last: a visible model file always has its data in place.
        if data_name is not None and os.path.exists(os.path.join(tmpdir, data_name)):
            os.replace(os.path.join(tmpdir, data_name), os.path.join(directory, data_name))
        os.replace(tmp_model, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _save_inline(model: ir.Model, path: str) -> None:
    """Saves with every tensor inline; tensors the source kept externally are read in."""
    import onnx

    proto = ir.serde.serialize_model(model)
    tensors = {name: v.const_value for g in [model.graph, *model.graph.subgraphs()]
               for name, v in g.initializers.items()}
    for graph in _all_graph_protos(proto.graph):
        for t in graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                t.raw_data = tensors[t.name].tobytes()
                del t.external_data[:]
                t.data_location = onnx.TensorProto.DEFAULT
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


def _all_graph_protos(graph):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_graph_protos(attr.g)
            for g in attr.graphs:
                yield from _all_graph_protos(g)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes text to ``path`` through a temporary file and a rename."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".otoir-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
