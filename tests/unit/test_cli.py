"""otoir-opt: exit codes, one-line errors, output handling, help."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from otoir.testing import cli, one_line
from otoir.tools.otoir_opt import main

GOOD = """<ir_version: 10, opset_import: ["" : 17, "com.acme" : 1]>
g (float[N,4] x) => (float[N,4] y)
{
  a = Relu (x)
  b = com.acme.Mystery (a)
  y = Relu (b)
}
"""



@pytest.fixture
def good(tmp_path):
    p = tmp_path / "good.onnxtxt"
    p.write_text(GOOD)
    return p


def test_success_prints_text(good):
    code, out, err = cli(str(good), "-p", "cse", "-q")
    assert code == 0 and err == ""
    assert "com.acme.Mystery" in out and out.lstrip().startswith("<")


def test_output_file_written(good, tmp_path):
    out_path = tmp_path / "o.onnx"
    code, out, _ = cli(str(good), "-p", "cse", "-o", str(out_path), "-q")
    assert code == 0 and out == "" and out_path.exists()



@pytest.mark.parametrize(
    ("setup", "args", "fragment"),
    [
        ("missing", ["-p", "cse"], "no such file"),
        ("truncated", ["-p", "cse"], "is not a valid ONNX model"),
        ("text", ["-p", "cse"], "is not valid ONNX text"),
        ("good", ["-p", "no-such-pass"], "unknown pass 'no-such-pass'"),
        ("good", ["-p", "cse{size-limit=x}"], "expected an integer"),
        ("good", ["--no-such-flag"], "unrecognized arguments"),
        ("dangling", ["-p", "cse"], "is not defined"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, good, setup, args, fragment):
    path = tmp_path / "in.onnx"
    if setup == "truncated":
        main([str(good), "-o", str(path), "-q"], stdout=io.StringIO(), stderr=io.StringIO())
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif setup == "text":
        path.write_text("this is just some text\n")
    elif setup == "good":
        path = good
    elif setup == "dangling":
        path = tmp_path / "d.onnxtxt"
        path.write_text(GOOD.replace("a = Relu (x)", "a = Relu (nowhere)"))
    code, out, err = cli(str(path), *args)
    assert code == 2
    assert fragment in one_line(err)
    assert out == ""


def test_malformed_pipeline_exits_2_with_caret(good):
    code, _, err = cli(str(good), "-p", "cse,{")
    assert code == 2
    lines = err.splitlines()
    assert lines[0] == "otoir-opt: error: pipeline syntax error at column 5: expected a pass name, found '{'"
    assert lines[2].index("^") == lines[1].index("{")


def test_pass_failure_exits_1_and_writes_nothing(good, tmp_path):
    out_path = tmp_path / "o.onnx"
    code, out, err = cli(str(good), "-p", "classify-vertices{strict=true}", "-o", str(out_path))
    assert code == 1
    assert "[@b] com.acme::Mystery: error: no rule for op 'Mystery'" in one_line(err)
    assert not out_path.exists() and out == ""


def test_warnings_and_quiet(good):
    _, _, err = cli(str(good), "-p", "classify-vertices")
    assert "otoir-opt: [@b] com.acme::Mystery: warning:" in err
    _, _, err = cli(str(good), "-p", "classify-vertices", "-q")
    assert err == ""


def test_remarks_are_printed_with_v(tmp_path):
    """partition-gezig{explain=true} says why each segment is kept; -v shows it, plain runs don't."""
    p = tmp_path / "seg.onnxtxt"
    p.write_text("""<ir_version: 10, opset_import: ["" : 17]>
g (float[N,2,4,4] x) => (float[N,3,4,4] y)
<float[3,2,1,1] w = {1,0,0,1,1,1}>
{
  c = Conv (x, w)
  y = Relu (c)
}
""")
    pipeline = "classify-vertices,grow-segments,partition-gezig{explain=true}"
    code, _, err = cli(str(p), "-p", pipeline)
    assert code == 0 and "remark" not in err
    code, _, err = cli(str(p), "-p", pipeline, "-v")
    assert code == 0 and "remark: segment 0 is not a GeZIG: its output is a graph output" in err, err


def test_dump_pass_pipeline_without_input():
    code, _, err = cli("-p", "repeat{max=2}(cse, remove-unused-nodes)", "--dump-pass-pipeline")
    assert code == 0
    assert err.strip() == "otoir-opt pipeline: repeat{max=2}(cse,remove-unused-nodes)"


def test_no_input_is_usage_error():
    code, _, err = cli("-p", "cse")
    assert code == 2 and "no input model" in one_line(err)


