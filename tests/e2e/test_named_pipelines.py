"""otoir-erase / otoir-prune through otoir-opt, on a small .npz slice of the shipped MNIST."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime.training")

import otoir  # noqa: E402
import otoir.data  # noqa: E402
from otoir.tools.otoir_opt import main  # noqa: E402


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    ds = otoir.data.load_dataset("mnist")
    path = tmp_path_factory.mktemp("data") / "mnist256.npz"
    raw = np.load(os.path.join(os.path.dirname(otoir.data.__file__), "mnist_small.npz"))
    np.savez(path, inputs=raw["inputs"][:256], labels=raw["labels"][:256], val_inputs=raw["val_inputs"][:128],
             val_labels=raw["val_labels"][:128])
    assert ds.num_classes == 10
    return path


@pytest.mark.parametrize(("zoo", "pipe"), [
    ("zoo:demosupnet?width=0.125&relu=1", "otoir-erase"),
    ("zoo:resnet_basic?width=4&in_channels=1&input=1x28x28", "otoir-prune"),
])
def test_named_pipeline_compresses_and_verifies(npz, tmp_path, zoo, pipe):
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    err = io.StringIO()
    code = main([zoo, "-p", f"{pipe}{{data={npz} epochs=2 batch=32 quiet=true}}", "--verify", "--report-json", str(rep),
                 "--timing", "-q", "-o", str(out)], stdout=io.StringIO(), stderr=err)
    assert code == 0, err.getvalue()
    # the child passes ran through the pass manager: timed one by one, indented under the container
    timing = err.getvalue().split("Execution time report")[1]
    assert f"  {pipe}\n" in timing and "    train\n" in timing and "    to-inference\n" in timing
    data = json.loads(rep.read_text())
    assert data["verified"] is True and data["max_rel_diff"] <= 1e-4
    assert data["compressed"]["params"] < data["full"]["params"]
    assert data["compressed"]["flops"] < data["full"]["flops"]
    assert data["compressed"]["accuracy"] == pytest.approx(data["full"]["accuracy"])
    model = otoir.load(out)
    assert not any(n.op_type == "BatchNormalization" and len(n.outputs) > 1 for n in model.graph)  # inference form
