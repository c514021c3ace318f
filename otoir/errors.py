"""Exception types of otoir.

Every error a user can cause derives from :class:`OtoirError` and formats as a one-line
message that names the file, node or pipeline position involved.
"""

from __future__ import annotations

__all__ = [
    "OtoirError",
    "InputError",
    "OutputError",
    "PipelineSyntaxError",
    "PipelineError",
    "PassFailure",
    "VerifierError",
    "RuntimeUnavailableError",
    "RuntimeModelError",
    "LoadCheckError",
]


class OtoirError(Exception):
    """Base class of all errors raised by otoir on purpose."""


class InputError(OtoirError):
    """The input could not be read: missing file, not ONNX, truncated, unsupported object."""


class OutputError(OtoirError):
    """The output cannot be written: empty path, not a regular file, missing directory, I/O error.

    The message names the path as the user gave it (never a temporary file).
    """


class PipelineError(OtoirError):
    """A pipeline is well-formed text but names an unknown pass or a bad option."""


class PipelineSyntaxError(PipelineError):
    """A pipeline string does not parse.

    Attributes:
        text: The pipeline text.
        position: Zero-based index of the offending character.
        reason: What was expected.
    """

    def __init__(self, text: str, position: int, reason: str) -> None:
        self.text = text
        self.position = position
        self.reason = reason
        super().__init__(self.render())

    def render(self) -> str:
        """Returns the message with the text and a caret under the offending character."""
        return f"pipeline syntax error at column {self.position + 1}: {self.reason}\n  {self.text}\n  {' ' * self.position}^"


class PassFailure(OtoirError):
    """A pass failed; ``diagnostics`` holds what it reported.

    Attributes:
        pass_name: The failing pass.
        diagnostics: The error diagnostics (``otoir.infra.diagnostics.Diagnostic``).
        history: Names of the passes that ran before, in order.
    """

    def __init__(self, pass_name: str, diagnostics: list, history: list[str] | None = None) -> None:
        self.pass_name = pass_name
        self.diagnostics = list(diagnostics)
        self.history = list(history or [])
        first = str(self.diagnostics[0]) if self.diagnostics else "failed"
        more = f" (+{len(self.diagnostics) - 1} more)" if len(self.diagnostics) > 1 else ""
        super().__init__(f"pass '{pass_name}' failed: {first}{more}")


class VerifierError(PassFailure):
    """The structural verifier rejected the IR after a pass."""

    def __init__(self, pass_name: str, diagnostics: list, history: list[str] | None = None) -> None:
        super().__init__(pass_name, diagnostics, history)
        first = str(self.diagnostics[0]) if self.diagnostics else "invalid IR"
        more = f" (+{len(self.diagnostics) - 1} more)" if len(self.diagnostics) > 1 else ""
        self.args = (f"verifier failed after pass '{pass_name}': {first}{more}",)


class RuntimeUnavailableError(OtoirError):
    """ONNX Runtime is needed (``--verify``, ``--report``, evaluation) but not installed."""


class RuntimeModelError(OtoirError):
    """ONNX Runtime cannot create or run a session for a model.

    The message is one line saying what ORT could not do and why, e.g.
    ``ONNX Runtime 1.19.2 cannot run opset 23 (max 21)``.

    Attributes:
        reason: That line.
        node: The node ORT named, if any.
        stage: ``"load"`` (session creation) or ``"run"``.
        unsupported: ORT lacks support (newer opset or IR version, an operator of a custom
            domain, no kernel for these types) rather than the model being malformed.
    """

    def __init__(self, reason: str, *, node: str | None = None, stage: str = "load", unsupported: bool = False) -> None:
        self.reason = reason
        self.node = node
        self.stage = stage
        self.unsupported = unsupported
        where = f" (node '{node}')" if node and f"'{node}'" not in reason else ""
        super().__init__(reason + where)


class LoadCheckError(OtoirError):
    """A model about to be written fails ``onnx.checker`` or does not load / run in ONNX Runtime.

    Attributes:
        check: ``"onnx.checker"``, ``"session"`` (ORT session creation) or ``"run"``.
        reason: One-line reason.
        node: Name of the offending node, if known.
        op_type: Its operator type, if known.
        pass_name: The pass that last created or changed that node, if known.
    """

    def __init__(self, message: str, *, check: str, reason: str, node: str | None = None,
                 op_type: str | None = None, pass_name: str | None = None) -> None:
        self.check = check
        self.reason = reason
        self.node = node
        self.op_type = op_type
        self.pass_name = pass_name
        super().__init__(message)
