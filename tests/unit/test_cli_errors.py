"""Every bad input a one-line error with the right exit code (issue 10, item 5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import otoir
from otoir.testing import cli, one_line

CONV = """<ir_version: 10, opset_import: ["" : 17]>
g (float[1,4,6,6] x) => (y)
<float[4,{cin},3,3] w = {weights}>
{{
  y = Conv <{attrs}> (x, w)
}}
"""

POOL = """<ir_version: 10, opset_import: ["" : 17]>
g (float[1,4,6,6] x) => (y)
{{
  y = {op} <{attrs}> (x)
}}
"""


def conv_text(attrs: str, cin: int = 4) -> str:
    n = 4 * cin * 9
    return CONV.format(attrs=attrs, cin=cin, weights="{" + ",".join(["1"] * n) + "}")




@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.onnxtxt"
    path.write_text(conv_text("pads=[1,1,1,1]"))
    return path


# -- op attributes the spec constrains ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (conv_text("strides=[0,0]"), "attribute 'strides' must be positive, got [0, 0]"),
        (conv_text("dilations=[1,0]"), "attribute 'dilations' must be positive"),
        (conv_text("group=0"), "attribute 'group' must be positive, got 0"),
        (conv_text("group=-2"), "attribute 'group' must be positive"),
        (conv_text("group=3", cin=1), "group=3 does not divide the 4 output channels"),
        (conv_text("group=2", cin=1), "input has 4 channels, the weight [4, 1, 3, 3] with group=2 expects 2"),
        (conv_text("pads=[-1,0,0,0]"), "attribute 'pads' must not be negative"),
        (conv_text("pads=[1,1]"), "attribute 'pads' has 2 values, expected 4"),
        (conv_text("kernel_shape=[0,3]"), "attribute 'kernel_shape' must be positive"),
        (conv_text("kernel_shape=[2,2]"), "does not match the weight's shape"),
        (conv_text("strides=[1,1,1]"), "attribute 'strides' has 3 values, expected 2"),
        (POOL.format(op="MaxPool", attrs="kernel_shape=[2,2], strides=[0,1]"), "attribute 'strides' must be positive"),
        (POOL.format(op="AveragePool", attrs="kernel_shape=[0,2]"), "attribute 'kernel_shape' must be positive"),
        (POOL.format(op="MaxPool", attrs="strides=[1,1]"), "attribute 'kernel_shape' is required"),
        (POOL.format(op="DepthToSpace", attrs="blocksize=0"), "attribute 'blocksize' must be positive"),
    ],
)
@pytest.mark.parametrize("flags", [(), ("--no-verify-each",)])
def test_bad_attributes_are_input_errors(tmp_path, text, fragment, flags):
    path = tmp_path / "bad.onnxtxt"
    path.write_text(text)
    out = tmp_path / "o.onnx"
    code, stdout, err = cli(path, "-p", "classify-vertices,grow-segments,partition-gezig,partition-zig", "-o", out, *flags)
    assert code == 2 and stdout == ""
    line = one_line(err)
    assert f"invalid input '{path}'" in line and "[@y]" in line and fragment in line
    assert not out.exists()


def test_library_pipeline_checks_its_input_too(tmp_path):
    """PassManager.run (and so otoir.compress) refuses a malformed input before any analysis."""
    from otoir.errors import InputError
    from otoir.infra import PassManager

    path = tmp_path / "bad.onnxtxt"
    path.write_text(conv_text("strides=[0,0]"))
    model = otoir.load(str(path))
    with pytest.raises(InputError, match="attribute 'strides' must be positive"):
        PassManager.from_text("classify-vertices,partition-zig").run(model)
    PassManager.from_text("cse").run(model, verify_input=False)  # the caller's choice


def test_strides_zero_with_verify_does_not_crash(tmp_path):
    """Was SIGFPE (exit 136) inside ONNX Runtime."""
    path = tmp_path / "bad.onnxtxt"
    path.write_text(conv_text("strides=[0,0]"))
    proc = subprocess.run([sys.executable, "-m", "otoir.tools.otoir_opt", str(path), "--verify", "-o", str(tmp_path / "o.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "attribute 'strides' must be positive" in one_line(proc.stderr)


def test_good_conv_passes(good, tmp_path):
    code, _, err = cli(good, "-p", "classify-vertices,partition-zig", "-o", tmp_path / "o.onnx", "-q")
    assert code == 0, err


# -- option values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pipeline", "fragment"),
    [
        ("zero-groups{random=-0.5}", "option 'random' must be a number in [0, 1], got -0.5"),
        ("zero-groups{random=1.5}", "option 'random' must be a number in [0, 1], got 1.5"),
        ("zero-groups{random=1e308}", "option 'random' must be a number in [0, 1]"),
        ("zero-groups{random=inf}", "option 'random' must be a number in [0, 1], got inf"),
        ("zero-groups{random=nan}", "option 'random' must be a number in [0, 1], got nan"),
        ("zero-groups{seed=-1}", "option 'seed' must not be negative"),
        ("repeat{max=-5}(cse)", "option 'max' must be between 1 and 1000, got -5"),
        ("repeat{max=0}(cse)", "option 'max' must be between 1 and 1000, got 0"),
        ("repeat{max=1000000000}(zero-groups{random=0.5 seed=1})", "option 'max' must be between 1 and 1000"),
    ],
)
def test_option_ranges(good, pipeline, fragment):
    code, _, err = cli(good, "-p", pipeline)
    assert code == 2
    line = one_line(err)
    assert fragment in line and "cannot convert" not in line


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--elide-initializers-if-larger", "-5"], "--elide-initializers-if-larger must be >= 0 (or -1 to print every initializer), got -5"),
        (["--print-ir-after", "nosuchpass"], "--print-ir-after: unknown pass 'nosuchpass'"),
        (["--print-ir-before", "cse,nosuch"], "--print-ir-before: unknown pass 'nosuch'"),
        (["-o", ""], "-o: the output path is empty"),
        (["--report-json", ""], "--report-json: the path is empty"),
    ],
)
def test_bad_flags_exit_2(good, args, fragment):
    code, out, err = cli(good, "-p", "cse", *args)
    assert code == 2 and out == ""
    assert fragment in one_line(err)


def test_print_ir_after_a_known_pass_still_works(good):
    code, out, err = cli(good, "-p", "cse", "--print-ir-after", "cse", "-q")
    assert code == 0 and "Conv" in out
    assert "cse" in err and "Conv" in err  # the dump after cse


def test_repeat_of_zero_groups_converges(tmp_path):
    """Was a hang: zero-groups reported a change every round."""
    from otoir.zoo.random_dag import random_conv_dag

    path = tmp_path / "dag.onnx"
    otoir.save(random_conv_dag(3, n_blocks=4), path)
    code, _, err = cli(path, "-p", "repeat{max=1000}(zero-groups{random=0.5 seed=1})", "--pass-statistics", "-o", tmp_path / "o.onnx")
    assert code == 0, err
    assert "(rounds) 2 - rounds run" in err
    model = otoir.load(tmp_path / "o.onnx")
    again = otoir.PassManager.from_text("zero-groups{random=0.5 seed=1}").run(model)
    assert again.changed is False  # zeroing zeros changes nothing


def test_repeat_bound_in_the_library():
    from otoir.errors import PipelineError
    from otoir.passes.repeat import MAX_ROUNDS, Repeat

    assert Repeat(max=MAX_ROUNDS).max == MAX_ROUNDS
    with pytest.raises(ValueError, match="between 1 and"):
        Repeat(max=MAX_ROUNDS + 1)
    with pytest.raises(PipelineError, match="between 1 and"):
        otoir.PassManager.from_text(f"repeat{{max={MAX_ROUNDS + 1}}}(cse)")


# -- inputs ---------------------------------------------------------------------------------


def test_stdin_errors_name_stdin(monkeypatch):
    code, _, err = cli("-", "-p", "cse", stdin=b"\x08\x07garbage\xff\xfe")
    assert code == 2
    line = one_line(err)
    assert "'<stdin>'" in line and "/tmp" not in line
    code, _, err = cli("-", "-p", "cse", stdin=conv_text("group=0").encode())
    assert code == 2 and "invalid input '<stdin>'" in one_line(err)


def test_stdin_good_model(monkeypatch):
    code, out, err = cli("-", "-p", "cse", "-q", stdin=conv_text("pads=[1,1,1,1]").encode())
    assert code == 0, err
    assert "Conv" in out


def test_raw_python_errors_become_messages(tmp_path):
    """'buffer size must be a multiple of element size' and ZeroDivisionError for group=0."""
    import onnx_ir as ir

    from otoir.io import load

    m = load(_write(tmp_path, conv_text("pads=[1,1,1,1]")))
    proto = ir.to_proto(m)
    w = proto.graph.initializer[0]
    w.raw_data = ir.tensor(m.graph.initializers["w"].const_value.numpy()).tobytes()[:-2]
    del w.float_data[:]
    path = tmp_path / "short.onnx"
    path.write_bytes(proto.SerializeToString())
    for pipeline in ("cse", "classify-vertices,partition-zig", "otoir-prune"):
        code, _, err = cli(path, "-p", pipeline)
        line = one_line(err)
        assert code == 2 and "initializer 'w'" in line
        assert "multiple of element size" not in line and "ZeroDivisionError" not in line


def _write(tmp_path, text):
    path = tmp_path / "m.onnxtxt"
    path.write_text(text)
    return path


# -- zoo: arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("zoo:nosuch", "unknown built-in model 'zoo:nosuch'"),
        ("zoo:conv_view_linear?bogus=1", "unknown argument 'bogus'"),
        ("zoo:conv_view_linear?channels", "expected key=value"),
        ("zoo:conv_view_linear?channels=-3", "bad arguments"),
        ("zoo:conv_view_linear?channels=abc", "bad arguments"),
        ("zoo:conv_view_linear?input=3x0x8", "input= wants positive dimensions"),
        ("zoo:conv_view_linear?input=5x8x8", "cannot build the network for this input"),
        ("zoo:demosupnet?width=inf", "'inf' is not a finite number"),
    ],
)
def test_bad_zoo_arguments_exit_2(spec, fragment):
    pytest.importorskip("torch")
    code, _, err = cli(spec, "-p", "cse")
    assert code == 2
    line = one_line(err)
    assert fragment in line and "internal error" not in line


def test_zoo_parse_spec_without_torch_models():
    from otoir.zoo import parse_spec

    pytest.importorskip("torch")
    assert parse_spec("conv_view_linear?channels=4&input=3x8x8&seed=2") == ("conv_view_linear", {"channels": 4, "seed": 2}, [3, 8, 8])
    with pytest.raises(ValueError, match="given twice"):
        parse_spec("conv_view_linear?channels=4&channels=5")


# -- Ctrl-C ---------------------------------------------------------------------------------


def _console_script(name: str = "otoir-opt") -> str:
    exe = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(exe):
        pytest.skip("console script not installed")
    return exe


@pytest.fixture(scope="module")
def startup_s() -> float:
    """Seconds the interpreter takes to start (site, .pth files) before any otoir code runs:
    a Ctrl-C then is the interpreter's own business, not otoir's."""
    slowest = 0.0
    for _ in range(3):  # the slowest of three: a loaded machine starts some runs late
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=120)
        slowest = max(slowest, time.perf_counter() - t0)
    return slowest


def _interrupt(argv: list[str], prog: str, startup_s: float, delay: float, **popen) -> tuple[int, str]:
    """(exit status, stderr) of the console script ``argv`` sent SIGINT ``delay`` s after it starts.

    A signal that lands before ``console_main`` runs (interpreter start-up, or the pip-generated
    wrapper importing it: ~30 ms on a quiet machine, where no otoir handler can exist yet) is
    retried with a longer wait.
    """
    for attempt in range(4):
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
        time.sleep((3 + 2 * attempt) * startup_s + delay)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        if "console_main" in err or f"{prog}:" in err or proc.returncode == 130:
            break
    return proc.returncode, err


@pytest.mark.parametrize("delay", [0.0, 0.1, 0.4, 1.5])
def test_ctrl_c_at_any_moment_exits_130_with_one_line(delay, startup_s):
    """The console script waits on stdin; SIGINT arrives during imports or the read. Once
    ``console_main`` runs, it must be the one-line exit 130 (:func:`_interrupt` retries earlier
    signals)."""
    code, err = _interrupt([_console_script(), "-", "-p", "cse"], "otoir-opt", startup_s, delay, stdin=subprocess.PIPE)
    assert code == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["otoir-opt: interrupted; nothing written"], err


def test_ctrl_c_in_the_demo_exits_130_with_one_line(tmp_path, startup_s):
    """otoir-demo shares otoir-opt's console plumbing: Ctrl-C while it imports or trains ends it
    with exit status 130 and the one line, not a traceback."""
    code, err = _interrupt([_console_script("otoir-demo"), "--quick", "-q", "--out", str(tmp_path / "out")],
                           "otoir-demo", startup_s, 1.0)
    assert code == 130, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1] == "otoir-demo: interrupted", err


def test_ctrl_c_during_an_import_exits_130_without_unwinding(tmp_path):
    """SIGINT while a module imports must not raise there: raised inside a native extension's
    initialiser (onnx's nanobind enums), the exception aborted the process (SIGABRT) in CI."""
    (tmp_path / "interrupted_mod.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)\nraise SystemExit(3)\n")
    code = ("import signal, sys\n"
            f"sys.path.insert(0, {str(tmp_path)!r})\n"
            "from otoir.tools import console\n"
            "signal.signal(signal.SIGINT, console.sigint_handler('otoir-opt', []))\n"
            "import interrupted_mod\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "otoir-opt: interrupted; nothing written\n"


def test_keyboard_interrupt_in_a_pass_leaves_nothing(tmp_path, good):
    from dataclasses import dataclass

    from otoir.infra import Pass, register_pass

    @register_pass
    @dataclass(frozen=True)
    class _Interrupt(Pass):
        name = "test-interrupt"

        def run(self, model, ctx) -> bool:
            raise KeyboardInterrupt

    out = tmp_path / "o.onnx"
    code, _, err = cli(good, "-p", "test-interrupt", "-o", out)
    assert code == 130 and err == "otoir-opt: interrupted; nothing written\n"
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["good.onnxtxt"]


def test_console_entry_imports_are_light():
    """The console script's module loads without onnx/onnx-ir/numpy, so Ctrl-C is handled from the start."""
    code = (
        "import sys, otoir.tools.otoir_opt, otoir;"
        "heavy = [m for m in ('onnx', 'onnx_ir', 'numpy') if m in sys.modules]; assert not heavy, heavy;"
        "import otoir.stats; assert callable(otoir.stats) and otoir.stats.__name__ == 'stats';"
        "assert otoir.load.__module__.startswith('otoir.io') and otoir.PassManager.__name__ == 'PassManager'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


RECURSIVE = """<ir_version: 10, opset_import: ["" : 17, "local" : 1]>
g (float[2] x) => (float[2] y) {
  y = local.F (x)
}
<domain: "local", opset_import: ["" : 17, "local" : 1]>
F (t) => (out) {
  out = local.G (t)
}
<domain: "local", opset_import: ["" : 17, "local" : 1]>
G (t) => (out) {
  out = local.F (t)
}
"""


def test_recursive_local_functions_never_reach_onnx_runtime(tmp_path):
    """ONNX Runtime 1.19 segfaults creating a session for a recursive model-local function."""
    from otoir.errors import LoadCheckError

    src = _write(tmp_path, RECURSIVE)
    code, _, err = cli(src, "-p", "cse", "-o", str(tmp_path / "out.onnx"))
    assert code == 2 and "local::F -> local::G -> local::F calls itself" in one_line(err)
    assert not (tmp_path / "out.onnx").exists()
    # without the input verifier the load check still keeps it away from ORT (a note, no crash)
    code, _, err = cli(src, "-p", "cse", "--no-verify-each", "-o", str(tmp_path / "out.onnx"))
    assert code == 0 and "note:" in err
    with pytest.raises(LoadCheckError, match="recursive"):
        otoir.save(otoir.load(src), tmp_path / "x.onnx")


def test_verify_on_a_model_without_inference_form_is_one_line(tmp_path):
    """A running statistic used as a graph output: --verify cannot build the reference's inference form."""
    src = _write(tmp_path, """<ir_version: 10, opset_import: ["" : 17]>
g (float[N,2,4,4] x) => (float[N,2,4,4] y, float[2] rm)
<float[2] s = {1,2}, float[2] b = {0,1}, float[2] m = {3,4}, float[2] v = {5,6}>
{
  y, rm, rv = BatchNormalization <training_mode = 1> (x, s, b, m, v)
}
""")
    code, _, err = cli(src, "-p", "cleanup", "--verify", "-o", tmp_path / "o.onnx")
    assert code == 2 and "cannot --verify: the reference model has no inference form" in one_line(err)
    assert not (tmp_path / "o.onnx").exists()


def test_op_type_that_is_not_utf8_is_an_input_error(tmp_path):
    """onnx-ir keeps an op type with invalid UTF-8 as bytes, which it then cannot serialize."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"], name="r")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    path = tmp_path / "bad.onnx"
    path.write_bytes(data.replace(b"Relu", b"R\xefeu"))
    onnx.load(str(path))  # protobuf itself accepts it
    code, _, err = cli(path, "-p", "cleanup", "-o", tmp_path / "o.onnx")
    assert code == 2 and "not valid UTF-8 text" in one_line(err)


def test_control_characters_in_names_stay_on_one_line(tmp_path):
    """A corrupt value name with a newline and control bytes is escaped in the one error line."""
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["w\n\x02b"], ["y"], name="r")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "bad.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    code, _, err = cli(path, "-p", "cse")
    line = one_line(err)
    assert code == 2 and "'w \\x02b' is not defined" in line
