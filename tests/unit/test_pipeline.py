"""Pipeline text: parsing, canonical printing, round trips, error positions."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from otoir.errors import PipelineError, PipelineSyntaxError
from otoir.infra import Pass, PassManager, option, parse_pipeline, print_pipeline, register_pass
from otoir.infra.registry import unregister_pass


@register_pass
@dataclass(frozen=True)
class _OptsPass(Pass):
    name = "test-opts"
    summary = "test pass with options"

    count: int = option(1, "an int")
    ratio: float = option(0.5, "a float")
    flag: bool = option(False, "a bool")
    names: tuple[str, ...] = option((), "a list")
    ids: tuple[int, ...] = option((), "an int list")
    label: str = option("x", "a string")

    def run(self, model, ctx) -> bool:
        return False


def test_parse_structure():
    els = parse_pipeline("a,b{k=v list=x,y},repeat{max=3}(c,d)")
    assert [e.name for e in els] == ["a", "b", "repeat"]
    assert els[1].options == {"k": "v", "list": "x,y"}
    assert els[2].options == {"max": "3"}
    assert [c.name for c in els[2].children] == ["c", "d"]
    assert print_pipeline(els) == "a,b{k=v list=x,y},repeat{max=3}(c,d)"


def test_parse_whitespace_and_quotes():
    els = parse_pipeline(' a { k = "hello world"  j=1 } , b ')
    assert els[0].options == {"k": "hello world", "j": "1"}
    assert els[1].name == "b"


def test_empty_pipeline():
    assert parse_pipeline("") == []
    assert parse_pipeline("   ") == []


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("a,,b", 2, "expected a pass name"),
        ("a{k=v", 5, "expected '}'"),
        ("a{k v}", 4, "expected '='"),
        ("a b", 2, "expected ',' or end of pipeline"),
        ("repeat(a,b", 10, "expected ',' or ')'"),
        ("a{k=1 k=2}", 6, "given twice"),
        ('a{k="x}', 4, "unterminated string"),
    ],
)
def test_syntax_errors_point_at_the_character(text, column, fragment):
    with pytest.raises(PipelineSyntaxError) as info:
        parse_pipeline(text)
    err = info.value
    assert err.position == column, err.render()
    assert fragment in err.reason
    lines = err.render().splitlines()
    assert lines[1].strip() == text.strip()
    assert lines[2].index("^") - 2 == column


def test_options_convert_and_round_trip():
    pm = PassManager.from_text("test-opts{count=3 ratio=0.25 flag=true names=a,b ids=1,2,3 label=\"two words\"}")
    p = pm.passes[0]
    assert (p.count, p.ratio, p.flag, p.names, p.ids, p.label) == (3, 0.25, True, ("a", "b"), (1, 2, 3), "two words")
    text = pm.to_text()
    again = PassManager.from_text(text)
    assert again.passes == pm.passes
    assert again.to_text() == text


def test_defaults_are_not_printed():
    assert PassManager.from_text("test-opts{count=1}").to_text() == "test-opts"


def test_nested_round_trip():
    text = "repeat{max=3}(cse,remove-unused-nodes),classify-vertices"
    pm = PassManager.from_text(text)
    assert pm.to_text() == text
    assert PassManager.from_text(pm.to_text()).passes == pm.passes


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("no-such-pass", "unknown pass 'no-such-pass'"),
        ("test-opts{bogus=1}", "has no option 'bogus'"),
        ("test-opts{count=abc}", "expected an integer"),
        ("test-opts{flag=maybe}", "expected true or false"),
        ("repeat", "needs a nested pipeline"),
        ("cse(a)", "does not take a nested pipeline"),
    ],
)
def test_semantic_errors(text, fragment):
    with pytest.raises(PipelineError) as info:
        PassManager.from_text(text)
    assert fragment in str(info.value)


def test_duplicate_registration_is_refused():
    @dataclass(frozen=True)
    class Other(Pass):
        name = "test-opts"

    with pytest.raises(ValueError, match="already registered"):
        register_pass(Other)


def test_unregister():
    @register_pass
    @dataclass(frozen=True)
    class Temp(Pass):
        name = "test-temp"

    unregister_pass("test-temp")
    with pytest.raises(PipelineError):
        PassManager.from_text("test-temp")
