"""Writing models: ``otoir.save`` and ``otoir.io.atomic_write_text``.

Every write goes to a temporary file beside the target and is renamed into place when
complete; special files are never replaced; modes and symlinks are respected; a model and its
external data replace the old pair so that any interrupted save leaves a loadable model.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from typing import TYPE_CHECKING

import onnx_ir as ir

from otoir.errors import OutputError
from otoir.io._common import TWO_GB, _graph_protos, _reason, inline_proto, model_nbytes

if TYPE_CHECKING:
    from otoir.infra.loadcheck import Baseline

__all__ = ["save", "resolve_output", "atomic_write_text"]


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
    for graph in _graph_protos(proto.graph):
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
    with open(path, "wb") as f:
        f.write(inline_proto(model).SerializeToString())


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