def test_list_passes_and_help():
    code, out, _ = cli("--list-passes")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    for name in ("classify-vertices", "cse", "remove-unused-nodes", "topological-sort", "shape-inference", "check", "repeat"):
        assert name in names
    code, out, _ = cli("--help")
    assert code == 0
    assert "classify-vertices" in out and "strict=<bool>" in out and "max=<int>" in out


def test_annotate_shows_vertex_classes(good):
    code, out, _ = cli(str(good), "-p", "classify-vertices", "--annotate", "-q")
    assert code == 0
    assert out.count("# otoir.vertex=") == 3
    assert 'otoir.vertex=unknown otoir.reason="no rule for op' in out


def test_debug_prints_traceback(tmp_path):
    code, _, err = cli(str(tmp_path / "missing.onnx"), "--debug")
    assert code == 2 and "Traceback" in err


def test_console_script_runs(good):
    exe = os.path.join(os.path.dirname(sys.executable), "otoir-opt")
    if not os.path.exists(exe):
        pytest.skip("console script not installed")
    proc = subprocess.run([exe, str(good), "-p", "cse", "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Mystery" in proc.stdout
    proc = subprocess.run([exe, str(good) + ".missing"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_cli_does_not_import_torch(good):
    code = (
        "import sys; from otoir.tools.otoir_opt import main; import io;"
        f"rc = main([{str(good)!r}, '-p', 'classify-vertices,cleanup', '-q'], stdout=io.StringIO());"
        "assert rc == 0; assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def _dag_file(tmp_path):
    import otoir
    from otoir.zoo.random_dag import random_conv_dag

    path = tmp_path / "dag.onnx"
    otoir.save(random_conv_dag(3, n_blocks=4), path)
    return path


def test_verify_catches_changed_outputs(tmp_path):
    path = _dag_file(tmp_path)
    out_path = tmp_path / "o.onnx"
    # zeroing groups and erasing them: the result matches the zeroed model (the reference)
    code, _, err = cli(str(path), "-p", "zero-groups{random=0.5 seed=1},eliminate-dead-branches,cleanup", "--verify",
                       "-o", str(out_path), "-q")
    assert code == 0, err
    assert out_path.exists()
    # zeroing without a values-only marker would be caught: simulate by verifying a pass that changes outputs
    from dataclasses import dataclass

    import numpy as np

    from otoir.analyses.groups import set_tensor_array, tensor_array
    from otoir.infra import Pass, register_pass

    @register_pass
    @dataclass(frozen=True)
    class _Scale(Pass):
        name = "test-scale-weights"

        def run(self, model, ctx) -> bool:
            name = next(n for n, v in model.graph.initializers.items() if v.const_value.dtype.name == "FLOAT" and len(v.const_value.shape) == 4)
            set_tensor_array(model, name, np.asarray(tensor_array(model, name)) * 2.0)
            return True

    bad = tmp_path / "bad.onnx"
    code, _, err = cli(str(path), "-p", "test-scale-weights", "--verify", "-o", str(bad))
    assert code == 1
    assert "verification failed" in err and not bad.exists()


def test_report_json(tmp_path):
    import json

    path = _dag_file(tmp_path)
    rep = tmp_path / "r.json"
    code, _, err = cli(str(path), "-p", "zero-groups{random=0.5 seed=1},eliminate-dead-branches,cleanup", "--report",
                       "--report-json", str(rep), "-q", "-o", str(tmp_path / "o.onnx"))
    assert code == 0, err
    data = json.loads(rep.read_text())
    assert data["compressed"]["params"] < data["full"]["params"]
    assert data["verified"] is True
    assert "parameters" in err and "ORT CPU latency" in err


BIG = """<ir_version: 10, opset_import: ["" : 17]>
g (float[1,20] x) => (float[1,20] y)
<float[16] small = {SMALL}, float[20] large = {LARGE}>
{
  a = Add (x, large)
  y = Mul (a, small)
}
""".replace("SMALL", ",".join(["2"] * 16)).replace("LARGE", ",".join(["1"] * 20))


@pytest.fixture
def big(tmp_path):
    p = tmp_path / "big.onnxtxt"
    p.write_text(BIG)
    return p


def test_annotate_elides_large_initializers_by_default(big):
    from otoir.tools.otoir_opt import ANNOTATE_ELIDE_DEFAULT

    assert ANNOTATE_ELIDE_DEFAULT == 16
    # 20 elements > 16: elided (a comment names it); 16 elements: printed.
    code, out, err = cli(str(big), "-p", "cse", "--annotate", "-q")
    assert code == 0, err
    assert "# otoir.elided-initializer: float[20] large" in out
    assert "small =  {2,2" in out and "large =" not in out
    # Without --annotate the output is the whole model (it parses back).
    code, out, _ = cli(str(big), "-p", "cse", "-q")
    assert code == 0 and "elided" not in out and "large =" in out
    # An explicit limit wins; -1 prints every initializer.
    code, out, _ = cli(str(big), "-p", "cse", "--annotate", "-q", "--elide-initializers-if-larger", "8")
    assert code == 0 and "elided-initializer: float[16] small" in out and "elided-initializer: float[20] large" in out
    code, out, _ = cli(str(big), "-p", "cse", "--annotate", "-q", "--elide-initializers-if-larger=-1")
    assert code == 0 and "elided" not in out and "large =" in out
    code, _, err = cli(str(big), "-p", "cse", "--elide-initializers-if-larger=-2")
    assert code == 2 and "got -2" in one_line(err)


ZIG = """<ir_version: 10, opset_import: ["" : 17]>
g (float[1,2,4,4] x) => (float[1,2,4,4] y)
<float[3,2,1,1] w1 = {1,0,0,1,1,1}, float[2,3,1,1] w2 = {1,0,1,0,1,1}>
{
  c1 = Conv (x, w1)
  r1 = Relu (c1)
  y = Conv (r1, w2)
}
"""


def test_print_groups_table_on_stderr_even_with_q(tmp_path):
    p = tmp_path / "zig.onnxtxt"
    p.write_text(ZIG)
    code, out, err = cli(str(p), "-p", "print-groups{kind=zig}", "-q")
    assert code == 0
    lines = err.splitlines()
    assert lines[0] == "print-groups{kind=zig}: 4 zig (3 prunable)"
    assert lines[1].split() == ["id", "kind", "tensors", "params", "FLOPs", "prunable"]
    assert [ln.split()[0] for ln in lines[2:]] == ["zig:w1:0", "zig:w1:1", "zig:w1:2", "zig:w2:0"]
    assert lines[-1].endswith("no: reaches graph output 'y'")
    col = lines[1].index("tensors")  # aligned: every row's tensors start under the heading
    assert all(ln[col:].startswith("w") and ln[col - 2:col] == "  " for ln in lines[2:])
    assert "Conv (x, w1)" in out  # the model is printed as usual


def test_print_groups_metadata_survives_save(tmp_path):
    import otoir

    p = tmp_path / "zig.onnxtxt"
    p.write_text(ZIG)
    o = tmp_path / "o.onnx"
    code, _, err = cli(str(p), "-p", "print-groups{annotate-metadata=true}", "-o", str(o), "-q")
    assert code == 0, err
    m = otoir.load(str(o))
    props = {n.op_type + ":" + n.outputs[0].name: dict(n.metadata_props) for n in m.graph}
    assert props["Conv:c1"] == {"otoir.groups": "zig:w1:0-2"}
    assert props["Conv:y"]["otoir.groups"] == "zig:w2:0"
    assert props["Conv:y"]["otoir.groups-not-prunable"] == "zig:w2:0 (reaches graph output 'y')"
    assert props["Relu:r1"] == {}
    # --annotate shows the metadata in the printed IR.
    code, out, _ = cli(str(p), "-p", "print-groups{annotate-metadata=true}", "--annotate", "-q")
    assert code == 0 and "# metadata: otoir.groups=zig:w1:0-2" in out


def test_report_labels_say_what_the_reference_is(tmp_path):
    from otoir.infra.pass_manager import PassRecord, PipelineResult
    from otoir.tools.otoir_opt import _report_labels

    path = _dag_file(tmp_path)
    # Analysis only: the reference is the input, and nothing was trained.
    code, _, err = cli(str(path), "-p", "partition-zig", "--report", "-q", "-o", str(tmp_path / "a.onnx"))
    assert code == 0, err
    head = next(ln for ln in err.splitlines() if "ratio" in ln).split()
    assert head == ["input", "result", "ratio"] and "full (trained)" not in err
    # Zeroed but not trained: the reference is the zeroed model.
    code, _, err = cli(str(path), "-p", "zero-groups{random=0.5 seed=1},eliminate-dead-branches,cleanup", "--report",
                       "-q", "-o", str(tmp_path / "b.onnx"))
    assert code == 0, err
    assert next(ln for ln in err.splitlines() if "ratio" in ln).split() == ["reference", "result", "ratio"]
    trained = PipelineResult(records=[PassRecord("train", "train", 0, True, {}, {"train": {"dataset": "x"}})])
    assert _report_labels(trained) == ("full (trained)", "compressed")
