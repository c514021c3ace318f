"""The compressed torch module: standard layers sliced like the ONNX sub-network, checked in ONNX Runtime.

Each case zeroes some prunable groups of a small module by hand (no training), constructs, and
compares the sliced torch module with the ONNX sub-network (``Constructed.torch_max_rel_diff``)
and with the parameter count the sub-network reports.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import otoir  # noqa: E402
from otoir.analyses.groups import Group, TensorSlice  # noqa: E402
from otoir.frontends.torch_slice import TorchSliceError, removal_plan  # noqa: E402


def _zero(module: nn.Module, groups, every: int = 2) -> int:
    """Zeroes every ``every``-th group's trainable entries in the module; returns how many."""
    params = dict(module.named_parameters())
    n = 0
    with torch.no_grad():
        for g in groups[::every]:
            for s in g.slices:
                params[s.tensor].index_fill_(s.axis, torch.as_tensor(s.indices), 0.0)
            n += 1
    return n


def _check(module: nn.Module, example):
    job = otoir.analyze(module, example, mode="prune")
    _zero(module, list(job.groups))
    out = job.construct()
    assert out.removed_group_ids, "nothing was removed"
    sliced = out.module
    assert out.torch_max_rel_diff <= 1e-4
    assert sum(p.numel() for p in sliced.parameters()) == out.num_params
    assert out.num_params < sum(p.numel() for p in module.parameters())
    return out


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.c1d = nn.Conv1d(6, 5, 1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.dw(x)))
        x = F.relu(self.up(x))
        x = F.relu(self.c1d(x.flatten(2)))
        return self.fc(x.mean(2))


def test_conv_bn_depthwise_convtranspose_conv1d_linear():
    torch.manual_seed(0)
    m = ConvNet()
    out = _check(m, torch.randn(2, 3, 8, 8))
    sl = out.module
    assert sl.conv1.out_channels == sl.bn1.num_features == sl.bn1.weight.shape[0] < 8
    assert sl.dw.groups == sl.dw.in_channels == sl.dw.out_channels
    assert sl.up.out_channels == sl.c1d.in_channels
    assert sl.bn2.num_features == sl.dw.out_channels == sl.bn2.running_mean.shape[0]
    assert "conv1" in out.slicing
    # the user's module is untouched
    assert m.conv1.out_channels == 8 and m.conv1.weight.shape[0] == 8


class TokenNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 12)
        self.fc1 = nn.Linear(12, 16)
        self.ln = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, ids):
        return self.fc2(self.ln(F.relu(self.fc1(self.emb(ids).mean(1)))))


def test_embedding_linear_layernorm():
    torch.manual_seed(0)
    m = TokenNet()
    job = otoir.analyze(m, torch.randint(0, 20, (2, 5)), mode="prune")
    tensors = {t for g in job.groups for t in g.tensors}
    assert "emb.weight" in tensors  # the embedding axis is a channel group
    _zero(m, list(job.groups))
    out = job.construct()
    assert out.torch_max_rel_diff <= 1e-4
    assert out.module.emb.embedding_dim == out.module.emb.weight.shape[1] == out.module.fc1.in_features
    assert sum(p.numel() for p in out.module.parameters()) == out.num_params


class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 4))

    def forward(self, x):
        return F.linear(x, self.weight)


class CustomNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Custom()
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(F.relu(self.inner(x)))


def test_unknown_module_is_a_one_line_error_naming_it():
    torch.manual_seed(0)
    m = CustomNet()
    job = otoir.analyze(m, torch.randn(2, 4), mode="prune")
    _zero(m, list(job.groups))
    out = job.construct()
    assert out.removed_group_ids and out.onnx is not None  # the ONNX sub-network is the result
    with pytest.raises(TorchSliceError, match=r"module 'inner' \(Custom\).*ONNX sub-network is still available") as e:
        _ = out.module
    assert "\n" not in str(e.value)
    assert out.module_error == str(e.value)


def test_erased_branch_cannot_be_sliced():
    g = Group(id="gezig:0", kind="gezig", slices=(TensorSlice("conv.weight"),))
    with pytest.raises(TorchSliceError, match="whole branches cannot be removed.*still available"):
        removal_plan([g])


def test_analyze_rejects_bad_mode_and_non_module():
    with pytest.raises(otoir.OtoirError, match="mode must be"):
        otoir.analyze(nn.Linear(2, 2), torch.randn(1, 2), mode="shrink")
    with pytest.raises(otoir.OtoirError, match="torch.nn.Module"):
        otoir.analyze("model.onnx", None)


def test_erase_mode_gives_the_onnx_result_and_a_clear_module_error():
    from otoir.zoo import build

    torch.manual_seed(0)
    m, x = build("demosupnet", width=0.125, relu=True)
    job = otoir.analyze(m, x, mode="erase", target_sparsity=0.3)
    opt = job.optimizer(total_steps=8, lr=0.01)
    assert type(opt).__name__ == "H2SPG"  # its validity selector comes built in
    for _ in range(8):
        opt.zero_grad()
        F.cross_entropy(m(torch.randn(8, *x.shape[1:])), torch.randint(0, 10, (8,))).backward()
        opt.step()
    out = job.construct()
    assert len(out.removed_group_ids) == job.target_count > 0 and out.report.verified
    assert out.report.compressed.params < out.report.full.params
    with pytest.raises(TorchSliceError, match="whole branches cannot be removed.*still available"):
        _ = out.module


def test_construct_warns_when_training_stopped_early():
    m = ConvNet()
    job = otoir.analyze(m, torch.randn(2, 3, 8, 8))
    job.optimizer(total_steps=100)
    out = job.construct()
    assert "stopped before the projection window ended" in out.report.details["warning"]
    assert out.removed_group_ids == []


def test_llama_grouped_query_attention_heads_and_mlp():
    transformers = pytest.importorskip("transformers")

    class LM(nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.m = model

        def forward(self, ids, mask):
            return self.m(input_ids=ids, attention_mask=mask, use_cache=False).logits

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    m = LM(transformers.LlamaForCausalLM(cfg))
    out = _check(m, (torch.randint(0, 64, (2, 8)), torch.ones(2, 8, dtype=torch.long)))
    attn = out.module.m.model.layers[0].self_attn
    assert attn.q_proj.out_features < 32 and attn.o_proj.in_features == attn.q_proj.out_features
    assert attn.num_key_value_groups == attn.q_proj.out_features // attn.k_proj.out_features
    assert out.module.m.model.layers[0].mlp.gate_proj.out_features < 48


class TinyRMSNorm(nn.Module):
    """The Hugging Face form (LlamaRMSNorm); torch.nn.RMSNorm does not export at opset 17."""

    def __init__(self, n: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.variance_epsilon = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon) * self.weight


class RMSNet(nn.Module):
    """A residual stream under RMSNorm: its hidden channels are exact groups."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.norm = TinyRMSNorm(16, eps=1e-5)
        self.mlp = nn.Linear(16, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.mlp(F.relu(self.norm(h)))
        return self.out(self.norm(h))


def test_rmsnorm_hidden_channels_fold_into_epsilon_and_gain():
    torch.manual_seed(0)
    m = RMSNet()
    with torch.no_grad():
        m.norm.weight.uniform_(0.5, 1.5)
    out = _check(m, torch.randn(4, 6))
    sl = out.module
    n, kept = 16, sl.norm.weight.shape[0]
    assert kept < n
    assert sl.norm.variance_epsilon == pytest.approx(1e-5 * n / kept)
