"""Training data of any ordinary form, fitted to a model's inputs: the one place data is read.

Every training path (the ``train`` pass on ONNX Runtime or torch, :func:`otoir.compress`, the
output check of ``otoir-erase`` / ``otoir-prune``) reads data through a :class:`DataSource`:

* :class:`Dataset`: arrays in memory (a built-in dataset, an ``.npz`` file, numpy arrays);
  batches are drawn from a ``numpy.random.default_rng(seed)`` permutation per epoch.
* :class:`StreamData`: a torch ``DataLoader`` or any iterable of batches, read batch by batch
  and never collected (only the first few batches are kept, for the output check).

:func:`as_data` turns what a user passes into a source. A *batch* of a stream is

* ``(inputs, labels)``: ``inputs`` a tensor/array, a tuple/list of them (the model's inputs by
  position) or a dict (by input name);
* ``(x0, x1, …, labels)``: a tuple of three or more: all but the last are inputs;
* a dict: ``labels`` / ``label`` / ``targets`` / ``y`` is the labels, the other keys inputs by name
  (the Hugging Face convention);
* a single tensor/array: inputs only (no labels; ``loss=output``).

:func:`bind` fits a source to a model once, before training: it maps the batch's inputs to the
model's data inputs (by name for dicts, else by position), keeps integer inputs integer (token
ids, masks: cast to the model's integer type) and makes floating inputs the model's float type,
and checks the count, rank, fixed dimensions and kind of every input. Anything that does not
fit raises :class:`DataFitError` with one line naming the data and the model input.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = [
    "Binding",
    "DataFitError",
    "DataSource",
    "DatasetError",
    "Dataset",
    "StreamData",
    "as_data",
    "bind",
    "rebatch",
    "to_numpy",
]

#: Keys of a dict batch that hold the labels (first found wins).
LABEL_KEYS = ("labels", "label", "targets", "target", "y")

Inputs = "np.ndarray | tuple[np.ndarray, ...] | dict[str, np.ndarray]"


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or does not follow the documented format."""


class DataFitError(DatasetError):
    """The data do not fit the model's inputs (count, shape, channels or dtype); one line."""


