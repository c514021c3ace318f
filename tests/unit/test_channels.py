"""Unit tests of the channel-propagation primitives."""

from __future__ import annotations

import numpy as np

from otoir.analyses.zig import components, reshape_blocks


def test_reshape_blocks_factorise_shuffle_and_flatten():
    assert reshape_blocks((2, 8, 4, 4), (2, 2, 4, 4, 4)) == [([0], [0]), ([1], [1, 2]), ([2], [3]), ([3], [4])]
    assert reshape_blocks((2, 6, 4, 4), (2, 96)) == [([0], [0]), ([1, 2, 3], [1])]
    assert reshape_blocks((2, 6), (2, 4)) is None


def test_components_union_find():
    lab = components(6, [(np.array([0, 3]), np.array([5, 4])), (np.array([5]), np.array([2]))])
    assert lab.tolist() == [0, 1, 0, 3, 3, 0]


def test_every_builtin_rule_selects_a_channel_handler():
    # Propagation knows an op only through its rule: each built-in rule names a handler.
    from otoir.analyses.zig import handler_for
    from otoir.analyses.zig.handlers.norms import per_channel
    from otoir.ops import ChannelMap, lookup_rule, rules

    lookup_rule("Conv")  # registers the built-in table
    for candidates in rules._BUILTIN.values():
        for r in candidates:
            assert handler_for(r) is not None, r.op_type
    assert handler_for(lookup_rule("BatchNormalization")) is per_channel  # IDENTITY with parameters
    assert handler_for(lookup_rule("Relu")) is not per_channel
    assert lookup_rule("Gemm").channel_variant == "gemm" and lookup_rule("Conv").channel_variant == ""
    assert lookup_rule("ConstantOfShape").channel_map is ChannelMap.FILL


def test_channel_map_given_as_a_string_is_the_enum_value():
    from otoir.ops import ChannelMap, OpRule

    assert OpRule("X", domain="com.acme", channel_map="produce").channel_map is ChannelMap.PRODUCE
