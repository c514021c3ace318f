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


def test_zero_mask_agrees_with_each_slice_read_on_its_own():
    """zero_mask reads each tensor once; its answer is, group by group, what the entries say."""
    import numpy as np

    from otoir.analyses.groups import Group, TensorSlice, set_tensor_array, tensor_array, zero_groups, zero_mask

    model = random_conv_dag(5, n_blocks=4)
    res = PassManager.from_text("partition-zig").run(model)
    groups = list(res.analyses.get(ChannelGroups).groups)
    zero_groups(model, groups[::3])
    first = groups[0].slices[0]
    arr = np.array(tensor_array(model, first.tensor))
    index = [0] * arr.ndim
    index[first.axis] = first.indices[0]
    arr[tuple(index)] = np.nan  # NaN is not zero: groups[0] is no longer zero
    set_tensor_array(model, first.tensor, arr)
    extra = [Group("whole", "zig", (TensorSlice(first.tensor),)),  # axis None: the whole tensor
             Group("none", "zig", (TensorSlice(groups[3].slices[0].tensor, 0, ()),))]  # no entries
    mask = zero_mask(model, groups + extra)

    def by_hand(g):
        return all(not np.any(s.select(tensor_array(model, s.tensor)) != 0) for s in g.slices)

    assert mask.tolist() == [by_hand(g) for g in groups + extra]
    assert mask[3:len(groups):3].all() and not mask[0] and not mask[: len(groups)].all()
    assert mask[-1] and not mask[-2]


def test_prune_channels_by_ids_removes_only_those_even_when_later_groups_are_zero():
    from otoir.analyses.groups import zero_groups

    model = random_conv_dag(3, n_blocks=3)
    res = PassManager.from_text("partition-zig").run(model)
    groups = [g for g in res.analyses.get(ChannelGroups).groups if g.prunable]
    first, later = groups[0], next(g for g in groups[1:] if g.tensors != groups[0].tensors)
    zero_groups(model, [later])  # zero, but not asked for
    res = PassManager.from_text(f"prune-channels{{ids={first.id}}}").run(model)
    assert res.statistics[0][1]["num-groups-removed"] == 1
    res = PassManager.from_text("prune-channels").run(model)  # now the zero one goes
    assert res.statistics[0][1]["num-groups-removed"] == 1
