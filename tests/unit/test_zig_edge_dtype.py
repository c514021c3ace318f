"""The union-find edges of the channel analysis are int32 while atom ids fit (half the memory)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

import otoir.analyses.zig.analysis as zig_analysis
from otoir.analyses.zig import ChannelGroups
from otoir.analyses.zig.state import ChannelState
from otoir.infra.analysis import AnalysisManager

_MODEL = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[2,3,4] x) => (float[2,3,2] y)
<float[4,6] w1 = {1,0,0,3,1,1, 0,1,1,2,1,0, 2,2,0,0,1,2, 1,0,1,2,0,1}, float[6] b1 = {1,2,3,4,5,6},
 float[6,4] w2 = {1,2,3,4,5,6,7,8,1,2,3,4,5,6,7,8,1,2,3,4,5,6,7,8}, float[4,2] wo = {1,2,3,4,5,6,7,8}>
{
  h = MatMul (x, w1)
  hb = Add (h, b1)
  r = Relu (hb)
  z = MatMul (r, w2)
  s = Add (x, z)
  y = MatMul (s, wo)
}
"""


def _groups(monkeypatch, dtype=None):
    seen = []
    real = zig_analysis.components

    def spy(n, edges):
        seen.extend(a.dtype for e in edges for a in e)
        return real(n, edges)

    monkeypatch.setattr(zig_analysis, "components", spy)
    if dtype is not None:
        monkeypatch.setattr(ChannelState, "_edge_dtype", lambda self: dtype)
    model = ir.from_proto(onnx.parser.parse_model(_MODEL))
    groups = AnalysisManager(model).get(ChannelGroups).groups
    return [(g.id, g.prunable, tuple(g.slices), tuple(g.dependent)) for g in groups], seen


def test_edges_are_int32_and_give_the_same_groups(monkeypatch):
    small, dtypes = _groups(monkeypatch)
    assert dtypes and all(d == np.int32 for d in dtypes)
    wide, dtypes64 = _groups(monkeypatch, np.int64)
    assert dtypes64 and all(d == np.int64 for d in dtypes64)
    assert small == wide
    assert any(p for _, p, _, _ in small)  # the graph has prunable groups (w1 units, the stream)


def test_edge_dtype_widens_past_int32():
    st = ChannelState.__new__(ChannelState)
    st.n = np.iinfo(np.int32).max + 2
    assert st._edge_dtype() is np.int64
    st.n = 10
    assert st._edge_dtype() is np.int32
