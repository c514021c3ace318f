"""The load check before writing (onnx.checker + an ORT session run once) and pass provenance.

Deliberately broken test-only passes produce models that fail each stage of the check; the
result must be exit 1 naming the pass, and nothing written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

import otoir
from otoir.errors import LoadCheckError
from otoir.infra import PassManager
from otoir.infra.loadcheck import PASS_KEY, baseline, check_loadable, find_problem, made_by
from otoir.infra.passes import Pass, option
from otoir.infra.registry import register_pass, unregister_pass
from otoir.testing import cli

ort = pytest.importorskip("onnxruntime")

TEXT = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,4,4] x) => (float[N,4,4,4] y)
<float[4,3,1,1] w = {1,2,3,4,5,6,7,8,9,10,11,12}, float[4] b = {1,2,3,4}>
{
  c = Conv (x, w, b)
  y = Relu (c)
}
"""


def make_model() -> ir.Model:
    proto = onnx.parser.parse_model(TEXT)
    proto.graph.node[0].name = "conv3"
    proto.graph.node[1].name = "relu"
    return ir.serde.deserialize_model(proto)


# ---------------------------------------------------------------------------------------------
# Broken passes (test-only)


@dataclass(frozen=True)
class CorruptConvWeight(Pass):
    """Drops an input channel of the first Conv's weight (its input keeps 3 channels)."""

    name: ClassVar[str] = "test-corrupt-conv-weight"
    summary: ClassVar[str] = "test only: slice a Conv weight so that it no longer fits"

    def run(self, model: ir.Model, ctx) -> bool:
        for node in model.graph:
            if node.op_type == "Conv":
                w = node.inputs[1]
                arr = w.const_value.numpy()[:, :2].copy()
                w.const_value = ir.tensor(arr, name=w.name)
                w.shape = ir.Shape(arr.shape)
                return True
        return False


@dataclass(frozen=True)
class InsertBadMatMul(Pass):
    """Appends a MatMul whose weight does not fit the graph output."""

    name: ClassVar[str] = "test-insert-bad-matmul"
    summary: ClassVar[str] = "test only: append a MatMul with incompatible dimensions"

    on_input: bool = option(False, "multiply the first graph input (as a new output) instead of the output")

    def run(self, model: ir.Model, ctx) -> bool:
        g = model.graph
        wv = ir.Value(name="bad_w", const_value=ir.tensor(np.ones((5, 6), np.float32), name="bad_w"))
        g.register_initializer(wv)
        node = ir.Node("", "MatMul", [g.inputs[0] if self.on_input else g.outputs[0], wv])
        node.outputs[0].dtype = ir.DataType.FLOAT
        g.append(node)
        if self.on_input:
            g.outputs.append(node.outputs[0])
        else:
            g.outputs[0] = node.outputs[0]
        node.outputs[0].shape = ir.Shape([None] * len(node.inputs[0].shape))  # rank only
        return True


@dataclass(frozen=True)
class InsertBadReshape(Pass):
    """Appends a Reshape to a constant shape: loads (N is symbolic), fails when run."""

    name: ClassVar[str] = "test-insert-bad-reshape"
    summary: ClassVar[str] = "test only: append a Reshape that fails at run time"

    def run(self, model: ir.Model, ctx) -> bool:
        g = model.graph
        sv = ir.Value(name="bad_shape", const_value=ir.tensor(np.array([5, 7], np.int64), name="bad_shape"))
        g.register_initializer(sv)
        node = ir.Node("", "Reshape", [g.outputs[0], sv], name="reshape_bad")
        node.outputs[0].dtype = ir.DataType.FLOAT
        node.outputs[0].shape = ir.Shape([5, 7])
        g.append(node)
        g.outputs[0] = node.outputs[0]
        return True


BROKEN = (CorruptConvWeight, InsertBadMatMul, InsertBadReshape)


@pytest.fixture(autouse=True, scope="module")
def _broken_passes():
    for cls in BROKEN:
        register_pass(cls)
    yield
    for cls in BROKEN:
        unregister_pass(cls.name)



@pytest.fixture
def good(tmp_path):
    path = tmp_path / "in.onnx"
    onnx.save(ir.to_proto(make_model()), str(path))
    return path


# ---------------------------------------------------------------------------------------------
# Provenance


def test_pass_manager_stamps_new_and_changed_nodes():
    m = make_model()
    PassManager.from_text("test-insert-bad-matmul,test-corrupt-conv-weight", verify_each=False).run(m)
    by_op = {n.op_type: n for n in m.graph}
    assert made_by(by_op["MatMul"]) == "test-insert-bad-matmul"
    assert made_by(by_op["Conv"]) == "test-corrupt-conv-weight"  # its weight tensor changed
    assert made_by(by_op["Relu"]) is None  # untouched: it came with the input
    # in memory only: never serialized
    assert PASS_KEY not in str(ir.to_proto(m))


