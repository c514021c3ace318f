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
from otoir.zoo.hf import HF_MODELS, export, names  # noqa: E402


@pytest.fixture(scope="module")
def exports() -> dict[str, bytes]:
    """name -> serialized export, filled on first use (one export per model for both modes)."""
    return {}


def _model(exports: dict[str, bytes], name: str) -> ir.Model:
    if name not in exports:
        exports[name] = ir.to_proto(export(name)).SerializeToString()
    return ir.from_proto(onnx.load_from_string(exports[name]))


def test_the_set_is_large_and_varied():
    assert len(HF_MODELS) >= 15
    kinds = {e.layer_norm for e in HF_MODELS.values()}
    assert {"pre", "post", "rms"} <= kinds


@pytest.mark.parametrize("name", names())
def test_prune_oracle(exports, name):
    case = run_model_case(_model(exports, name), "prune", fraction=0.5, seed=0)
    assert case.outcome == "exact", f"{name}: {case.outcome}: {case.detail}"
    assert case.groups > 0 and case.zeroed > 0, f"{name}: no channel group to prune"
    assert 0 < case.removed < case.params, f"{name}: pruning removed {case.removed} of {case.params} parameters"


@pytest.mark.parametrize("name", names())
def test_erase_oracle(exports, name):
    case = run_model_case(_model(exports, name), "erase", fraction=0.5, seed=0)
    assert case.outcome == "exact", f"{name}: {case.outcome}: {case.detail}"
    if case.zeroed:
        assert 0 < case.removed < case.params, f"{name}: erasing {case.zeroed} GeZIGs removed nothing"
