"""Pass manager: analyses, invalidation, verifier, failures, instruments, statistics."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import onnx_ir as ir
import pytest

from otoir.errors import PassFailure, VerifierError
from otoir.infra import (
    PRESERVE_ALL,
    Analysis,
    DumpIR,
    Instrument,
    Pass,
    PassManager,
    PassStatistics,
    PrintIR,
    Timing,
    register_pass,
)

MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (float[N,4] x) => (float[N,4] y)
{
  a = Relu (x)
  b = Identity (a)
  y = Relu (b)
}
"""


def model() -> ir.Model:
    return ir.from_onnx_text(MODEL)


class CountNodes(Analysis):
    name = "count"
    instances = 0

    def __init__(self, model, am) -> None:
        CountNodes.instances += 1
        self.n = len(model.graph)


@register_pass
@dataclass(frozen=True)
class _Probe(Pass):
    name = "test-probe"
    statistics = {"nodes": "number of nodes seen"}
    preserves = PRESERVE_ALL

    def run(self, model, ctx) -> bool:
        ctx.stat("nodes", ctx.analyses.get(CountNodes).n)
        return False


@register_pass
@dataclass(frozen=True)
class _DropIdentity(Pass):
    name = "test-drop-identity"

    def run(self, model, ctx) -> bool:
        for node in list(model.graph):
            if node.op_type == "Identity":
                node.outputs[0].replace_all_uses_with(node.inputs[0])
                model.graph.remove(node, safe=True)
                return True
        return False


@register_pass
@dataclass(frozen=True)
class _Break(Pass):
    name = "test-break"

    def run(self, model, ctx) -> bool:
        nodes = list(model.graph)
        model.graph.remove(nodes[0])  # leaves a dangling use: the verifier must object
        return True


@register_pass
@dataclass(frozen=True)
class _Raise(Pass):
    name = "test-raise"

    def run(self, model, ctx) -> bool:
        raise ValueError("boom")


@register_pass
@dataclass(frozen=True)
class _Error(Pass):
    name = "test-error"

    def run(self, model, ctx) -> bool:
        ctx.error("bad thing", next(iter(model.graph)))
        return False


def test_analysis_is_cached_and_invalidated():
    CountNodes.instances = 0
    m = model()
    res = PassManager.from_text("test-probe,test-probe,test-drop-identity,test-probe").run(m)
    counts = [s["nodes"] for _, s in res.statistics if "nodes" in s]
    assert counts == [3, 3, 2]
    # computed once before the change, once after: the changing pass dropped it
    assert CountNodes.instances == 2


def test_unchanged_pass_keeps_analyses():
    CountNodes.instances = 0
    m = model()
    PassManager.from_text("test-probe,cse,test-probe").run(m)  # cse finds nothing: nothing dropped
    assert CountNodes.instances == 1


def test_verifier_names_the_node_and_history():
    m = model()
    with pytest.raises(VerifierError) as info:
        PassManager.from_text("test-probe,test-break").run(m)
    err = info.value
    assert err.history == ["test-probe"]
    assert "is not defined" in str(err) and "Identity" in str(err)


def test_no_verify_each_skips_the_verifier():
    m = model()
    PassManager.from_text("test-break", verify_each=False).run(m)  # no exception


def test_exception_in_pass_becomes_pass_failure():
    with pytest.raises(PassFailure) as info:
        PassManager.from_text("test-probe,test-raise").run(model())
    assert "ValueError: boom" in str(info.value)
    assert info.value.history == ["test-probe"]


def test_error_diagnostic_fails_the_pass_and_names_the_node():
    with pytest.raises(PassFailure) as info:
        PassManager.from_text("test-error").run(model())
    assert str(info.value.diagnostics[0]) == "[@a] Relu: error: bad thing"


def test_repeat_reaches_a_fixed_point():
    m = ir.from_onnx_text(MODEL.replace("y = Relu (b)", "c = Identity (b)\n  y = Relu (c)"))
    res = PassManager.from_text("repeat{max=5}(test-drop-identity)").run(m)
    assert [n.op_type for n in m.graph] == ["Relu", "Relu"]
    assert res.statistics[-1][1]["rounds"] == 3  # two changes, then one quiet round


