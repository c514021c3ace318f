"""zero-groups with explicit ids: validity is judged against every group, not only the requested ones."""

from __future__ import annotations

import pytest

from otoir.analyses.groups import group_is_zero
from otoir.analyses.zig import ChannelGroups
from otoir.errors import PassFailure
from otoir.infra import PassManager
from otoir.zoo.random_dag import random_conv_dag


def test_single_channel_group_by_id_is_zeroed_and_pruned():
    model = random_conv_dag(3, n_blocks=3)
    res = PassManager.from_text("partition-zig").run(model)
    group = next(g for g in res.analyses.get(ChannelGroups).groups if g.prunable)
    before = sum(v.const_value.size for v in model.graph.initializers.values())
    res = PassManager.from_text(f"zero-groups{{kind=zig ids={group.id}}}").run(model)
    assert res.statistics[0][1]["num-zeroed"] == 1
    assert group_is_zero(model, group)
    res = PassManager.from_text("prune-channels").run(model)
    after = sum(v.const_value.size for v in model.graph.initializers.values())
    assert res.statistics[0][1]["num-groups-removed"] == 1 and after < before


def test_every_group_of_a_tensor_is_refused():
    model = random_conv_dag(3, n_blocks=3)
    res = PassManager.from_text("partition-zig").run(model)
    groups = [g for g in res.analyses.get(ChannelGroups).groups if g.prunable]
    tensor = groups[0].slices[0].tensor
    same = [g.id for g in groups if g.slices[0].tensor == tensor]
    with pytest.raises(PassFailure, match="refused by the validity check"):
        PassManager.from_text(f"zero-groups{{kind=zig ids={','.join(same)}}}").run(model)
