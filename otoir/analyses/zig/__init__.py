"""The ZIG analysis: zero-invariant channel groups (OTOv2) by exact channel propagation.

Layout:

* :mod:`~otoir.analyses.zig.analysis`: :class:`ChannelGroups`, the analysis (groups, shared
  weights, product constraints).
* :mod:`~otoir.analyses.zig.state`: :class:`Track`, :class:`ParamUse`, :class:`ChannelState`.
* :mod:`~otoir.analyses.zig.reshape`: reshape/transpose/broadcast index algebra of tracks.
* :mod:`~otoir.analyses.zig.unionfind`: :func:`components` (atoms -> groups).
* :mod:`~otoir.analyses.zig.handlers`: per-op-family channel handlers, selected by the op's
  rule (``channel_map``, ``channel_variant``) only.
"""

from __future__ import annotations

from otoir.analyses.zig.analysis import ChannelGroups, GroupInfo
from otoir.analyses.zig.handlers import CHANNEL_HANDLERS, handler_for, propagate_node
from otoir.analyses.zig.reshape import reshape_blocks
from otoir.analyses.zig.state import ChannelState, ParamUse, Track
from otoir.analyses.zig.unionfind import components

__all__ = [
    "ChannelGroups",
    "GroupInfo",
    "ChannelState",
    "ParamUse",
    "Track",
    "CHANNEL_HANDLERS",
    "handler_for",
    "propagate_node",
    "reshape_blocks",
    "components",
]
