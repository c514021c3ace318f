"""``otoir.compress(...)`` and ``otoir-opt -p 'otoir-erase{…}'`` are the same pipeline run."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime.training")

import otoir  # noqa: E402
import otoir.data  # noqa: E402
from otoir.frontends.torch_export import export_torch  # noqa: E402
from otoir.tools.otoir_opt import main  # noqa: E402
from otoir.zoo import build  # noqa: E402


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "mnist256.npz"
    raw = np.load(os.path.join(os.path.dirname(otoir.data.__file__), "mnist_small.npz"))
    np.savez(path, inputs=raw["inputs"][:256], labels=raw["labels"][:256], val_inputs=raw["val_inputs"][:128],
             val_labels=raw["val_labels"][:128])
    return str(path)


def _initializers(model):
    return {k: v.const_value.numpy() for k, v in model.graph.initializers.items()}


CASES = [
    ("demosupnet", dict(width=0.125, relu=True), "erase", "lr=0.001 variant=adam"),
    ("resnet_basic", dict(width=4), "prune", "lam=0.002 weight-decay=0.0001"),
]


@pytest.mark.parametrize(("name", "kw", "mode", "extra"), CASES, ids=[c[2] for c in CASES])
def test_compress_equals_otoir_opt_pipeline(npz, tmp_path, name, kw, mode, extra):
    torch.manual_seed(0)
    module, _ = build(name, in_channels=1, **kw)
    src = tmp_path / "full.onnx"
    otoir.save(export_torch(module, torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))), str(src))

    opts = dict(p.split("=") for p in extra.split())
    py_kw = {k.replace("-", "_"): float(v) if k != "variant" else v for k, v in opts.items()}
    res = otoir.compress(str(src), npz, mode=mode, epochs=2, batch=32, seed=3, backend="ort", progress=False,
                         latency_runs=0, **py_kw)
    assert res.zero_group_ids, "training zeroed nothing: the comparison would be vacuous"

    out = tmp_path / "sub.onnx"
    err = io.StringIO()
    pipe = f"otoir-{mode}{{data={npz} epochs=2 batch=32 seed=3 backend=ort quiet=true {extra}}}"
    code = main([str(src), "-p", pipe, "--verify", "-q", "-o", str(out)], stdout=io.StringIO(), stderr=err)
    assert code == 0, err.getvalue()
    cli = otoir.load(str(out))

    # the pipeline compress ran is the one given to otoir-opt (same canonical text)
    from otoir.infra import PassManager

    assert PassManager.from_text(res.pipeline).to_text() == PassManager.from_text(pipe).to_text()
    # same zero set: the same structures were removed, the same ones kept, with the same values
    a, b = _initializers(res.model), _initializers(cli)
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    removed = set(_initializers(res.full)) - set(a)
    assert removed or any(res.full.graph.initializers[k].const_value.shape != a[k].shape for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert [n.op_type for n in res.model.graph] == [n.op_type for n in cli.graph]
    # same outputs
    from otoir.testing import run_ort

    x = otoir.data.load_dataset(npz).val_x[:32]
    ya = run_ort(res.model, {res.model.graph.inputs[0].name: x})[0]
    yb = run_ort(cli, {cli.graph.inputs[0].name: x})[0]
    np.testing.assert_array_equal(ya, yb)
