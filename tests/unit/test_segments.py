"""Golden tests of grow-segments on DemoSupNet (OTOv3 Figure 1b) and StackedUnets (oto-notes 6.2)."""

from __future__ import annotations

import functools

import pytest

pytest.importorskip("torch")

import otoir  # noqa: E402
from otoir.analyses.segments import INPUT, OUTPUT, SegmentGraph  # noqa: E402
from otoir.infra.analysis import AnalysisManager  # noqa: E402


@functools.cache
def _model(name: str, width: float):
    import otoir.zoo as zoo

    m, x = zoo.build(name, width=width)
    return otoir.load(m, x)


def _by_label(sg: SegmentGraph) -> dict[str, object]:
    return {tuple(n.name.split("/")[1] if n.name.count("/") > 1 else n.name.strip("/") for n in s.nodes): s
            for s in sg.segments}


def test_demosupnet_segments_match_figure_1b():
    sg = AnalysisManager(_model("demosupnet", 0.125)).get(SegmentGraph)
    labels = [tuple(n.name for n in s.nodes) for s in sg.segments]
    assert labels == [
        ("/conv1/Conv", "/bn1/BatchNormalization"),
        ("/conv5/Conv", "/bn5/BatchNormalization"),
        ("/conv2/Conv", "/bn2/BatchNormalization"),
        ("/maxpool/MaxPool", "/conv3/Conv", "/bn3/BatchNormalization"),
        ("/avgpool/AveragePool", "/conv4/Conv", "/bn4/BatchNormalization"),
        ("/Add",),
        ("/Concat",),
        ("/conv7/Conv", "/bn7/BatchNormalization"),
        ("/conv8/Conv", "/bn8/BatchNormalization"),
        ("/conv6/Conv",),
        ("/Add_1",),
        ("/gap/GlobalAveragePool", "/Flatten", "/linear/Gemm"),
    ]
    s = sg.segments
    assert s[0].preds == (INPUT,) and set(s[0].succs) == {2, 3, 4}
    assert s[6].is_joint and s[6].preds == (2, 3, 4) and s[6].succs == (9,)
    assert s[5].is_joint and set(s[5].preds) == {1, 9}
    assert s[11].succs == (OUTPUT,)
    assert sg.num_edges() == 14


def test_stackedunets_segments_match_rendering():
    sg = AnalysisManager(_model("stackedunets", 0.5)).get(SegmentGraph)
    ops = sorted("-".join(n.op_type for n in s.nodes) for s in sg.segments)
    # oto-notes 6.2: 22 segments; the Resize scale sub-graphs belong to none.
    assert len(sg) == 22
    assert ops.count("Add") == 7 and ops.count("Resize") == 2
    assert "MaxPool-Conv-Conv-Resize" in ops  # 13-14-15-19
    assert "Conv-Conv-BatchNormalization-Relu-Resize" in ops  # 26..33
    assert "Conv-BatchNormalization-Relu-Conv-BatchNormalization-Relu-Resize" in ops  # 63..70
    assert ops.count("Relu-Conv-Relu-BatchNormalization") == 2  # 35..38, 72..75
    assert "GlobalAveragePool-Flatten-Gemm" in ops
    in_segments = {n for s in sg.segments for n in s.nodes}
    assert not any(n.op_type in ("Shape", "Constant") for n in in_segments)


def test_every_data_node_in_exactly_one_segment():
    model = _model("darts_supernet", 0.5)
    sg = AnalysisManager(model).get(SegmentGraph)
    seen = [n for s in sg.segments for n in s.nodes]
    assert len(seen) == len(set(seen)) == len(sg.data_nodes)
    for s in sg.segments:
        # chains: single producer inside, single consumer inside
        for a, b in zip(s.nodes, s.nodes[1:], strict=False):
            assert not s.is_joint
            assert b in {u.node for o in a.outputs for u in o.uses()}
        for t in s.succs:
            if t >= 0:
                assert s.id in sg.segments[t].preds


def test_grow_segments_pass_statistics():
    model = _model("demosupnet", 0.125)
    r = otoir.PassManager.from_text("grow-segments").run(model)
    stats = dict(r.statistics)["grow-segments"]
    assert stats["num-segments"] == 12 and stats["num-joints"] == 3
    assert "seg 6 joint /Concat" in r.results["segments"]
