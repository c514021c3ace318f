"""Diagnostics: messages that name the node, its op and the reason."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["Severity", "Diagnostic", "DiagnosticSink", "node_label", "op_label"]


def node_label(node: ir.Node) -> str:
    """The node's name, or ``@out`` (its first output's name) for an unnamed node."""
    if node.name:
        return node.name
    outs = [v.name for v in node.outputs if v is not None and v.name]
    return "@" + outs[0] if outs else "<unnamed>"


def op_label(node: ir.Node) -> str:
    """``domain::op_type`` of a node (``op_type`` alone in the default ONNX domain)."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


class Severity(enum.Enum):
    """How serious a diagnostic is."""

    NOTE = "note"
    REMARK = "remark"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Diagnostic:
    """One message about the IR.

    Formats like a compiler diagnostic: ``[conv3] Conv: error: reason``.

    Attributes:
        severity: Severity.
        message: The reason, one line.
        node_name: Name of the node concerned, if any.
        op_type: Op type of that node (``domain::Op`` for non-default domains).
        pass_name: The pass that emitted it.
        notes: Further lines (e.g. the passes that ran before).
    """

    severity: Severity
    message: str
    node_name: str | None = None
    op_type: str | None = None
    pass_name: str | None = None
    notes: tuple[str, ...] = field(default=())

    @classmethod
    def at(cls, node: ir.Node | None, severity: Severity, message: str, **kw) -> Diagnostic:
        """Builds a diagnostic located at ``node``."""
        if node is None:
            return cls(severity, message, **kw)
        return cls(severity, message, node_name=node_label(node), op_type=op_label(node), **kw)

    def __str__(self) -> str:
        loc = ""
        if self.node_name is not None:
            loc = f"[{self.node_name}] {self.op_type}: "
        return f"{loc}{self.severity.value}: {self.message}"


class DiagnosticSink:
    """Collects diagnostics emitted while a pipeline runs."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []

    def emit(self, diag: Diagnostic) -> None:
        """Records a diagnostic."""
        self.items.append(diag)

    def errors(self) -> list[Diagnostic]:
        """Returns the error diagnostics."""
        return [d for d in self.items if d.severity is Severity.ERROR]

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)