def test_nested_passes_keep_their_own_name():
    m = make_model()
    PassManager.from_text("repeat{max=1}(test-insert-bad-matmul)", verify_each=False).run(m)
    assert made_by(next(n for n in m.graph if n.op_type == "MatMul")) == "test-insert-bad-matmul"


def test_passes_that_change_nothing_stamp_nothing():
    m = make_model()
    PassManager.from_text("cse,remove-unused-nodes").run(m)
    assert all(made_by(n) is None for n in m.graph)


# ---------------------------------------------------------------------------------------------
# otoir-opt: exit 1 naming the pass, nothing written


@pytest.mark.parametrize(
    ("pipeline", "fragments"),
    [
        ("test-corrupt-conv-weight", ["does not run in ONNX Runtime", "node conv3 (Conv), made by test-corrupt-conv-weight",
                                      "kernel channels"]),
        ("cse,test-insert-bad-matmul,cse", ["(MatMul), made by test-insert-bad-matmul", "ncompatible dimensions"]),
        ("test-insert-bad-reshape", ["does not run in ONNX Runtime", "node reshape_bad (Reshape), made by test-insert-bad-reshape",
                                     "cannot be reshaped"]),
        ("repeat{max=1}(test-insert-bad-reshape)", ["made by test-insert-bad-reshape"]),
    ],
)
@pytest.mark.parametrize("to_file", [True, False])
def test_broken_pass_exits_1_and_names_it(good, tmp_path, pipeline, fragments, to_file):
    out_path = tmp_path / "out.onnx"
    args = [str(good), "-p", pipeline] + (["-o", str(out_path)] if to_file else [])
    code, out, err = cli(*args)
    assert code == 1, err
    assert err.count("\n") == 1 and err.startswith("otoir-opt: error: the model produced by the pipeline"), err
    for fragment in fragments:
        assert fragment in err, err
    assert "nothing written" in err and "Traceback" not in err
    assert out == "" and not out_path.exists()
    assert sorted(os.listdir(tmp_path)) == ["in.onnx"]


def test_no_load_check_is_the_opt_out(good, tmp_path):
    out_path = tmp_path / "out.onnx"
    code, _, err = cli(str(good), "-p", "test-insert-bad-reshape", "-o", str(out_path), "--no-load-check")
    assert code == 0 and out_path.exists(), err


def test_good_pipeline_passes_the_check(good, tmp_path):
    out_path = tmp_path / "out.onnx"
    code, _, err = cli(str(good), "-p", "cse,remove-unused-nodes", "-o", str(out_path))
    assert code == 0 and err == "" and out_path.exists()
    onnx.checker.check_model(str(out_path), full_check=True)


# ---------------------------------------------------------------------------------------------
# Inputs that already fail a check: said once, up front, not a failure of the result


CUSTOM = """<ir_version: 8, opset_import: ["" : 17, "com.acme" : 1]>
g (float[N,4] x) => (float[N,4] y)
{
  a = Relu (x)
  b = com.acme.Mystery (a)
  y = Relu (b)
}
"""


def test_preexisting_problem_is_a_note_not_a_failure(tmp_path):
    src = tmp_path / "custom.onnxtxt"
    src.write_text(CUSTOM)
    out_path = tmp_path / "out.onnx"
    code, _, err = cli(str(src), "-p", "test-insert-bad-reshape", "-o", str(out_path))
    assert code == 0 and out_path.exists(), err  # ORT cannot run the input, so it cannot judge the result
    assert err.count("note:") == 1 and "does not load" in err and "com.acme::Mystery" in err, err
    code, _, err = cli(str(src), "-p", "test-insert-bad-reshape", "-o", str(out_path), "-q")
    assert code == 0 and err == ""
    # a pipeline that changes nothing writes the input as given, and says so too
    code, _, err = cli(str(src), "-p", "cse", "-o", str(out_path))
    assert code == 0 and err.count("note:") == 1 and "com.acme::Mystery" in err, err


def test_baseline_records_what_the_input_passes():
    m = ir.serde.deserialize_model(onnx.parser.parse_model(CUSTOM))
    base = baseline(m)
    assert {"onnx.checker", "onnx.checker-basic"} <= base.passes and not {"session", "run"} & base.passes
    assert base.note is not None and "Mystery" in base.note
    assert baseline(make_model()).note is None
    # an input ORT cannot load: the checker still applies to the result
    # (onnx's shape inference keeps quiet in graphs with unknown-domain ops, so use opset 23 here)
    m = ir.serde.deserialize_model(onnx.parser.parse_model(OPSET_23))
    base = baseline(m)
    if "session" in base.passes:
        pytest.skip("this ONNX Runtime runs opset 23")
    assert base.note is not None and "opset 23" in base.note
    PassManager.from_text("test-insert-bad-matmul{on-input=true}", verify_each=False).run(m)
    err = find_problem(m, baseline=base)
    assert err is not None and err.check == "onnx.checker" and err.pass_name == "test-insert-bad-matmul"


