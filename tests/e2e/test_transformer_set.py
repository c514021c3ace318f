"""The transformer set (:mod:`otoir.zoo.hf`): the oracle in both modes on every architecture.

Each model is built from a tiny config with random weights (``HF_HUB_OFFLINE=1``, nothing is
downloaded), exported once per module (shared by both modes), and run through
:func:`otoir.tools.oracle_sweep.run_model_case`: a random half of the removable groups is zeroed,
the sub-network is constructed and compared with the zeroed full model in ONNX Runtime (fp32,
``<= 1e-4`` of the output scale). Needs the ``models`` extra (``transformers``).
"""

from __future__ import annotations

import os

import onnx
import onnx_ir as ir
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from otoir.tools.oracle_sweep import run_model_case  # noqa: E402
from otoir.tools.transformer_table import relative_diff  # noqa: E402
from otoir.zoo.hf import HF_MODELS, export_case, names  # noqa: E402


@pytest.fixture(scope="module")
def exports() -> dict[str, tuple[bytes, dict]]:
    """name -> (serialized export, feeds), filled on first use (one export per model for both modes)."""
    return {}


def _case(exports: dict, name: str, mode: str):
    if name not in exports:
        model, feeds = export_case(name)
        exports[name] = (ir.to_proto(model).SerializeToString(), feeds)
    data, feeds = exports[name]
    case = run_model_case(ir.from_proto(onnx.load_from_string(data)), mode, fraction=0.5, seed=0, feeds=feeds)
    assert case.outcome == "exact", f"{name} {mode}: {case.outcome}: {case.detail}"
    # relative to the output's own size (random models' logits are small), and not vacuous
    assert case.scale > 1e-3 and relative_diff(case) <= 1e-4, f"{name} {mode}: {relative_diff(case):.2e}"
    return case


def test_the_set_is_large_and_varied():
    assert len(HF_MODELS) >= 15
    kinds = {e.layer_norm for e in HF_MODELS.values()}
    assert {"pre", "post", "rms"} <= kinds


@pytest.mark.parametrize("name", names())
def test_prune_oracle(exports, name):
    case = _case(exports, name, "prune")
    assert case.groups > 0 and case.zeroed > 0, f"{name}: no channel group to prune"
    assert 0 < case.removed < case.params, f"{name}: pruning removed {case.removed} of {case.params} parameters"


@pytest.mark.parametrize("name", names())
def test_erase_oracle(exports, name):
    case = _case(exports, name, "erase")
    if case.zeroed:
        assert 0 < case.removed < case.params, f"{name}: erasing {case.zeroed} GeZIGs removed nothing"
