"""Import and export: ``otoir.load`` and ``otoir.save``.

``load`` accepts an ``.onnx`` path (with or without external data), an ONNX text file
(``.onnxtxt``), an ``onnx.ModelProto``, an ``onnx_ir.Model``, an onnx-graphsurgeon ``Graph``,
or a ``torch.nn.Module`` with example inputs. ``save`` writes atomically.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import stat
import tempfile
from typing import TYPE_CHECKING, Any

import onnx_ir as ir

from otoir.errors import InputError, OutputError

if TYPE_CHECKING:
    from otoir.infra.loadcheck import Baseline

__all__ = [
    "load",
    "load_bytes",
    "save",
    "resolve_output",
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


def model_nbytes(model: ir.Model) -> int:
    """Total bytes of the model's initializers (all graphs)."""
    total = 0
    for graph in [model.graph, *model.graph.subgraphs()]:
        for v in graph.initializers.values():
            t = v.const_value
            if t is not None:
                total += t.nbytes
    return total


def resolve_output(path: str | os.PathLike) -> str:
    """Checks an output path and returns the file to write (a symlink's final target).

    Args:
        path: The output path as the user gave it.

    Returns:
        The real path of the file that will be replaced or created.

    Raises:
        OutputError: The path is empty, its directory does not exist, or something other than
            a regular file (a device, fifo, socket or directory) is there.
    """
    display = os.fspath(path)
    if not display:
        raise OutputError("output path is empty")
    real = os.path.realpath(display)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(f"cannot write '{display}': {exc.strerror or _reason(exc)}") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OutputError(f"refusing to write '{display}': it is {_file_kind(st.st_mode)}, not a regular file")
    parent = os.path.dirname(real)
    if not os.path.isdir(parent):
        raise OutputError(f"cannot write '{display}': directory '{parent}' does not exist")
    return real


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a fifo"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide, racy with threads)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _target_mode(real: str) -> int:
    """Permission bits for the file written at ``real``: the existing file's, else 0666 & ~umask."""
    try:
        return stat.S_IMODE(os.stat(real).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _write_error(display: str, exc: OSError) -> OutputError:
    return OutputError(f"cannot write '{display}': {exc.strerror or _reason(exc)}")


def save(model: ir.Model, path: str | os.PathLike, *, external_data: bool | str | None = None,
         size_threshold_bytes: int = 1024, check: bool | Baseline = True) -> None:
    """Saves a model atomically.

    The model is written beside ``path`` and renamed into place only when complete, so an
    error or Ctrl-C never leaves a partial file. External data is used when asked
    (``external_data=True``) or when the initializers exceed 2 GB.

    Where ``path`` is a symlink, the file it points to is replaced (the link stays); with
    external data that is refused when the target is in another directory (readers look for
    the data beside the path they are given). An existing file keeps its permission bits; a
    new one gets ``0666 & ~umask``. Anything other than a regular file at ``path`` (device,
    fifo, socket, directory) is refused.

    With ``external_data=True`` the data goes to ``<name>.data``, or to a fresh
    ``<name>.<random>.data`` when that name is taken (e.g. by the data of the file being
    replaced). The data file is complete before the new ``.onnx`` that names it is renamed
    into place, and the replaced model's data file (``<name>.data`` or ``<name>.*.data``) is
    removed only afterwards, so a kill at any moment leaves a loadable model at ``path``: the
    old one with its data, or the new one with its data. A string ``external_data`` names the
    data file explicitly; that name is replaced in place (not crash-safe if the old model
    used the same name).

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
        OutputError: ``path`` cannot be written (the message names it; nothing is left behind).
        ValueError: The model is over 2 GB and ``external_data=False``.
    """
    display = os.fspath(path)
    real = resolve_output(display)
    if check is not False:
        from otoir.infra.loadcheck import check_loadable

        check_loadable(model, baseline=None if check is True else check, subject=f"the model to write to '{display}'")
    if display.endswith((".onnxtxt", ".txt")):
        from otoir.textir import print_model

        atomic_write_text(display, print_model(model, elide_larger_than=None))
        return
    big = model_nbytes(model) >= TWO_GB - 64 * 2**20
    if external_data is None:
        external_data = big
    if external_data is False and big:
        raise ValueError(f"cannot save '{display}' without external data: initializers exceed 2 GB")
    if isinstance(external_data, str) and (not external_data or os.path.basename(external_data) != external_data
                                           or external_data in (".", "..")):
        raise OutputError(f"cannot write '{display}': external data name '{external_data}' must be a plain file name")
    directory, base = os.path.split(real)
    if external_data and os.path.dirname(os.path.abspath(display)) != directory:
        # Readers (ONNX Runtime, onnx, otoir) look for the data beside the path they are given.
        raise OutputError(f"refusing to write '{display}' with external data: it is a symlink to '{real}' in "
                          "another directory, where its data file would not be found; give the target path")
    mode = _target_mode(real)
    old_data = _own_data_files(directory, base)
    old_refs = _external_locations(real) if old_data else set()
    tmpdir = None
    placed: str | None = None  # a data file we created in ``directory`` (removed on failure)
    committed = False
    try:
        data_name = None
        if external_data:
            if isinstance(external_data, str):
                data_name = external_data
            else:
                data_name = _claim_data_name(directory, base)
                placed = os.path.join(directory, data_name)
        tmpdir = tempfile.mkdtemp(prefix=f".{base}.otoir-", dir=directory)
        tmp_model = os.path.join(tmpdir, base)
        if data_name is not None:
            ir.save(model, tmp_model, external_data=data_name, size_threshold_bytes=size_threshold_bytes)
        else:
            _save_inline(model, tmp_model)
        os.chmod(tmp_model, mode)
        new_refs: set[str] = set()
        if data_name is not None:
            tmp_data = os.path.join(tmpdir, data_name)
            if os.path.exists(tmp_data):
                os.chmod(tmp_data, mode)
                os.replace(tmp_data, os.path.join(directory, data_name))
                placed = os.path.join(directory, data_name)
                new_refs.add(data_name)
            elif placed is not None:  # every tensor stayed inline: drop the claimed name
                os.unlink(placed)
                placed = None
        # The model last: whatever references it holds are complete by now.
        os.replace(tmp_model, real)
        committed = True
        for name in (old_refs & old_data) - new_refs:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
    except OSError as exc:
        raise _write_error(display, exc) from None
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        if not committed and placed is not None and not isinstance(external_data, str):
            with contextlib.suppress(OSError):
                os.unlink(placed)


def _own_data_names_re(base: str) -> re.Pattern:
    return re.compile(re.escape(base) + r"(\.[A-Za-z0-9_]+)?\.data")


def _own_data_files(directory: str, base: str) -> set[str]:
    """Data files ``save`` may have written for ``base``: ``<base>.data``, ``<base>.<random>.data``."""
    pattern = _own_data_names_re(base)
    try:
        return {n for n in os.listdir(directory) if pattern.fullmatch(n)}
    except OSError:
        return set()


def _external_locations(path: str) -> set[str]:
    """The external data files the model at ``path`` refers to (empty when unreadable)."""
    import onnx

    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:
        return set()
    found = set()
    for graph in _all_graph_protos(proto.graph):
        tensors = list(graph.initializer)
        for node in graph.node:
            tensors += [a.t for a in node.attribute if a.HasField("t")]
        for t in tensors:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                found.update(e.value for e in t.external_data if e.key == "location")
    return found


def _claim_data_name(directory: str, base: str) -> str:
    """Creates (exclusively) an empty data file for ``base`` and returns its name."""
    try:
        fd = os.open(os.path.join(directory, base + ".data"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fd, full = tempfile.mkstemp(prefix=base + ".", suffix=".data", dir=directory)
        os.close(fd)
        return os.path.basename(full)
    os.close(fd)
    return base + ".data"


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
    """Writes text to ``path`` through a temporary file beside it and a rename.

    Follows a symlink at ``path`` to its target, keeps an existing file's permission bits (a
    new file gets ``0666 & ~umask``) and refuses anything that is not a regular file.

    Raises:
        OutputError: ``path`` cannot be written (the message names it; nothing is left behind).
    """
    display = os.fspath(path)
    real = resolve_output(display)
    mode = _target_mode(real)
    directory, base = os.path.split(real)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".otoir-tmp", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
        os.replace(tmp, real)
        tmp = None
    except OSError as exc:
        raise _write_error(display, exc) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


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