def test_instruments_print_time_and_dump(tmp_path):
    out = io.StringIO()
    pm = PassManager.from_text(
        "test-probe,test-drop-identity",
        instruments=[PrintIR(out, before={"test-drop-identity"}, after="all"), Timing(out), PassStatistics(out),
                     DumpIR(str(tmp_path / "dump"))],
    )
    pm.run(model())
    text = out.getvalue()
    assert text.count("IR Dump After") == 2
    assert text.count("IR Dump Before test-drop-identity") == 1
    assert "Execution time report" in text and "test-drop-identity" in text.split("Execution time report")[1]
    assert "(nodes) 3 - number of nodes seen" in text
    assert sorted(os.listdir(tmp_path / "dump")) == ["00-input.onnxtxt", "01-test-probe.onnxtxt", "02-test-drop-identity.onnxtxt"]
    assert "Identity" not in (tmp_path / "dump" / "02-test-drop-identity.onnxtxt").read_text()


def test_print_ir_after_change_only():
    out = io.StringIO()
    PassManager.from_text("test-probe,test-drop-identity", instruments=[PrintIR(out, after="all", only_if_changed=True)]).run(model())
    assert out.getvalue().count("IR Dump After") == 1


@register_pass
@dataclass(frozen=True)
class _Nest(Pass):
    """Runs probe, drop-identity, probe as children; leaves a result under a shared key."""

    name = "test-nest"

    def run(self, model, ctx) -> bool:
        kids = [_Probe(), _DropIdentity(), _Probe()]
        changed = ctx.run_nested(kids, model)
        ctx.results["shared"] = f"nest:{ctx.resources.get('tag')}"
        return changed


@register_pass
@dataclass(frozen=True)
class _Shared(Pass):
    name = "test-shared"
    preserves = PRESERVE_ALL

    def run(self, model, ctx) -> bool:
        ctx.results["shared"] = "plain"
        return False


def test_nested_passes_are_instrumented_verified_and_timed():
    out = io.StringIO()
    timing = Timing(out)
    seen = []

    class Order(Instrument):
        def before_pass(self, p, model, ctx):
            seen.append(("before", p.name, ctx.depth))

        def after_pass(self, p, model, ctx, changed):
            seen.append(("after", p.name, ctx.depth))

    res = PassManager.from_text("test-shared,test-nest,test-shared", instruments=[Order(), timing]).run(
        model(), resources={"tag": "x"})
    # instruments see the children inside their container
    assert seen[2:8] == [("before", "test-nest", 0), ("before", "test-probe", 1), ("after", "test-probe", 1),
                         ("before", "test-drop-identity", 1), ("after", "test-drop-identity", 1),
                         ("before", "test-probe", 1)]
    assert seen[9] == ("after", "test-nest", 0)
    # each pass run is timed on its own: the container's time covers its children's
    names = [(n, d) for n, _, d in timing.records]
    assert names == [("test-shared", 0), ("test-nest", 0), ("test-probe", 1), ("test-drop-identity", 1),
                     ("test-probe", 1), ("test-shared", 0)]
    t = {i: s for i, (_, s, _) in enumerate(timing.records)}
    assert t[1] >= t[2] + t[3] + t[4]
    assert "\n  " in out.getvalue() and "    test-drop-identity" in out.getvalue()  # children indented
    # the analyses were invalidated by the nested change: the second probe sees 2 nodes
    assert [s["nodes"] for _, s in res.statistics if "nodes" in s] == [3, 2]
    # every run keeps its own results: no key clash, the merged view keeps the last
    assert res.results_of("shared") == ["plain", "nest:x", "plain"]
    assert res.results["shared"] == "plain"
    assert [(r.name, r.depth) for r in res.records][1:4] == [("test-probe", 1), ("test-drop-identity", 1),
                                                            ("test-probe", 1)]


def test_nested_failure_fails_the_container_and_names_the_child():
    @dataclass(frozen=True)
    class Bad(Pass):
        name = "test-nest-bad"

        def run(self, model, ctx) -> bool:
            return ctx.run_nested([_Error()], model)

    failed = []

    class Failed(Instrument):
        def after_pass_failed(self, p, model, ctx):
            failed.append(p.name)

    with pytest.raises(PassFailure) as info:
        PassManager([Bad()], instruments=[Failed()]).run(model())
    assert info.value.pass_name == "test-error"
    assert failed == ["test-error", "test-nest-bad"]


def test_nested_run_needs_a_pass_manager():
    from otoir.infra import AnalysisManager, DiagnosticSink, PassContext

    m = model()
    ctx = PassContext(AnalysisManager(m), DiagnosticSink(), "x")
    with pytest.raises(RuntimeError, match="pass manager"):
        ctx.run_nested([_Probe()], m)
    assert dict(ctx.resources) == {}
