"""Textual pipelines: ``a,b{k=v list=x,y},repeat{max=3}(c,d)``.

Grammar::

    pipeline := element (',' element)*
    element  := NAME options? ('(' pipeline ')')?
    options  := '{' (KEY '=' VALUE)* '}'        # entries separated by spaces
    VALUE    := a run of characters other than space, '{', '}', '(', ')', or a "quoted string"

Commas inside a value separate list items (``list=x,y``). The printed form of a parsed
pipeline is canonical: parsing it again gives the same passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from otoir.errors import PipelineSyntaxError

__all__ = ["PipelineElement", "parse_pipeline", "print_pipeline"]


@dataclass
class PipelineElement:
    """One pass in a parsed pipeline.

    Attributes:
        name: The pass argument.
        options: Option text values by key.
        children: Nested pipeline (``repeat{...}(a,b)``), or None.
        position: Column of the name in the source text (for error messages).
    """

    name: str
    options: dict[str, str] = field(default_factory=dict)
    children: list[PipelineElement] | None = None
    position: int = 0


_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def error(self, reason: str, at: int | None = None) -> PipelineSyntaxError:
        return PipelineSyntaxError(self.text, self.i if at is None else at, reason)

    def peek(self) -> str:
        return self.text[self.i] if self.i < len(self.text) else ""

    def skip_ws(self) -> None:
        while self.i < len(self.text) and self.text[self.i].isspace():
            self.i += 1

    def name(self, what: str) -> str:
        self.skip_ws()
        start = self.i
        while self.i < len(self.text) and self.text[self.i] in _NAME_CHARS:
            self.i += 1
        if start == self.i:
            found = repr(self.peek()) if self.peek() else "end of pipeline"
            raise self.error(f"expected {what}, found {found}")
        return self.text[start : self.i]

    def pipeline(self, closing: str = "") -> list[PipelineElement]:
        elements = [self.element()]
        while True:
            self.skip_ws()
            c = self.peek()
            if c == ",":
                self.i += 1
                elements.append(self.element())
            elif c == closing:
                return elements
            else:
                want = f"',' or '{closing}'" if closing else "',' or end of pipeline"
                raise self.error(f"expected {want}, found {c!r}")

    def element(self) -> PipelineElement:
        self.skip_ws()
        pos = self.i
        el = PipelineElement(self.name("a pass name"), position=pos)
        self.skip_ws()
        if self.peek() == "{":
            self.i += 1
            el.options = self.options()
        self.skip_ws()
        if self.peek() == "(":
            self.i += 1
            el.children = self.pipeline(closing=")")
            self.i += 1
        return el

    def options(self) -> dict[str, str]:
        opts: dict[str, str] = {}
        while True:
            self.skip_ws()
            if self.peek() == "}":
                self.i += 1
                return opts
            if not self.peek():
                raise self.error("expected '}' to close the options")
            key_at = self.i
            key = self.name("an option name")
            if key in opts:
                raise self.error(f"option '{key}' given twice", key_at)
            self.skip_ws()
            if self.peek() != "=":
                raise self.error(f"expected '=' after option '{key}', found {self.peek()!r}" if self.peek() else f"expected '=' after option '{key}'")
            self.i += 1
            opts[key] = self.value()

    def value(self) -> str:
        self.skip_ws()
        out = []
        while self.i < len(self.text):
            c = self.text[self.i]
            if c == '"':
                out.append(self.quoted())
                continue
            if c.isspace() or c in "{}()":
                break
            out.append(c)
            self.i += 1
        return "".join(out)

    def quoted(self) -> str:
        start = self.i
        self.i += 1
        out = []
        while self.i < len(self.text):
            c = self.text[self.i]
            if c == "\\" and self.i + 1 < len(self.text):
                out.append(self.text[self.i + 1])
                self.i += 2
                continue
            if c == '"':
                self.i += 1
                return "".join(out)
            out.append(c)
            self.i += 1
        raise self.error("unterminated string", start)


def parse_pipeline(text: str) -> list[PipelineElement]:
    """Parses pipeline text.

    Raises:
        PipelineSyntaxError: With the column of the offending character.
    """
    p = _Parser(text)
    p.skip_ws()
    if not p.peek():
        return []
    return p.pipeline()


def print_pipeline(elements: list[PipelineElement]) -> str:
    """Prints parsed elements back as text (values are printed as given)."""
    from otoir.infra.passes import format_value

    parts = []
    for el in elements:
        s = el.name
        if el.options:
            s += "{" + " ".join(f"{k}={format_value(v) if ' ' in v or not v else v}" for k, v in el.options.items()) + "}"
        if el.children is not None:
            s += "(" + print_pipeline(el.children) + ")"
        parts.append(s)
    return ",".join(parts)
