"""The per-op rule table (see :mod:`otoir.ops.rules`).

Importing the package registers the built-in rules (:mod:`otoir.ops.table`): ``rules`` defines
the table's types and registry, ``table`` fills it; neither imports the package back.
"""

from __future__ import annotations

from otoir.ops import table as _table  # noqa: F401,E402  (registers the built-in rules)
from otoir.ops.fold import constant_inputs
from otoir.ops.rules import (
    CHANNEL_VARIANTS,
    ChannelMap,
    ChannelWalk,
    ConstFlow,
    DropInput,
    FlopCount,
    Fold,
    OpRule,
    ParamSpec,
    VertexKind,
    ZeroJoin,
    ZeroOut,
    lookup_rule,
    node_flops,
    normalize_domain,
    register_rule,
    rule,
    unregister_rule,
)

__all__ = [
    "CHANNEL_VARIANTS",
    "ChannelMap",
    "ChannelWalk",
    "ConstFlow",
    "DropInput",
    "FlopCount",
    "Fold",
    "OpRule",
    "ParamSpec",
    "VertexKind",
    "ZeroJoin",
    "ZeroOut",
    "constant_inputs",
    "lookup_rule",
    "node_flops",
    "normalize_domain",
    "register_rule",
    "rule",
    "unregister_rule",
]
