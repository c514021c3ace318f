"""otoir.data: the shipped MNIST subset and the .npz loader."""

from __future__ import annotations

import os

import numpy as np
import pytest

from otoir.data import BUILTIN_DATASETS, DatasetError, load_dataset, load_npz


def test_builtin_mnist_shapes_dtypes_and_normalisation():
    ds = load_dataset("mnist")
    assert ds.train_x.shape == (10000, 1, 28, 28) and ds.train_x.dtype == np.float32
    assert ds.train_y.shape == (10000,) and ds.train_y.dtype == np.int64
    assert ds.val_x.shape == (2000, 1, 28, 28) and ds.val_x.dtype == np.float32
    assert ds.val_y.shape == (2000,) and ds.val_y.dtype == np.int64
    assert ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert np.bincount(ds.train_y).tolist() == [1000] * 10  # stratified
    assert np.bincount(ds.val_y).tolist() == [200] * 10
    # (x/255 - 0.1307)/0.3081: background pixels map to -0.4242, ink to 2.8215
    assert ds.train_x.min() == pytest.approx(-0.1307 / 0.3081, abs=1e-5)
    assert ds.train_x.max() == pytest.approx((1 - 0.1307) / 0.3081, abs=1e-5)
    assert abs(float(ds.train_x.mean())) < 0.05 and abs(float(ds.train_x.std()) - 1.0) < 0.05


def test_builtin_file_is_small_real_data_and_deterministic():
    path = os.path.join(os.path.dirname(load_dataset.__code__.co_filename), BUILTIN_DATASETS["mnist"][0])
    assert os.path.getsize(path) < 4 * 2**20
    with np.load(path) as z:
        raw = z["inputs"]
        assert raw.dtype == np.uint8
        # real digits: most pixels are background, about a fifth are ink
        assert 0.1 < float((raw > 128).mean()) < 0.3
        assert len(np.unique(raw.reshape(len(raw), -1), axis=0)) == len(raw)
    a, b = load_dataset("mnist"), load_dataset("MNIST-small")
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.val_y, b.val_y)


def test_npz_uint8_float_and_optional_val(tmp_path):
    p = tmp_path / "d.npz"
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.savez(p, inputs=x, labels=np.array([0, 4], np.int32))
    ds = load_dataset(str(p))
    assert ds.train_x.dtype == np.float32 and ds.train_x.shape == (2, 3, 4)
    np.testing.assert_allclose(ds.train_x, x / 255.0, rtol=1e-6)
    assert ds.train_y.dtype == np.int64 and ds.num_classes == 5
    assert ds.val_x is None and ds.val_y is None and ds.name == str(p)
    q = tmp_path / "f.npz"
    xf = np.random.default_rng(0).standard_normal((4, 5))
    np.savez_compressed(q, inputs=xf, labels=np.zeros(4, np.int64), val_inputs=xf[:2], val_labels=np.array([0, 2]))
    ds = load_npz(str(q))
    np.testing.assert_allclose(ds.train_x, xf.astype(np.float32))
    assert ds.val_x.shape == (2, 5) and ds.num_classes == 3


def test_missing_file_error_names_the_file(tmp_path):
    bad = str(tmp_path / "nowhere" / "data.npz")
    with pytest.raises(DatasetError, match="nowhere/data.npz' does not exist.*mnist"):
        load_dataset(bad)
    with pytest.raises(DatasetError, match="'no-such-dataset' does not exist"):
        load_dataset("no-such-dataset")


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"inputs": np.zeros((2, 3))}, "has no 'labels' array"),
        ({"x": np.zeros((2, 3)), "labels": np.zeros(2, np.int64)}, "has no 'inputs' array"),
        ({"inputs": np.zeros((2, 3)), "labels": np.zeros(3, np.int64)}, "has 2 samples but 'labels' has 3"),
        ({"inputs": np.zeros((2, 3)), "labels": np.zeros(2, np.int64), "val_inputs": np.zeros((1, 3))},
         "must be given together"),
        ({"inputs": np.zeros((2, 3)), "labels": np.zeros(2, np.int64), "val_inputs": np.zeros((1, 4)),
          "val_labels": np.zeros(1, np.int64)}, "'val_inputs' samples have shape"),
    ],
)
def test_malformed_files_give_clear_errors(tmp_path, arrays, message):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(str(p))
    assert str(p) in str(info.value)


def test_not_an_npz_archive(tmp_path):
    p = tmp_path / "text.npz"
    p.write_text("hello")
    with pytest.raises(DatasetError, match="text.npz' is not a readable .npz archive"):
        load_dataset(str(p))


def test_mnist_14_is_the_same_images_averaged_over_2x2_blocks():
    full, half = load_dataset("mnist"), load_dataset("mnist-14")
    assert half.name == "mnist-14" and half.num_classes == 10
    assert half.train_x.shape == (10000, 1, 14, 14) and half.val_x.shape == (2000, 1, 14, 14)
    assert half.train_x.dtype == np.float32
    np.testing.assert_array_equal(half.train_y, full.train_y)
    np.testing.assert_array_equal(half.val_y, full.val_y)
    # pixel (i, j) of image n is the mean of the standardised 28x28 block (2i..2i+1, 2j..2j+1)
    for n, i, j in ((0, 0, 0), (17, 7, 5), (9999, 13, 13)):
        block = full.train_x[n, 0, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
        assert half.train_x[n, 0, i, j] == pytest.approx(float(block.mean()), abs=1e-6)
    block = full.val_x[3, 0, 10:12, 4:6]
    assert half.val_x[3, 0, 5, 2] == pytest.approx(float(block.mean()), abs=1e-6)
    assert BUILTIN_DATASETS["mnist-14"].pool == 2 and BUILTIN_DATASETS["mnist"].pool == 1