# ---------------------------------------------------------------------------------------------
# otoir.save


def test_save_refuses_an_unloadable_model(tmp_path):
    m = make_model()
    PassManager.from_text("test-insert-bad-reshape").run(m)
    path = tmp_path / "m.onnx"
    with pytest.raises(LoadCheckError) as info:
        otoir.save(m, path)
    err = info.value
    assert err.check == "run" and err.node == "reshape_bad" and err.op_type == "Reshape"
    assert err.pass_name == "test-insert-bad-reshape"
    assert f"the model to write to '{path}' does not run in ONNX Runtime" in str(err) and "\n" not in str(err)
    assert os.listdir(tmp_path) == []
    for p in (tmp_path / "m.onnxtxt",):
        with pytest.raises(LoadCheckError):
            otoir.save(m, p)
    assert os.listdir(tmp_path) == []
    otoir.save(m, path, check=False)
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_save_checks_a_model_built_outside_a_pipeline(tmp_path):
    m = make_model()
    CorruptConvWeight().run(m, None)
    with pytest.raises(LoadCheckError, match=r"node conv3 \(Conv\)\] ") as info:
        otoir.save(m, tmp_path / "m.onnx")
    assert info.value.pass_name is None  # no pass made it
    check_loadable(make_model())  # and a good model passes


def test_save_writes_models_this_ort_cannot_judge(tmp_path):
    # an operator of a custom domain (its library is not loaded): only onnx.checker can judge
    m = ir.serde.deserialize_model(onnx.parser.parse_model(CUSTOM))
    otoir.save(m, tmp_path / "custom.onnx")
    assert (tmp_path / "custom.onnx").exists()
    # ... but a malformed model with such an operator is still refused
    PassManager.from_text("test-insert-bad-matmul{on-input=true}", verify_each=False).run(m)
    with pytest.raises(LoadCheckError, match=r"\(MatMul\), made by test-insert-bad-matmul\] .*Incompatible dimensions"):
        otoir.save(m, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_check_accepts_external_data_from_anywhere(tmp_path, monkeypatch):
    m = make_model()
    path = tmp_path / "ext.onnx"
    otoir.save(m, path, external_data=True, size_threshold_bytes=0)
    back = otoir.load(path)
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    check_loadable(back)
    otoir.save(back, tmp_path / "again.onnx")
    assert (tmp_path / "again.onnx").exists()


# ---------------------------------------------------------------------------------------------
# --verify / --report on inputs ONNX Runtime cannot run: exit 2, one line


FP16_WEIGHTS = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,4,4] x) => (float[N,2,4,4] y) <float16[2,3,1,1] w = {1,2,3,4,5,6}> { y = Conv (x, w) }"""
OPSET_23 = """<ir_version: 10, opset_import: ["" : 23]>
g (float[N,3] x) => (float[N,3] y) { y = Relu (x) }"""


@pytest.mark.parametrize(
    ("text", "fragment"),
    [(CUSTOM, "does not know operator com.acme::Mystery"),
     (FP16_WEIGHTS, "tensor(float16)"),
     (OPSET_23, "cannot run opset 23 (max ")],
    ids=["unknown-op", "fp16-weights", "opset-23"],
)
@pytest.mark.parametrize("option", ["--verify", "--report"])
@pytest.mark.parametrize("load_check", [True, False])
def test_verify_and_report_on_inputs_ort_cannot_run(tmp_path, text, fragment, option, load_check):
    if text is OPSET_23:
        try:
            ort.InferenceSession(onnx.parser.parse_model(text).SerializeToString(), providers=["CPUExecutionProvider"])
            pytest.skip("this ONNX Runtime runs opset 23")
        except Exception:  # noqa: BLE001
            pass
    src = tmp_path / "in.onnxtxt"
    src.write_text(text)
    out_path = tmp_path / "out.onnx"
    args = [str(src), "-p", "cse", option, "-o", str(out_path)] + ([] if load_check else ["--no-load-check"])
    code, out, err = cli(*args)
    if code == 2 and "invalid input" in err:
        pytest.skip("otoir's verifier already refuses this input")
    assert code == 2, err
    assert err.count("\n") == 1 and f"cannot {option}" in err and fragment in err, err
    assert "internal error" not in err and "[ONNXRuntimeError]" not in err
    assert not out_path.exists()


@pytest.mark.parametrize("load_check", [True, False])
def test_verify_on_a_result_ort_cannot_run_exits_1(good, tmp_path, load_check):
    out_path = tmp_path / "out.onnx"
    args = [str(good), "-p", "test-insert-bad-reshape", "--verify", "-o", str(out_path)]
    code, _, err = cli(*args, *([] if load_check else ["--no-load-check"]))
    assert code == 1 and err.count("\n") == 1 and "cannot be reshaped" in err and "nothing written" in err, err
    assert ("made by test-insert-bad-reshape" in err) if load_check else ("cannot --verify: the result does not run" in err)
    assert not out_path.exists()
