"""Datasets for the training pass: ``.npz`` files and built-in (shipped) datasets.

File format (``numpy.savez`` / ``savez_compressed``):

=================  ==================================================================
key                content
=================  ==================================================================
``inputs``         training inputs, shape ``(N, *input_shape)`` (``N×C×H×W`` for images,
                   or any shape the model's first input takes after its batch dim);
                   ``uint8`` (pixel values 0..255) or any float dtype
``labels``         training labels, integer, shape ``(N,)`` (class indices ``0..K-1``);
                   a float array of shape ``(N, ...)`` is kept as float32 regression targets
``val_inputs``     optional validation inputs, same trailing shape as ``inputs``
``val_labels``     optional validation labels (required if ``val_inputs`` is given)
``inputs.NAME``    instead of ``inputs``, for a model with several inputs: one array per
                   model input name (``inputs.input_ids``, ``inputs.attention_mask``);
                   ``val_inputs.NAME`` likewise
=================  ==================================================================

Normalisation (deterministic, no randomness anywhere in loading):

* ``uint8`` inputs are scaled to ``[0, 1]`` (``x / 255``) as float32; float inputs are cast
  to float32 unchanged; other integer (and bool) inputs stay as they are: token ids and masks
  (:func:`otoir.data.bind` casts them to the model input's integer type).
* Built-in image datasets are then standardised with their published channel statistics
  (MNIST: ``(x - 0.1307) / 0.3081``).
* Integer labels become int64; ``num_classes`` is ``max(label) + 1`` over train and val.

Built-in datasets (shipped inside the package, no network):

* ``mnist`` (alias ``mnist-small``): a stratified subset of the original MNIST handwritten
  digits, 10 000 training images (1 000 per class, from the 60 000 training set) and 2 000
  validation images (200 per class, from the 10 000 test set), 1×28×28. See ``README.md``.
* ``mnist-14``: the same images at half resolution, 1×14×14: each output pixel is the mean of a
  2×2 block of the standardised 28×28 image (so the same mean and std apply). For networks
  whose receptive field before a global pooling is too small to see a whole 28×28 digit
  (DemoSupNet's is 15 pixels).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np

from otoir.data.sources import (
    Binding,
    DataFitError,
    Dataset,
    DatasetError,
    DataSource,
    StreamData,
    as_data,
    bind,
    rebatch,
)

__all__ = ["BUILTIN_DATASETS", "Binding", "BuiltinDataset", "DataFitError", "DataSource", "Dataset", "DatasetError", "StreamData",
           "as_data", "bind", "load_dataset", "load_npz", "rebatch"]

_HERE = os.path.dirname(os.path.abspath(__file__))

class BuiltinDataset(NamedTuple):
    """A built-in dataset: its file in this folder and how it is prepared."""

    file: str
    mean: tuple[float, ...]  #: per-channel mean subtracted (after uint8 / 255)
    std: tuple[float, ...]  #: per-channel std divided by
    pool: int = 1  #: images averaged over ``pool × pool`` blocks after standardising (1: as shipped)


#: Built-in dataset name -> :class:`BuiltinDataset`.
BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "mnist": BuiltinDataset("mnist_small.npz", (0.1307,), (0.3081,)),
    "mnist-small": BuiltinDataset("mnist_small.npz", (0.1307,), (0.3081,)),
    "mnist-14": BuiltinDataset("mnist_small.npz", (0.1307,), (0.3081,), pool=2),
}


def _pooled(x: np.ndarray, k: int) -> np.ndarray:
    """``N×C×H×W`` images averaged over ``k×k`` blocks (H and W divisible by ``k``)."""
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c, h // k, k, w // k, k).mean(axis=(3, 5), dtype=np.float32))


def _inputs(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32, copy=False)
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        return arr  # token ids, masks: stay integer (bind casts them to the model input's integer type)
    raise DatasetError(f"inputs of dtype {arr.dtype} are not supported (use uint8, another integer type or float)")


def _labels(arr: np.ndarray) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32, copy=False)
    raise DatasetError(f"labels of dtype {arr.dtype} are not supported (use an integer or float dtype)")


def load_npz(path: str, *, name: str | None = None,
             mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> Dataset:
    """Loads a dataset ``.npz`` file in the documented format.

    Args:
        path: The file.
        name: Name to record (default: the path).
        mean: Optional per-channel mean subtracted after scaling (channel = axis 1).
        std: Optional per-channel std divided by after the mean.

    Returns:
        The dataset.

    Raises:
        DatasetError: The file is missing, not an ``.npz`` archive, or lacks/mismatches arrays.
            The message names the file.
    """
    if not os.path.isfile(path):
        builtins = ", ".join(sorted(BUILTIN_DATASETS))
        raise DatasetError(
            f"dataset file '{path}' does not exist (give an .npz file with 'inputs' and 'labels' "
            f"arrays, or a built-in dataset name: {builtins})"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile.BadZipFile, OSError, ValueError ...
        raise DatasetError(f"dataset file '{path}' is not a readable .npz archive: {exc}") from None
    for prefix in ("inputs", "val_inputs"):  # several named inputs: inputs.NAME
        named = {k[len(prefix) + 1:]: arrays.pop(k) for k in list(arrays) if k.startswith(prefix + ".")}
        if named and prefix in arrays:
            raise DatasetError(f"dataset file '{path}' has both '{prefix}' and '{prefix}.NAME' arrays: give one form")
        if named:
            arrays[prefix] = named  # type: ignore[assignment]
    for key in ("inputs", "labels"):
        if key not in arrays:
            raise DatasetError(
                f"dataset file '{path}' has no '{key}' array (it has: {', '.join(sorted(arrays)) or 'nothing'})"
            )
    if ("val_inputs" in arrays) != ("val_labels" in arrays):
        raise DatasetError(f"dataset file '{path}': 'val_inputs' and 'val_labels' must be given together")

    def prep(xk: str, yk: str) -> tuple[Any, np.ndarray]:
        if isinstance(arrays[xk], dict):
            y = _labels(arrays[yk])
            xs = {k: np.ascontiguousarray(_inputs(v)) for k, v in arrays[xk].items()}
            bad = [k for k, v in xs.items() if v.ndim < 1 or v.shape[0] != y.shape[0]]
            if bad:
                raise DatasetError(f"dataset file '{path}': '{xk}.{bad[0]}' has {xs[bad[0]].shape[:1]} samples "
                                   f"but '{yk}' has {y.shape[:1]}")
            return xs, np.ascontiguousarray(y)
        x, y = _inputs(arrays[xk]), _labels(arrays[yk])
        if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
            raise DatasetError(
                f"dataset file '{path}': '{xk}' has {x.shape[0] if x.ndim else 0} samples but '{yk}' has "
                f"{y.shape[0] if y.ndim else 0}"
            )
        if mean is not None or std is not None:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            if mean is not None:
                x = x - np.asarray(mean, np.float32).reshape(shape)
            if std is not None:
                x = x / np.asarray(std, np.float32).reshape(shape)
            x = x.astype(np.float32, copy=False)
        return np.ascontiguousarray(x), np.ascontiguousarray(y)

    tx, ty = prep("inputs", "labels")
    vx = vy = None
    if "val_inputs" in arrays:
        vx, vy = prep("val_inputs", "val_labels")
        if isinstance(vx, dict) != isinstance(tx, dict) or (isinstance(vx, dict) and set(vx) != set(tx)):
            raise DatasetError(f"dataset file '{path}': 'val_inputs' and 'inputs' name different inputs")
        if not isinstance(vx, dict) and vx.shape[1:] != tx.shape[1:]:
            raise DatasetError(
                f"dataset file '{path}': 'val_inputs' samples have shape {vx.shape[1:]}, 'inputs' {tx.shape[1:]}"
            )
    num_classes = 0
    if ty.dtype == np.int64:
        if ty.ndim != 1:
            raise DatasetError(f"dataset file '{path}': integer labels must have shape (N,), got {ty.shape}")
        top = int(ty.max(initial=-1))
        if vy is not None:
            top = max(top, int(vy.max(initial=-1)))
        if int(ty.min(initial=0)) < 0:
            raise DatasetError(f"dataset file '{path}': labels must be class indices >= 0")
        num_classes = top + 1
    return Dataset(tx, ty, vx, vy, num_classes, name or path)


def load_dataset(name_or_path: str) -> Dataset:
    """Loads a built-in dataset by name, or an ``.npz`` file by path.

    Args:
        name_or_path: A name from :data:`BUILTIN_DATASETS` (``mnist``) or a path to an
            ``.npz`` file in the documented format.

    Returns:
        The dataset; loading is deterministic (same arrays every call).

    Raises:
        DatasetError: Unknown name / missing or malformed file (the message names the file).
    """
    key = name_or_path.strip().lower()
    if key in BUILTIN_DATASETS and not os.path.exists(name_or_path):
        b = BUILTIN_DATASETS[key]
        ds = load_npz(os.path.join(_HERE, b.file), name=key, mean=b.mean, std=b.std)
        if b.pool > 1:
            ds = Dataset(_pooled(ds.train_x, b.pool), ds.train_y, _pooled(ds.val_x, b.pool), ds.val_y,
                         ds.num_classes, key)
        return ds
    return load_npz(name_or_path)
