"""The LLaMA ONNX builder (:mod:`otoir.zoo.llama_onnx`): a 2-layer model with external data, no torch."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

pytest.importorskip("onnxruntime")

import otoir  # noqa: E402
from otoir.analyses.zig import ChannelGroups  # noqa: E402
from otoir.infra.analysis import AnalysisManager  # noqa: E402
from otoir.testing import run_ort  # noqa: E402
from otoir.tools.oracle_sweep import run_model_case  # noqa: E402
from otoir.zoo.llama_onnx import SHAPES, LlamaShape, build_llama  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("llama") / "tiny.onnx")
    build_llama(path, **SHAPES["tiny"], seq=8, weights="random")
    return path


def test_tiny_model_is_valid_with_external_data(tiny):
    assert os.path.getsize(tiny + ".data") > os.path.getsize(tiny)
    onnx.checker.check_model(tiny, full_check=True)
    model = otoir.load(tiny)
    ids = np.random.default_rng(0).integers(0, 64, (2, 8))
    logits = run_ort(model, {"input_ids": ids})[0]
    assert logits.shape == (2, 8, 64) and np.all(np.isfinite(logits)) and np.abs(logits).max() > 0
    # causal: the first position does not see the later tokens
    ids2 = ids.copy()
    ids2[:, 1:] = (ids2[:, 1:] + 1) % 64
    logits2 = run_ort(model, {"input_ids": ids2})[0]
    assert np.allclose(logits[:, 0], logits2[:, 0], atol=1e-5) and not np.allclose(logits[:, 1], logits2[:, 1])
    n = sum(v.const_value.size for v in model.graph.initializers.values() if v.name.startswith(("model.", "lm_head")))
    assert n == LlamaShape(**SHAPES["tiny"]).params()


def test_tiny_model_groups(tiny):
    groups = AnalysisManager(otoir.load(tiny)).get(ChannelGroups).groups
    ffn = [g for g in groups if g.prunable and any(s.tensor.endswith("mlp.gate_proj.weight") for s in g.slices)]
    assert len(ffn) == 2 * 64  # every FFN unit of both layers
    assert all({s.tensor.rsplit(".", 2)[-2] for s in g.slices} >= {"gate_proj", "up_proj"} for g in ffn)


@pytest.mark.parametrize("mode", ["prune", "erase"])
def test_tiny_model_oracle(tiny, mode):
    case = run_model_case(otoir.load(tiny), mode, fraction=0.5, seed=0)
    assert case.outcome == "exact", case.detail
    assert 0 < case.removed < case.params


def test_sparse_weights_take_no_disk(tmp_path):
    path = tmp_path / "sparse.onnx"
    build_llama(path, layers=2, hidden=256, ffn=512, heads=4, kv_heads=4, vocab=1000, max_positions=64, seq=8)
    st = os.stat(str(path) + ".data")
    assert st.st_size > 2_000_000 and st.st_blocks * 512 < st.st_size // 10


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="heads"):
        build_llama(tmp_path / "x.onnx", layers=1, hidden=30, ffn=8, heads=4, kv_heads=2)
