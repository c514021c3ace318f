"""The rule table's ``channel_reduction`` field and the ``rms-norm`` variant (exact hidden-size pruning)."""

from __future__ import annotations

import pytest

from otoir.ops.rules import ChannelMap, OpRule, lookup_rule


def test_builtin_reductions_declare_what_a_channel_reduction_does():
    assert lookup_rule("ReduceMean").channel_reduction == "mean"
    assert {lookup_rule(op).channel_reduction for op in ("ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare")} \
        == {"sum"}
    # a max, product or log-sum-exp changes when a zero channel goes: still a barrier there
    assert all(lookup_rule(op).channel_reduction == "" for op in ("ReduceMax", "ReduceMin", "ReduceProd",
                                                                   "ReduceLogSumExp"))
    rms = lookup_rule("RMSNormalization", version=23)
    assert rms is not None and rms.channel_variant == "rms-norm" and lookup_rule("RMSNormalization", version=22) is None


def test_unknown_channel_reduction_is_refused():
    with pytest.raises(ValueError, match="channel_reduction 'max' is not one of"):
        OpRule("MyReduce", domain="com.acme", channel_map=ChannelMap.REDUCE, channel_reduction="max")
