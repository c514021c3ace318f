"""End to end: train once with H2SPG/DHSPG on each backend, cut the zero groups, compare."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import otoir  # noqa: E402
from otoir.data import Dataset, load_dataset  # noqa: E402
from otoir.zoo import build  # noqa: E402


@pytest.fixture(scope="module")
def small_mnist() -> Dataset:
    ds = load_dataset("mnist")
    rng = np.random.default_rng(0)
    tr = rng.choice(len(ds.train_x), 640, replace=False)
    va = rng.choice(len(ds.val_x), 256, replace=False)
    return Dataset(ds.train_x[tr], ds.train_y[tr], ds.val_x[va], ds.val_y[va], ds.num_classes, "mnist-640")


CASES = [
    ("demosupnet", dict(width=0.125, relu=True), "erase"),
    ("resnet_basic", dict(width=4), "prune"),
]


@pytest.mark.parametrize("backend", ["torch", "ort"])
@pytest.mark.parametrize(("name", "kw", "mode"), CASES, ids=[c[2] for c in CASES])
def test_compress_end_to_end(small_mnist, backend, name, kw, mode):
    torch.manual_seed(0)
    module, _ = build(name, in_channels=1, **kw)
    example = torch.from_numpy(small_mnist.train_x[:2])
    source = module if backend == "torch" else otoir.load(module, example)
    res = otoir.compress(source, small_mnist, mode=mode, target_sparsity=0.5, epochs=2, batch=32, lr=0.05,
                         backend=backend, example_inputs=example, progress=False, latency_runs=3)
    n = len(res.groups)
    # exactly the target number of zero groups, all of them removed
    assert len(res.zero_group_ids) == int(np.floor(0.5 * n + 1e-9)) > 0
    rep = res.report
    assert rep.compressed.params < rep.full.params
    assert rep.compressed.flops < rep.full.flops
    # the sub-network computes what the trained full network computes (fp32, 1e-4 of output scale)
    assert rep.verified and rep.max_rel_diff <= 1e-4
    # BatchNorm statistics are right: held-out accuracy of both models is the same
    assert rep.full.accuracy == pytest.approx(rep.compressed.accuracy, abs=1e-9)
    # the trained module itself (torch backend) agrees with the exported trained full model
    if backend == "torch":
        module.eval()
        with torch.no_grad():
            ref = module(torch.from_numpy(small_mnist.val_x[:64])).numpy()
        from otoir.testing import run_ort

        out = run_ort(res.full, {res.full.graph.inputs[0].name: small_mnist.val_x[:64]})[0]
        assert np.max(np.abs(out - ref)) <= 1e-4 * max(1.0, np.max(np.abs(ref)))
    # the result is a valid ONNX model
    import onnx
    import onnx_ir as ir

    onnx.checker.check_model(ir.to_proto(res.model), full_check=True)


def test_compress_rejects_bad_arguments(small_mnist):
    module, _ = build("demosupnet", width=0.125, relu=True, in_channels=1)
    with pytest.raises(otoir.OtoirError, match="mode must be"):
        otoir.compress(module, small_mnist, mode="shrink")
    with pytest.raises(otoir.OtoirError, match="exceed"):
        otoir.compress(module, small_mnist, epochs=1, batch=64, warmup=0.9, projection=0.9)
