"""ONNX text printing with ``# otoir.*`` annotations."""

from __future__ import annotations

from otoir.textir.printer import print_model

__all__ = ["print_model"]
