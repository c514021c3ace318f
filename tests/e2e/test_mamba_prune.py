"""Channel pruning of a Mamba model from Hugging Face ``transformers`` (selective-scan mixer).

``prune-channels`` once wrote a Mamba model that ONNX Runtime refused to load ("MatMul
incompatible dimensions"): the scan's output projection ``C`` was pruned along the state axis
it contracts with an untracked state. The mixer's inner channels (``in_proj`` rows of x and
gate, the depthwise ``conv1d``, ``dt_proj``, ``A_log``, ``D``, ``x_proj``/``out_proj``
columns) and the ``dt`` rank are exact groups; the state axis is refused with a reason.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

import otoir  # noqa: E402
from otoir.analyses.groups import zero_group  # noqa: E402
from otoir.analyses.zig import ChannelGroups  # noqa: E402
from otoir.infra.analysis import AnalysisManager  # noqa: E402
from otoir.infra.pass_manager import PassManager  # noqa: E402
from otoir.testing import max_rel_diff, random_feeds, run_ort  # noqa: E402


class _LogitsOnly(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, use_cache=False, return_dict=False)[0]


@pytest.fixture(scope="module")
def mamba_onnx() -> bytes:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    cfg = transformers.MambaConfig(vocab_size=100, hidden_size=32, state_size=4, num_hidden_layers=2, expand=2,
                                   conv_kernel=4, time_step_rank=4)
    module = _LogitsOnly(transformers.MambaForCausalLM(cfg).eval())
    model = otoir.load(module, (torch.randint(0, 100, (1, 6)),), training=False)
    return ir.to_proto(model).SerializeToString()


def _load(data: bytes) -> ir.Model:
    return ir.from_proto(onnx.load_from_string(data))


def _nparams(model: ir.Model) -> int:
    return sum(v.const_value.size for v in model.graph.initializers.values() if v.const_value is not None)


def test_mamba_mixer_groups(mamba_onnx):
    groups = AnalysisManager(_load(mamba_onnx)).get(ChannelGroups).groups
    inner = [g for g in groups if any(s.tensor == "model.backbone.layers.0.mixer.conv1d.weight" for s in g.slices)]
    assert len(inner) == 64 and all(g.prunable and g.meta["exact"] for g in inner)
    g = inner[0]
    rows = next(s for s in g.slices if s.tensor == "model.backbone.layers.0.mixer.in_proj.weight").indices
    assert len(rows) == 2 and rows[1] - rows[0] == 64  # x channel j and its gate channel j
    dep = {s.tensor for s in g.dependent}
    assert {"model.backbone.layers.0.mixer.A_log", "model.backbone.layers.0.mixer.out_proj.weight",
            "model.backbone.layers.0.mixer.x_proj.weight"} <= dep
    # the state axis (C contracted with the untracked scan state) is refused, with the reason
    refused = [g for g in groups if not g.prunable and "MatMul" in g.reason and "not tracked" in g.reason]
    assert refused


@pytest.mark.parametrize("seed", [0, 1])
def test_mamba_prune_oracle(mamba_onnx, seed):
    model = _load(mamba_onnx)
    groups = [g for g in AnalysisManager(model).get(ChannelGroups).groups if g.prunable and g.meta["exact"]]
    rng = np.random.default_rng(seed)
    chosen = [g for g in groups if rng.random() < 0.5]
    assert len(chosen) > 10
    for g in chosen:
        zero_group(model, g)
    feeds = random_feeds(model, seed)
    ref = run_ort(model, feeds)
    before = _nparams(model)
    PassManager.from_text("prune-channels").run(model)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    out = run_ort(model, feeds)  # the session loads and runs
    assert max_rel_diff(ref, out) <= 1e-5
    assert _nparams(model) < 0.8 * before
