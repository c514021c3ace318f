"""Ops that were barriers on transformers: MoE expert weights gathered by the router, torch's
``F.pad`` with pads computed by a shape sub-graph (TF "same" padding), GroupNorm(1) as torch
exports it. Each model is built in code; the oracle (zero, construct, compare in ONNX Runtime)
checks what the analysis claims.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("onnxruntime")

from otoir.analyses.zig import ChannelGroups  # noqa: E402
from otoir.infra.analysis import AnalysisManager  # noqa: E402
from otoir.infra.pass_manager import PassManager  # noqa: E402
from otoir.runtime import max_rel_diff, random_feeds  # noqa: E402
from otoir.testing import run_ort  # noqa: E402

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits) -> ir.Model:
    g = helper.make_graph(nodes, "g", inputs, outputs,
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def _nparams(m: ir.Model) -> int:
    return sum(v.const_value.size for v in m.graph.initializers.values() if v.const_value is not None)


def _zero_and_build(model: ir.Model, build: str, feeds, seed: int = 0) -> tuple[ir.Model, float, int]:
    PassManager.from_text(f"partition-zig,zero-groups{{kind=zig random=0.5 seed={seed}}}").run(model)
    ref = ir.from_proto(ir.to_proto(model))
    before = _nparams(model)
    PassManager.from_text(build).run(model)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    return model, max_rel_diff(run_ort(ref, feeds), run_ort(model, feeds)), before - _nparams(model)


# -- mixture of experts ----------------------------------------------------------------------------

E, H, UNITS, S = 4, 8, 6, 10


def _moe() -> ir.Model:
    """Batched experts as transformers exports them: gate_up[ids] @ x, SiLU(gate)*up, down[ids] @ h."""
    n = helper.make_node
    nodes = [
        n("Gather", ["gate_up", "ids"], ["gw"], axis=0),
        n("Unsqueeze", ["x", "ax2"], ["x3"]),
        n("MatMul", ["gw", "x3"], ["p3"]),
        n("Squeeze", ["p3", "ax2"], ["p"]),
        n("Slice", ["p", "s0", "s1", "ax1"], ["gate"]),
        n("Slice", ["p", "s1", "s2", "ax1"], ["up"]),
        n("Sigmoid", ["gate"], ["sg"]),
        n("Mul", ["gate", "sg"], ["act"]),
        n("Mul", ["act", "up"], ["hid"]),
        n("Gather", ["down", "ids"], ["dw"], axis=0),
        n("Unsqueeze", ["hid", "ax2"], ["h3"]),
        n("MatMul", ["dw", "h3"], ["o3"]),
        n("Squeeze", ["o3", "ax2"], ["o"]),
        n("Mul", ["o", "route"], ["y"]),
    ]
    inits = {"gate_up": RNG.standard_normal((E, 2 * UNITS, H)).astype(np.float32),
             "down": RNG.standard_normal((E, H, UNITS)).astype(np.float32),
             "ax2": np.array([2]), "ax1": np.array([1]), "s0": np.array([0]), "s1": np.array([UNITS]),
             "s2": np.array([2 * UNITS])}
    f = TensorProto.FLOAT
    return _model(nodes, [helper.make_tensor_value_info("x", f, [S, H]),
                          helper.make_tensor_value_info("ids", TensorProto.INT64, [S]),
                          helper.make_tensor_value_info("route", f, [S, 1])],
                  [helper.make_tensor_value_info("y", f, [S, H])], inits)


def _moe_feeds():
    return {"x": RNG.standard_normal((S, H)).astype(np.float32), "ids": RNG.integers(0, E, S),
            "route": RNG.random((S, 1)).astype(np.float32)}


def test_moe_expert_units_are_groups():
    groups = [g for g in AnalysisManager(_moe()).get(ChannelGroups).groups if g.prunable]
    assert len(groups) == UNITS and all(g.meta["exact"] for g in groups)
    for g in groups:
        rows = next(s for s in g.slices if s.tensor == "gate_up")
        assert rows.axis == 1 and len(rows.indices) == 2 and rows.indices[1] - rows.indices[0] == UNITS
        cols = next(s for s in g.dependent if s.tensor == "down")
        assert cols.axis == 2 and cols.indices == (rows.indices[0],)


def test_moe_prune_oracle():
    model, diff, removed = _zero_and_build(_moe(), "prune-channels", _moe_feeds())
    assert diff <= 1e-5
    assert removed > 0
    # round(0.5 * 6) = 3 units of every expert: 2 rows of gate_up and 1 column of down each
    assert tuple(model.graph.initializers["gate_up"].const_value.shape) == (E, 2 * (UNITS - 3), H)
    assert tuple(model.graph.initializers["down"].const_value.shape) == (E, H, UNITS - 3)


# -- Pad with pads computed by a shape sub-graph -------------------------------------------------


def _padded(torch_pads: list[int], c_pad: int = 0) -> ir.Model:
    """Conv -> Pad(pads computed the way torch exports F.pad) -> Conv; ``torch_pads`` last axis first."""
    n = helper.make_node
    k = len(torch_pads)
    nodes = [
        n("Conv", ["x", "w1"], ["c1"]),
        n("Concat", ["tp", "zeros"], ["all"], axis=0),
        n("Reshape", ["all", "pairs"], ["r"]),
        n("Slice", ["r", "m1", "mbig", "z", "m1"], ["rev"]),
        n("Transpose", ["rev"], ["tr"], perm=[1, 0]),
        n("Reshape", ["tr", "m1"], ["flat"]),
        n("Cast", ["flat"], ["pads"], to=TensorProto.INT64),
        n("Pad", ["c1", "pads", "cval"], ["p"], mode="constant"),
        n("Conv", ["p", "w2"], ["y"]),
    ]
    inits = {"w1": RNG.standard_normal((6, 3, 3, 3)).astype(np.float32),
             "w2": RNG.standard_normal((2, 6 + c_pad, 3, 3)).astype(np.float32),
             "tp": np.array(torch_pads, np.int64), "zeros": np.zeros(8 - k, np.int64),
             "pairs": np.array([-1, 2]), "m1": np.array([-1]), "mbig": np.array([-(2**62)]), "z": np.array([0]),
             "cval": np.array(0.0, np.float32)}
    f = TensorProto.FLOAT
    return _model(nodes, [helper.make_tensor_value_info("x", f, [1, 3, 10, 10])],
                  [helper.make_tensor_value_info("y", f, [1, 2, 7, 7])], inits)


def test_pad_with_computed_spatial_pads_passes_channels():
    model = _padded([0, 1, 0, 1])  # TF "same": right and bottom
    groups = [g for g in AnalysisManager(model).get(ChannelGroups).groups if g.prunable]
    assert len(groups) == 6 and all(g.meta["exact"] for g in groups)
    feeds = random_feeds(model, 0)
    model, diff, removed = _zero_and_build(model, "prune-channels", feeds)
    assert diff <= 1e-5 and removed > 0


def test_pad_with_computed_channel_pads_is_a_barrier():
    groups = AnalysisManager(_padded([0, 1, 0, 1, 1, 0], c_pad=1)).get(ChannelGroups).groups
    assert not any(g.prunable for g in groups)
    assert any("Pad" in g.reason and "channel axis" in g.reason for g in groups)


# -- GroupNorm(1) as torch exports it -----------------------------------------------------------


def _groupnorm1() -> ir.Model:
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1"], ["c1"]),
        n("Reshape", ["c1", "g_shape"], ["r"]),
        n("InstanceNormalization", ["r", "one", "zero"], ["nrm"], epsilon=1e-5),
        n("Shape", ["c1"], ["c1_shape"]),
        n("Reshape", ["nrm", "c1_shape"], ["back"]),
        n("Mul", ["back", "gamma"], ["sc"]),
        n("Add", ["sc", "beta"], ["gn"]),
        n("Conv", ["gn", "w2"], ["y"]),
    ]
    inits = {"w1": RNG.standard_normal((6, 3, 3, 3)).astype(np.float32),
             "w2": RNG.standard_normal((2, 6, 1, 1)).astype(np.float32),
             "g_shape": np.array([0, 1, -1]), "one": np.ones(1, np.float32), "zero": np.zeros(1, np.float32),
             "gamma": (1 + RNG.random((6, 1, 1))).astype(np.float32),
             "beta": RNG.standard_normal((6, 1, 1)).astype(np.float32)}
    f = TensorProto.FLOAT
    return _model(nodes, [helper.make_tensor_value_info("x", f, [2, 3, 8, 8])],
                  [helper.make_tensor_value_info("y", f, [2, 2, 6, 6])], inits)


def test_groupnorm1_channels_are_flagged_inexact_with_the_reason():
    groups = [g for g in AnalysisManager(_groupnorm1()).get(ChannelGroups).groups if g.prunable]
    assert len(groups) == 6
    assert all(not g.meta["exact"] and "InstanceNormalization" in g.reason and "GroupNorm" in g.reason
               for g in groups)


def test_groupnorm1_prune_keeps_inexact_groups_and_allow_inexact_builds_a_loadable_model():
    feeds = random_feeds(_groupnorm1(), 0)
    _, diff, removed = _zero_and_build(_groupnorm1(), "prune-channels", feeds)
    assert removed == 0 and diff == 0.0  # kept: nothing removed, outputs unchanged
    model, diff, removed = _zero_and_build(_groupnorm1(), "prune-channels{allow-inexact=true}", feeds)
    assert removed > 0
    assert diff > 1e-4  # the statistics over the remaining channels differ: inexact, as declared
    assert run_ort(model, feeds)[0].shape == (2, 2, 6, 6)
