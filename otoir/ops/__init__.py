"""The per-op rule table (see :mod:`otoir.ops.rules`)."""

from __future__ import annotations

from otoir.ops.rules import (
    CHANNEL_VARIANTS,
    ChannelMap,
    DropInput,
    OpRule,
    ParamSpec,
    VertexKind,
    lookup_rule,
    normalize_domain,
    register_rule,
    rule,
    unregister_rule,
)

__all__ = [
    "CHANNEL_VARIANTS",
    "ChannelMap",
    "DropInput",
    "OpRule",
    "ParamSpec",
    "VertexKind",
    "lookup_rule",
    "normalize_domain",
    "register_rule",
    "rule",
    "unregister_rule",
]
