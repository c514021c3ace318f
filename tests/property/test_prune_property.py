"""Property test: on random conv DAGs, zeroing random prunable groups and pruning is exact."""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from otoir.analyses.groups import zero_group  # noqa: E402
from otoir.analyses.zig import ChannelGroups  # noqa: E402
from otoir.infra.analysis import AnalysisManager  # noqa: E402
from otoir.infra.pass_manager import PassManager  # noqa: E402
from otoir.testing import random_feeds, run_ort  # noqa: E402
from otoir.zoo.strategies import conv_dags  # noqa: E402


@settings(max_examples=8, deadline=None)
@given(model=conv_dags(max_blocks=4, max_channels=6), seed=st.integers(0, 1000), fraction=st.floats(0.1, 0.9))
def test_random_dag_prune_is_exact(model, seed, fraction):
    cg = AnalysisManager(model).get(ChannelGroups)
    rng = np.random.default_rng(seed)
    cands = [g for g in cg.groups if g.prunable]
    assert cands  # every DAG has at least its stem conv channels
    chosen = [g for g in cands if rng.random() < fraction] or cands[:1]
    for g in chosen:
        zero_group(model, g)
    feeds = random_feeds(model, seed)
    ref = run_ort(model, feeds)
    before = sum(v.const_value.size for v in model.graph.initializers.values())
    PassManager.from_text("prune-channels").run(model)
    after = sum(v.const_value.size for v in model.graph.initializers.values())
    out = run_ort(model, feeds)
    assert after <= before  # a group is kept when removing it would empty a tensor
    for a, b in zip(ref, out, strict=True):
        assert a.shape == b.shape
        assert np.max(np.abs(a - b)) <= 1e-5 * max(1.0, float(np.max(np.abs(a))))