def to_numpy(x: Any) -> np.ndarray:
    """A torch tensor (any device) or array-like as a numpy array (no copy when possible)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _split(batch: Any) -> tuple[Any, Any]:
    """(inputs, labels) of one raw batch (see the module docstring)."""
    if isinstance(batch, Mapping):
        key = next((k for k in LABEL_KEYS if k in batch), None)
        return {k: v for k, v in batch.items() if k != key}, (None if key is None else batch[key])
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        if len(batch) > 2:
            return tuple(batch[:-1]), batch[-1]
        if len(batch) == 1:
            return batch[0], None
        raise DataFitError("a batch is an empty tuple")
    return batch, None


def _inputs_numpy(inputs: Any) -> tuple[np.ndarray, ...] | dict[str, np.ndarray]:
    if isinstance(inputs, Mapping):
        return {str(k): to_numpy(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(to_numpy(v) for v in inputs)
    return (to_numpy(inputs),)


def _rows(inputs: tuple[np.ndarray, ...] | dict[str, np.ndarray]) -> int:
    first = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs[0]
    return int(first.shape[0]) if np.ndim(first) else 1


class DataSource:
    """Training (and optionally validation) data, batch by batch.

    Attributes:
        name: What the data is called in messages and reports (a name, a path, ``<DataLoader>``).
        num_classes: Number of classes of integer labels (0: unknown or regression targets).
    """

    name: str = "<data>"
    num_classes: int = 0

    def batches(self, batch: int | None, *,
                rng: np.random.Generator | None = None) -> Iterator[tuple[Any, np.ndarray | None]]:
        """One epoch of raw ``(inputs, labels)`` batches as numpy (inputs: tuple or dict).

        ``batch`` is the batch size of array data, drawn in ``rng.permutation`` order (in order
        without ``rng``); the last incomplete batch is skipped. A stream keeps its own batches
        and order.
        """
        raise NotImplementedError

    def steps_per_epoch(self, batch: int | None) -> int | None:
        """Full batches of ``batch`` rows in one epoch (None: unknown)."""
        raise NotImplementedError

    def samples(self, n: int) -> tuple[Any, np.ndarray | None]:
        """At most ``n`` rows (inputs, labels) from the start of the data, for checks."""
        parts = []
        got = 0
        for b in self.batches(None if n <= 0 else min(n, 256)):
            parts.append(b)
            got += _rows(b[0])
            if got >= n:
                break
        if not parts:
            raise DataFitError(f"data '{self.name}' yields no batch")
        return _concat(parts, n)

    def validation(self) -> tuple[Any, np.ndarray | None] | None:
        """Held-out ``(inputs, labels)`` in memory, or None."""
        return None

    @property
    def reiterable(self) -> bool:
        """Whether every call of :meth:`batches` starts the data again (several epochs)."""
        return True


def _concat(parts: list[tuple[Any, Any]], n: int | None = None) -> tuple[Any, np.ndarray | None]:
    first = parts[0][0]
    cut = slice(0, n)
    if isinstance(first, dict):
        xs: Any = {k: np.concatenate([p[0][k] for p in parts])[cut] for k in first}
    else:
        xs = tuple(np.concatenate([p[0][i] for p in parts])[cut] for i in range(len(first)))
    ys = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])[cut]
    return xs, ys


@dataclass(frozen=True)
class Dataset(DataSource):
    """Arrays in memory: a built-in dataset, an ``.npz`` file or numpy arrays.

    Attributes:
        train_x: Training inputs, batch first: one array (a one-input model), a tuple (inputs
            by position) or a dict (inputs by name). Integer inputs stay integer.
        train_y: Training labels: int64 ``(N,)`` class indices, float targets, or None.
        val_x: Validation inputs (same form as ``train_x``) or ``None``.
        val_y: Validation labels or ``None``.
        num_classes: Number of classes (0 for regression targets or no labels).
        name: The built-in name or the file path.
    """

    train_x: Any
    train_y: np.ndarray | None
    val_x: Any = None
    val_y: np.ndarray | None = None
    num_classes: int = 0
    name: str = "<arrays>"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample of the (first) input, without the batch dimension."""
        first = self._inputs(self.train_x)
        arr = next(iter(first.values())) if isinstance(first, dict) else first[0]
        return tuple(arr.shape[1:])

    @staticmethod
    def _inputs(x: Any) -> tuple[np.ndarray, ...] | dict[str, np.ndarray]:
        if isinstance(x, dict):
            return x
        if isinstance(x, tuple):
            return x
        return (x,)

    def __len__(self) -> int:
        return _rows(self._inputs(self.train_x))

    def steps_per_epoch(self, batch: int | None) -> int:
        n = len(self)
        return max(n // max(1, min(int(batch or n), n)), 1) if n else 0

    def batches(self, batch: int | None, *, rng: np.random.Generator | None = None,
                keep_last: bool = False) -> Iterator[tuple[Any, np.ndarray | None]]:
        xs = self._inputs(self.train_x)
        n = len(self)
        size = max(1, min(int(batch or n), n))
        order = rng.permutation(n) if rng is not None else None
        for b in range(-(-n // size) if keep_last else n // size):
            idx = order[b * size:(b + 1) * size] if order is not None else slice(b * size, (b + 1) * size)
            part = {k: v[idx] for k, v in xs.items()} if isinstance(xs, dict) else tuple(v[idx] for v in xs)
            yield part, None if self.train_y is None else self.train_y[idx]

    def samples(self, n: int) -> tuple[Any, np.ndarray | None]:
        xs = self._inputs(self.train_x)
        part = {k: v[:n] for k, v in xs.items()} if isinstance(xs, dict) else tuple(v[:n] for v in xs)
        return part, None if self.train_y is None else self.train_y[:n]

    def validation(self) -> tuple[Any, np.ndarray | None] | None:
        if self.val_x is None:
            return None
        return self._inputs(self.val_x), self.val_y


class StreamData(DataSource):
    """A torch ``DataLoader`` or any iterable of batches, read batch by batch (see the module docstring).

    Args:
        iterable: The batches. A re-iterable (a ``DataLoader``, a list) serves several epochs; a
            one-shot iterator (a generator) serves one.
        name: Name in messages (default ``<DataLoader>`` / ``<iterable>``).
        num_classes: Number of classes when known.
    """

    def __init__(self, iterable: Iterable, *, name: str | None = None, num_classes: int = 0) -> None:
        self.iterable = iterable
        self.name = name or f"<{type(iterable).__name__}>"
        self.num_classes = int(num_classes)
        self._one_shot = iter(iterable) is iterable
        self._head: list[Any] = []  # batches read ahead of a one-shot iterator (peeking)
        self._started = False

    @property
    def reiterable(self) -> bool:
        return not self._one_shot

    def _raw(self) -> Iterator[Any]:
        if not self._one_shot:
            return iter(self.iterable)
        if self._started:
            raise DataFitError(f"data '{self.name}' is a one-shot iterator and was used up: give a DataLoader "
                               "or a list of batches for several epochs")
        self._started = True
        return itertools.chain(self._head, self.iterable)

    def _lookahead(self) -> Iterator[Any]:
        """The first batches without using them up (a one-shot iterator's are kept for training)."""
        if not self._one_shot:
            yield from iter(self.iterable)
            return
        i = 0
        while True:
            if i < len(self._head):
                yield self._head[i]
                i += 1
                continue
            if self._started:
                return
            try:
                self._head.append(next(self.iterable))
            except StopIteration:
                return

    def batches(self, batch: int | None, *,
                rng: np.random.Generator | None = None) -> Iterator[tuple[Any, np.ndarray | None]]:
        for raw in self._raw():
            x, y = _split(raw)
            yield _inputs_numpy(x), None if y is None else to_numpy(y)

    def samples(self, n: int) -> tuple[Any, np.ndarray | None]:
        parts, got = [], 0
        for raw in self._lookahead():
            x, y = _split(raw)
            parts.append((_inputs_numpy(x), None if y is None else to_numpy(y)))
            got += _rows(parts[-1][0])
            if got >= n:
                break
        if not parts:
            raise DataFitError(f"data '{self.name}' yields no batch")
        return _concat(parts, n)

    def _sizes(self) -> tuple[int | None, int | None, bool]:
        """(batches per epoch, samples per epoch, drop_last) when known."""
        n_batches = len(self.iterable) if hasattr(self.iterable, "__len__") else None
        if isinstance(self.iterable, (list, tuple)):  # in memory already: count exactly
            return n_batches, sum(_rows(_inputs_numpy(_split(b)[0])) for b in self.iterable), False
        ds = getattr(self.iterable, "dataset", None)
        n = None
        try:
            n = len(ds) if ds is not None else None
        except TypeError:
            n = None
        return n_batches, n, bool(getattr(self.iterable, "drop_last", False))

    def native_batch(self) -> int | None:
        """The stream's own batch size (``DataLoader.batch_size`` or the first batch's rows)."""
        size = getattr(self.iterable, "batch_size", None)
        if isinstance(size, int) and size > 0:
            return size
        head = next(self._lookahead(), None)
        return _rows(_inputs_numpy(_split(head)[0])) if head is not None else None

    def steps_per_epoch(self, batch: int | None) -> int | None:
        """Batches per epoch; with ``batch`` (re-batched to that size) the full batches of it.

        Without a sample count, a re-batched stream is assumed to have all batches full but the
        last (a lower bound: training stops there, so no step is planned that the data lacks).
        """
        n_batches, n, drop_last = self._sizes()
        native = self.native_batch()
        if batch is None:
            return n_batches
        if batch == native and n_batches is not None and (drop_last or n is None):
            return n_batches if drop_last else max(n_batches - 1, 1)  # the last one may be partial
        if n is None and n_batches is not None and native:
            n = (n_batches - 1) * native
        return None if n is None else n // batch


def rebatch(batches: Iterable[tuple[Any, np.ndarray | None]], size: int) -> Iterator[tuple[Any, np.ndarray | None]]:
    """Batches of exactly ``size`` rows cut from a stream of batches of any sizes (the rest dropped)."""
    pending: list[tuple[Any, Any]] = []
    have = 0
    for xs, ys in batches:
        pending.append((xs, ys))
        have += _rows(xs)
        while have >= size:
            xs_all, ys_all = _concat(pending)
            head = ({k: v[:size] for k, v in xs_all.items()} if isinstance(xs_all, dict)
                    else tuple(v[:size] for v in xs_all))
            yield head, None if ys_all is None else ys_all[:size]
            have -= size
            rest = ({k: v[size:] for k, v in xs_all.items()} if isinstance(xs_all, dict)
                    else tuple(v[size:] for v in xs_all))
            pending = [(rest, None if ys_all is None else ys_all[size:])] if have else []


def as_data(data: Any, *, name: str | None = None) -> DataSource:
    """What a user passes as data, as a :class:`DataSource`.

    Args:
        data: A built-in dataset name or ``.npz`` path (:func:`otoir.data.load_dataset`), a
            :class:`DataSource`, an array (inputs only), a tuple ``(inputs, labels)`` of arrays
            (inputs: an array, a tuple or a dict of arrays), a dict of arrays (labels under
            ``labels``), or a torch ``DataLoader`` / any iterable of batches (streamed). Arrays
            are numpy arrays or torch tensors (held in memory as numpy).
        name: Name in messages (default: a description of ``data``).

    Raises:
        DatasetError: An unknown name, an unreadable file, or arrays of different lengths.
    """
    import os

    from otoir.data import load_dataset

    if isinstance(data, DataSource):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_dataset(os.fspath(data))
    if _is_array(data):
        return _arrays(to_numpy(data), None, name or "<array>")
    if isinstance(data, Mapping) and data and all(_is_array(v) for v in data.values()):
        x, y = _split({k: to_numpy(v) for k, v in data.items()})
        return _arrays(dict(x), y, name or "<arrays>")
    if isinstance(data, tuple) and len(data) == 2 and _is_array(data[1]) and _all_arrays(data[0]):
        x = data[0]
        x = ({k: to_numpy(v) for k, v in x.items()} if isinstance(x, Mapping)
             else tuple(to_numpy(v) for v in x) if isinstance(x, tuple) else to_numpy(x))
        return _arrays(x, to_numpy(data[1]), name or "<arrays>")
    if isinstance(data, Iterable):
        return StreamData(data, name=name)
    raise DatasetError(f"data of type {type(data).__name__} is not supported (give a dataset name, an .npz path, "
                       "numpy arrays, a DataLoader or an iterable of batches)")


def _is_array(v: Any) -> bool:
    """A numpy array or a torch tensor (not imported: anything with ``detach`` and ``shape``)."""
    return isinstance(v, np.ndarray) or (hasattr(v, "detach") and hasattr(v, "shape"))


def _all_arrays(x: Any) -> bool:
    if isinstance(x, Mapping):
        return bool(x) and all(_is_array(v) for v in x.values())
    if isinstance(x, tuple):
        return bool(x) and all(_is_array(v) for v in x)
    return _is_array(x)


def _arrays(x: Any, y: np.ndarray | None, name: str) -> Dataset:
    xs = x if isinstance(x, (dict, tuple)) else (x,)
    rows = {_rows({"a": v}) for v in (xs.values() if isinstance(xs, dict) else xs)}
    if y is not None:
        rows.add(int(np.shape(y)[0]))
    if len(rows) != 1:
        raise DatasetError(f"data '{name}': arrays of different lengths {sorted(rows)}")
    y = None if y is None else np.asarray(y)
    if y is not None and np.issubdtype(y.dtype, np.integer):
        y = y.astype(np.int64, copy=False)
    elif y is not None and np.issubdtype(y.dtype, np.floating):
        y = y.astype(np.float32, copy=False)
    classes = int(y.max(initial=-1)) + 1 if y is not None and y.dtype == np.int64 and y.ndim == 1 else 0
    return Dataset(x if isinstance(x, (dict, tuple)) else x, y, None, None, classes, name)


# ---------------------------------------------------------------------------------------------
# Fitting data to a model


def _kind(dtype: np.dtype) -> str:
    if dtype == np.bool_:
        return "bool"
    if np.issubdtype(dtype, np.integer):
        return "integer"
    if np.issubdtype(dtype, np.floating):
        return "float"
    return str(dtype)


@dataclass(frozen=True)
class Binding:
    """How the batches of one data source feed one model (see :func:`bind`).

    Attributes:
        names: The model's data input names, in graph order.
        dtypes: The numpy dtype each input is given as.
        keys: For each model input, the batch's dict key or tuple position that feeds it.
        fixed_batch: The model's fixed batch size (axis 0 of its inputs), or None.
        source: The data source.
    """

    names: tuple[str, ...]
    dtypes: tuple[Any, ...]
    keys: tuple[Any, ...]
    fixed_batch: int | None
    source: DataSource

    def feeds(self, inputs: Any) -> list[np.ndarray]:
        """The model's inputs, in graph order, from one batch's inputs."""
        out = []
        for key, dt in zip(self.keys, self.dtypes, strict=True):
            arr = np.asarray(inputs[key])
            out.append(np.ascontiguousarray(arr if arr.dtype == dt else arr.astype(dt)))
        return out

    def as_dict(self, inputs: Any) -> dict[str, np.ndarray]:
        """The model's inputs by name from one batch's inputs."""
        return dict(zip(self.names, self.feeds(inputs), strict=True))

    def check_inputs(self, n: int = 512) -> dict[str, np.ndarray]:
        """At most ``n`` rows by model input name for output checks: held-out data when there is
        some, else the first training rows (a stream's first batches)."""
        held_out = self.source.validation()
        if held_out is not None:
            xs = held_out[0]
            xs = {k: v[:n] for k, v in xs.items()} if isinstance(xs, dict) else tuple(v[:n] for v in xs)
        else:
            xs, _ = self.source.samples(n)
        return self.as_dict(xs)

    def input_batches(self, batch: int = 256) -> Iterator[list[np.ndarray]]:
        """One pass of the model's inputs for inference-like uses (recalibration): batches of
        ``batch`` rows for arrays (the last one too), of the model's fixed batch when it has one,
        else a stream's own batches."""
        if self.fixed_batch:
            size: int | None = self.fixed_batch
        else:
            size = None if isinstance(self.source, StreamData) else batch
        for xb, _ in self.batches(size, keep_last=not self.fixed_batch):
            yield xb

    def batch_size(self, batch: int, *, exact: bool) -> int | None:
        """The rows of every training batch: the model's fixed batch, else ``batch`` for arrays
        (at most their length); for a stream its own batches (None) unless ``exact`` (a
        static-batch trainer), then its own batch size."""
        if self.fixed_batch:
            return self.fixed_batch
        if isinstance(self.source, StreamData):
            return self.source.native_batch() if exact else None
        n = len(self.source) if isinstance(self.source, Dataset) else int(batch)
        return max(1, min(int(batch), n))

    def steps_per_epoch(self, size: int | None) -> int | None:
        """Training steps of one epoch at batches of ``size`` rows (None: the stream's own)."""
        return self.source.steps_per_epoch(size)

    def batches(self, size: int | None, *, rng: np.random.Generator | None = None,
                keep_last: bool = False) -> Iterator[tuple[list[np.ndarray], np.ndarray | None]]:
        """One epoch of ``(model inputs in graph order, labels)`` in batches of ``size`` rows
        (a stream is re-batched to it; ``None``: the stream's own batches). ``keep_last``: arrays
        also give their last, incomplete batch."""
        if keep_last and isinstance(self.source, Dataset):
            raw = self.source.batches(size, rng=rng, keep_last=True)
        else:
            raw = self.source.batches(size, rng=rng)
        if size is not None and isinstance(self.source, StreamData):
            raw = rebatch(raw, size)
        for xs, ys in raw:
            yield self.feeds(xs), ys


def _model_inputs(model: ir.Model) -> list[Any]:
    inits = set(model.graph.initializers)
    return [v for v in model.graph.inputs if v.name not in inits]


def _dims(v: Any) -> tuple[int | None, ...] | None:
    if v.shape is None:
        return None
    return tuple(d if isinstance(d, int) else None for d in v.shape.dims)


def _fmt(dims: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def bind(source: DataSource, model: ir.Model) -> Binding:
    """Fits ``source`` to ``model``'s data inputs, checking its first batch.

    Raises:
        DataFitError: The inputs do not match in number or names, or an input's rank, a fixed
            dimension (channels, sequence length) or kind (integer token ids vs float) differs.
            One line naming the data and the model input.
    """
    from otoir.report import fixed_batch
    from otoir.runtime import _np_dtype

    inputs = _model_inputs(model)
    names = [v.name for v in inputs]
    xs, _ = source.samples(1)
    what = f"data '{source.name}'"
    if isinstance(xs, dict):
        missing = [n for n in names if n not in xs]
        if missing:
            raise DataFitError(f"{what} has no input '{missing[0]}' for the model (batch keys: "
                               f"{', '.join(xs) or 'none'}; model inputs: {', '.join(names)})")
        extra = [k for k in xs if k not in names]
        if extra:
            raise DataFitError(f"{what} has input '{extra[0]}' that the model does not take (model inputs: "
                               f"{', '.join(names)})")
        keys: list[Any] = list(names)
    else:
        if len(xs) != len(names):
            raise DataFitError(f"{what} gives {len(xs)} input(s) per batch, the model takes {len(names)} "
                               f"({', '.join(names)})")
        keys = list(range(len(names)))
    dtypes = []
    for v, key in zip(inputs, keys, strict=True):
        arr = np.asarray(xs[key])
        label = f"{what} input {key!r}" if isinstance(key, str) else (f"{what} input {key}" if len(names) > 1
                                                                       else what)
        want = np.dtype(_np_dtype(v.dtype))
        got_kind, want_kind = _kind(arr.dtype), _kind(want)
        if got_kind != want_kind and not (got_kind in ("integer", "bool") and want_kind == "float"):
            raise DataFitError(f"{label} is {arr.dtype} but model input '{v.name}' takes {want} "
                               f"({got_kind} values cannot feed a {want_kind} input)")
        dims = _dims(v)
        sample = tuple(arr.shape[1:])
        if dims is not None:
            if len(dims) != arr.ndim:
                raise DataFitError(f"{label} has samples of shape {_fmt(sample)}, model input '{v.name}' takes "
                                   f"{_fmt(dims[1:])} (rank {arr.ndim} vs {len(dims)} with the batch)")
            bad = [i for i, (d, s) in enumerate(zip(dims[1:], sample, strict=True)) if d is not None and d != s]
            if bad:
                why = (f"{sample[0]} channel(s) vs {dims[1]}" if bad[0] == 0 and len(dims) >= 3
                       else f"dimension {bad[0] + 1}: {sample[bad[0]]} vs {dims[bad[0] + 1]}")
                raise DataFitError(f"{label} has samples of shape {_fmt(sample)}, model input '{v.name}' takes "
                                   f"{_fmt(dims[1:])} ({why})")
        dtypes.append(want)
    return Binding(tuple(names), tuple(dtypes), tuple(keys), fixed_batch(model), source)
