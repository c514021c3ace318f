"""The documented own-loop example (docs/torch.md) end to end: a small ResNet and a small BERT.

Each ``python`` block of docs/torch.md is executed as written (bf16 autocast, a cosine
scheduler, two param groups without weight decay on norms/biases, one epoch of random data).
The compressed torch module must give the ONNX sub-network's outputs (≤ 1e-4 of their scale)
and have the parameter count the sub-network reports.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

DOC = Path(__file__).resolve().parents[2] / "docs" / "torch.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def _compress_random(module, side: int, **kw):
    """``otoir.compress(module)`` in prune mode on 96 random images (64 train, 32 held out),
    2 epochs of batch 16; returns the result and the held-out images."""
    import numpy as np

    import otoir
    from otoir.data import Dataset

    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 3, side, side)).astype(np.float32)
    y = rng.integers(0, 10, 96)
    ds = Dataset(x[:64], y[:64], x[64:], y[64:], 10, "random")
    res = otoir.compress(module, ds, mode="prune", epochs=2, batch=16, progress=False, latency_runs=0,
                         example_inputs=torch.from_numpy(x[:2]), **kw)
    return res, x[64:]


def _run(code: str, tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ns: dict = {"__name__": "__doc_example__"}
    exec(compile(code, str(DOC), "exec"), ns)  # noqa: S102 - the documented example, as written
    return ns


def _check(ns: dict, module_name: str) -> None:
    out, job, opt = ns["out"], ns["job"], ns["opt"]
    full = ns[module_name]
    assert opt.num_zero_groups == job.target_count > 0
    assert out.report.verified is True
    assert out.torch_max_rel_diff is not None and out.torch_max_rel_diff <= 1e-4
    n = sum(p.numel() for p in out.module.parameters())
    assert n == out.num_params < sum(p.numel() for p in full.parameters())
    assert out.removed_group_ids and set(out.removed_group_ids) <= {g.id for g in job.groups}
    assert [g["weight_decay"] for g in opt.param_groups][1] == 0.0
    assert opt.param_groups[0]["lr"] < opt.defaults["lr"]  # the cosine schedule moved it


def test_doc_has_the_two_examples():
    blocks = _blocks()
    assert len(blocks) == 2
    assert "resnet_basic" in blocks[0] and "BertConfig" in blocks[1]
    for b in blocks:
        assert "torch.autocast" in b and "CosineAnnealingLR" in b and "job.construct()" in b


def test_resnet_own_loop(tmp_path, monkeypatch):
    ns = _run(_blocks()[0], tmp_path, monkeypatch)
    _check(ns, "model")
    small = torch.load(tmp_path / "resnet_pruned.pt", weights_only=False)
    assert isinstance(small, torch.nn.Module)
    assert os.path.getsize(tmp_path / "resnet_pruned.onnx") > 0
    assert any("conv" in name for name in ns["out"].slicing)


def test_bert_own_loop(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    ns = _run(_blocks()[1], tmp_path, monkeypatch)
    _check(ns, "bert")
    heads = [layer.attention.self.num_attention_heads for layer in ns["out"].module.model.bert.encoder.layer]
    assert min(heads) < ns["cfg"].num_attention_heads  # whole heads were removed
    for layer in ns["out"].module.model.bert.encoder.layer:
        sa = layer.attention.self
        assert sa.all_head_size == sa.num_attention_heads * sa.attention_head_size == sa.query.out_features


def test_compress_returns_the_compressed_module():
    from otoir.zoo import build

    model, _ = build("resnet_basic", width=4, layers=(1, 1, 1, 1))
    res, held = _compress_random(model, 16)
    small = res.compressed_module
    assert small is not None, res.compressed_module_error
    assert res.removed_group_ids
    with torch.no_grad():
        got = small.eval()(torch.from_numpy(held)).numpy()
    from otoir.runtime import max_rel_diff, run_model

    want = run_model(res.model, {res.model.graph.inputs[0].name: held})
    assert max_rel_diff(want, [got]) <= 1e-4
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in res.module.parameters())
    text = repr(res)
    assert "trained FULL ResNet" in text and "compressed ResNet" in text


def test_compress_slices_groupnorm_in_whole_norm_groups():
    from otoir.runtime import max_rel_diff, run_model

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.gn = torch.nn.GroupNorm(4, 16)
            self.c2 = torch.nn.Conv2d(16, 16, 3, padding=1)
            self.gn2 = torch.nn.GroupNorm(8, 16)
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, x):
            y = torch.relu(self.gn2(self.c2(torch.relu(self.gn(self.c1(x))))))
            return self.fc(y.mean(dim=(2, 3)))

    torch.manual_seed(0)
    res, held = _compress_random(Net(), 8, target_sparsity=0.5)
    small = res.compressed_module
    assert small is not None, res.compressed_module_error
    assert small.gn.num_groups < 4 or small.gn2.num_groups < 8  # whole norm groups were removed
    for gn in (small.gn, small.gn2):
        assert gn.num_channels == gn.weight.shape[0] and gn.num_channels % gn.num_groups == 0
    assert small.gn.num_channels // small.gn.num_groups == 4 and small.gn2.num_channels // small.gn2.num_groups == 2
    with torch.no_grad():
        got = small.eval()(torch.from_numpy(held)).numpy()
    want = run_model(res.model, {res.model.graph.inputs[0].name: held})
    assert max_rel_diff(want, [got]) <= 1e-4


def test_compress_weight_standardized_convs_onnx_exact_torch_module_refused_with_reason():
    class StdConv(torch.nn.Conv2d):  # BiT's / timm's weight standardization
        def forward(self, x):
            w = torch.nn.functional.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                                               training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
            return torch.nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = StdConv(3, 16, 3, padding=1, bias=False)
            self.gn = torch.nn.GroupNorm(4, 16)
            self.c2 = StdConv(16, 16, 3, padding=1, bias=False)
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.c2(torch.relu(self.gn(self.c1(x))))).mean(dim=(2, 3)))

    torch.manual_seed(0)
    res, _ = _compress_random(Net(), 8, target_sparsity=0.5)
    # compress checked the ONNX sub-network against the trained model (it raises otherwise)
    assert res.removed_group_ids and res.report.compressed.params < res.report.full.params
    assert res.report.verified
    assert res.compressed_module is None and "weight standardization" in res.compressed_module_error
