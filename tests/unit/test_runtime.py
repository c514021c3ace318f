"""otoir.runtime: sessions, random feeds, one-line errors for models ORT cannot run, agreement."""

from __future__ import annotations

import pathlib
import re
import sys

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

from otoir import runtime
from otoir.errors import OtoirError, RuntimeModelError, RuntimeUnavailableError

pytest.importorskip("onnxruntime")


def model(text: str) -> ir.Model:
    return ir.serde.deserialize_model(onnx.parser.parse_model(text))


RELU = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3] x) => (float[N,3] y) { y = Relu (x) }"""


def test_session_runs_and_ignores_extra_feeds():
    x = np.array([[-1, 0, 2]], np.float32)
    (y,) = runtime.run_model(model(RELU), {"x": x, "not_an_input": x})
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    # the same from a proto, bytes and a path
    proto = ir.to_proto(model(RELU))
    for src in (proto, proto.SerializeToString()):
        np.testing.assert_array_equal(runtime.run_model(src, {"x": x})[0], np.maximum(x, 0))


def test_session_options_are_checked():
    with pytest.raises(ValueError, match="optimization must be one of"):
        runtime.session(model(RELU), optimization="fast")


@pytest.mark.parametrize("spinning, want, stop", [(False, "0", None), (True, "1", None), (None, None, None),
                                                  ("run", "1", "1")])
def test_session_thread_pool_spinning(spinning, want, stop):
    opts = runtime.session(model(RELU), threads=2, spinning=spinning).get_session_options()

    def entry(key):
        try:
            return opts.get_session_config_entry(key)
        except RuntimeError:  # ORT's default: no entry
            return None

    assert entry("session.intra_op.allow_spinning") == want
    assert entry("session.force_spinning_stop") == stop


def test_session_rejects_unknown_spinning():
    with pytest.raises(ValueError, match="spinning must be"):
        runtime.session(model(RELU), spinning="always")


def test_interleaved_timings_spin_only_within_runs(monkeypatch):
    """Every session timed side by side spins within a run only (spinning between runs, the pool
    of the session that just ran takes the cores from the next)."""
    from otoir import report

    made = []
    real = runtime.session
    monkeypatch.setattr(runtime, "session", lambda m, **kw: made.append(kw) or real(m, **kw))
    x = np.ones((4, 3), np.float32)
    t = report.time_interleaved([model(RELU), model(RELU)], x, runs=3, warmup=1, threads=2)
    assert t.shape == (2, 3) and (t > 0).all()
    assert made == [{"threads": 2, "spinning": "run"}] * 2


class _Clocked:
    """A stand-in session that logs which model ran, for the order of the runs."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def run(self, _outputs, _feeds):
        self.log.append(self.name)


def test_interleaved_timings_take_turns_in_blocks(monkeypatch):
    """Each turn is one untimed run then ``block`` timed ones; the turns alternate; a last
    short block times only the runs left."""
    from otoir import report

    log = []
    names = iter("ab")
    monkeypatch.setattr(runtime, "session", lambda m, **kw: _Clocked(next(names), log))
    monkeypatch.setattr(report, "batch_feeds", lambda m, sample, batch: {})
    t = report.time_interleaved([model(RELU), model(RELU)], np.ones((1, 3), np.float32), runs=7, warmup=2,
                                block=3)
    assert t.shape == (2, 7)
    # warm-up 2 each; then turns of 1 + 3, 1 + 3, 1 + 1 runs
    assert "".join(log) == "aabb" + "aaaabbbb" + "aaaabbbb" + "aabb"
    log.clear()
    names = iter("ab")
    report.time_interleaved([model(RELU), model(RELU)], np.ones((1, 3), np.float32), runs=20, warmup=0)
    assert "".join(log) == "aaabbb" * 10  # by default at least 10 turns: blocks of 2 for 20 runs


CONV_GEMM = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,16,12,12] x) => (float[N,10] y)
  <float[32,16,3,3] w = {1.0}, float[32] b = {0.0}, float[32,1,3,3] dw = {1.0}, float[10,32] fw = {1.0}> {
    c = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (x, w, b)
    r = Relu (c)
    d = Conv <pads = [1, 1, 1, 1], group = 32> (r, dw)
    p = GlobalAveragePool (d)
    f = Flatten (p)
    y = Gemm <transB = 1> (f, fw)
}"""


def test_kernel_profile_counts_the_work_of_each_kernel_and_leaves_no_file(tmp_path, monkeypatch):
    from otoir import report

    monkeypatch.chdir(tmp_path)  # ORT would write its profile here without a prefix
    m = model(CONV_GEMM)
    for name, shape in (("w", (32, 16, 3, 3)), ("b", (32,)), ("dw", (32, 1, 3, 3)), ("fw", (10, 32))):
        value = np.random.default_rng(0).random(shape).astype(np.float32)
        m.graph.initializers[name].const_value = ir.tensor(value, name=name)
    x = np.random.default_rng(1).random((3, 16, 12, 12)).astype(np.float32)
    prof, again = report.kernel_profile([m, m], x, runs=4, warmup=2, threads=1, batch=2)
    assert list(tmp_path.iterdir()) == []
    assert set(prof) == set(again)  # keyed by node: the same keys for the same graph
    convs = sorted(k.work for k in prof.values() if k.op_type in ("Conv", "FusedConv"))
    # batch 2: dense 3x3 conv, 32 outputs at 6x6 from 16 inputs; depthwise 3x3 on 32 channels at 6x6
    assert convs == [2 * 36 * 32 * 9, 2 * 36 * 32 * 16 * 9]
    gemm = [k for k in prof.values() if k.op_type == "Gemm"]
    assert len(gemm) == 1 and gemm[0].work == 2 * 32 * 10
    assert all(k.us > 0 for k in prof.values())


def test_kernel_efficiency_scales_each_full_kernel_by_the_work_kept():
    from otoir.report import KernelTime, kernel_efficiency, work_scaled_us

    full = {"a": KernelTime("Conv", 100.0, 1000.0), "b": KernelTime("Conv", 50.0, 400.0),
            "c": KernelTime("Relu", 10.0, 100.0)}
    # a keeps half its work, b a quarter, c all; expected 50 + 12.5 + 10 = 72.5 us
    sub = {"a": KernelTime("Conv", 50.0, 500.0), "b": KernelTime("Conv", 20.0, 100.0),
           "c": KernelTime("Relu", 10.0, 100.0)}
    assert kernel_efficiency(full, sub) == pytest.approx(80.0 / 72.5)
    assert work_scaled_us(full, sub) == pytest.approx(72.5)
    # a kernel of a kind the full model has not got (a layout reorder) adds time and no expectation
    sub["ReorderInput_token_3"] = KernelTime("ReorderInput", 7.25, 10.0)
    assert kernel_efficiency(full, sub) == pytest.approx(87.25 / 72.5)
    # reorders are named by token, so they pair up as a pool of their op type: the full model's
    # two reorders (8 us, work 40) against the sub's one (work 10): 2 us expected
    full = {**full, "ReorderInput_token_1": KernelTime("ReorderInput", 5.0, 30.0),
            "ReorderInput_token_2": KernelTime("ReorderInput", 3.0, 10.0)}
    assert kernel_efficiency(full, sub) == pytest.approx(87.25 / 74.5)
    assert work_scaled_us(full, sub) == pytest.approx(74.5)
    # a kernel that vanished costs nothing either way; a model against itself is 1
    assert kernel_efficiency(full, {"a": full["a"]}) == pytest.approx(1.0)
    assert kernel_efficiency(full, full) == pytest.approx(1.0)


def test_random_feeds_types_and_shapes():
    m = model("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,S,8] h, int64[N,S] ids, bool[N,S] mask, float[7,3] fixed, float[0,3] empty, float16[N,2] half)
  => (float[N,S,8] y) { y = Identity (h) }""")
    feeds = runtime.random_feeds(m, seed=1, batch=2, size=5)
    assert feeds["h"].shape == (2, 5, 8) and feeds["h"].dtype == np.float32
    assert feeds["ids"].shape == (2, 5) and feeds["ids"].dtype == np.int64
    assert feeds["ids"].min() >= 0 and feeds["ids"].max() < 4  # valid token ids of any vocabulary
    assert feeds["mask"].dtype == np.bool_ and feeds["mask"].shape == (2, 5)
    assert feeds["fixed"].shape == (7, 3)  # a fixed leading dimension of any size is kept
    assert feeds["empty"].shape == (0, 3)
    assert feeds["half"].dtype == np.float16
    # named symbols can be bound; the same symbol has one value everywhere
    feeds = runtime.random_feeds(m, sizes={"S": 6, "N": 1})
    assert feeds["h"].shape == (1, 6, 8) and feeds["ids"].shape == (1, 6)
    # deterministic per seed
    a, b = runtime.random_feeds(m, seed=3), runtime.random_feeds(m, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert runtime.data_inputs(m)[0].name == "h"


def test_random_feeds_run_a_multi_input_model():
    m = model("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,T,4] x, int64[N,T] ids, bool[N,T] keep) => (float[N,T,4] y)
<float[4,4] emb = {1,0,0,0, 0,1,0,0, 0,0,1,0, 0,0,0,1}>
{
  e = Gather <axis=0> (emb, ids)
  s = Add (x, e)
  k = Unsqueeze (keep, axes)
  z = Constant <value = float {0}> ()
  y = Where (k, s, z)
}""".replace("Unsqueeze (keep, axes)", "Unsqueeze (keep, ax)").replace("{\n", "{\n  ax = Constant <value = int64[1] {-1}> ()\n", 1))
    feeds = runtime.random_feeds(m, seed=0, batch=3, size=5)
    (y,) = runtime.run_model(m, feeds)
    assert y.shape == (3, 5, 4)


# ---------------------------------------------------------------------------------------------
# Models ORT cannot run: one line saying what and why


def _ort_error(text: str, feeds: dict | None = None) -> RuntimeModelError:
    m = model(text)
    with pytest.raises(RuntimeModelError) as info:
        if feeds is None:
            runtime.session(m)
        else:
            runtime.run_model(m, feeds)
    msg = str(info.value)
    assert "\n" not in msg and "[ONNXRuntimeError]" not in msg and "onnxruntime_src" not in msg, msg
    assert isinstance(info.value, OtoirError)
    return info.value


def _skip_if_supported(text: str) -> None:
    try:
        runtime.session(model(text))
    except RuntimeModelError:
        return
    pytest.skip("this ONNX Runtime supports it")


def test_newer_opset_is_named():
    text = RELU.replace('"" : 17', '"" : 23')
    _skip_if_supported(text)
    err = _ort_error(text)
    assert re.fullmatch(rf"ONNX Runtime {re.escape(runtime.version())} cannot run opset 23 \(max \d+\)", str(err)), err
    assert err.stage == "load" and err.unsupported


def test_newer_ir_version_is_named():
    text = RELU.replace("ir_version: 8", "ir_version: 11")
    _skip_if_supported(text)
    err = _ort_error(text)
    assert re.search(r"cannot load IR version 11 \(max \d+\)", str(err)), err


def test_unknown_ops_are_named():
    err = _ort_error("""<ir_version: 8, opset_import: ["" : 17, "com.acme" : 1]>
g (float[N,3] x) => (float[N,3] y) { y = com.acme.Mystery (x) }""")
    assert "com.acme::Mystery" in str(err) and err.unsupported
    err = _ort_error("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3] x) => (float[N,3] y) { y = Mystery (x) }""")
    assert "Mystery" in str(err) and "No Op registered" in str(err)


def test_mixed_fp16_weights_and_missing_kernels():
    err = _ort_error("""<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,4,4] x) => (float[1,2,4,4] y) <float16[2,3,1,1] w = {1,2,3,4,5,6}> { y = Conv (x, w) }""")
    assert "tensor(float16)" in str(err) and "Conv" in str(err)
    text = """<ir_version: 8, opset_import: ["" : 17]>
g (bfloat16[1,3] x) => (bfloat16[1,3] y) { y = Relu (x) }"""
    _skip_if_supported(text)
    assert "has no CPU kernel for Relu" in str(_ort_error(text))


def test_run_failure_names_the_node():
    text = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3] x) => (float[5,7] y) <int64[2] s = {5,7}> { y = Reshape (x, s) }"""
    proto = onnx.parser.parse_model(text)
    proto.graph.node[0].name = "reshape1"
    with pytest.raises(RuntimeModelError) as info:
        runtime.run_model(ir.serde.deserialize_model(proto), {"x": np.ones((2, 3), np.float32)})
    err = info.value
    assert err.stage == "run" and err.node == "reshape1" and not err.unsupported
    assert "cannot be reshaped" in str(err) and "'reshape1'" in str(err) and "\n" not in str(err)


def test_ort_log_never_reaches_stderr(capfd):
    for text in (RELU.replace('"" : 17', '"" : 23'), """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3] x) => (float[5,7] y) <int64[2] s = {5,7}> { y = Reshape (x, s) }"""):
        with pytest.raises(RuntimeModelError):
            runtime.run_model(model(text), {"x": np.ones((2, 3), np.float32)})
    # an unused initializer makes ORT warn at session creation
    m = model("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3] x) => (float[N,3] y) <float[2] unused = {1,2}> { y = Relu (x) }""")
    runtime.run_model(m, {"x": np.ones((2, 3), np.float32)})
    captured = capfd.readouterr()
    assert captured.err == "", captured.err


def test_missing_onnxruntime_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert not runtime.available() and runtime.version() is None
    with pytest.raises(RuntimeUnavailableError, match="pip install"):
        runtime.session(model(RELU))


def test_describe_strips_sources():
    reason, node = runtime.describe_ort_error(
        "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. "
        "Name:'c7' Status Message: /onnxruntime_src/core/x.cc:12 void f(const std::vector<int>&, g(int)) "
        "x == y was false. Invalid input shape: {3}")
    assert node == "c7" and reason.endswith("failed running Conv: Invalid input shape: {3}"), reason


# ---------------------------------------------------------------------------------------------
# Comparing and evaluating


def test_max_rel_diff_and_output_agreement():
    assert runtime.max_rel_diff([np.array([2.0, 4.0])], [np.array([2.0, 3.0])]) == pytest.approx(0.25)
    # the output's own scale: a small output's 1 % error is 1e-2, not 1e-4 of a floor of 1
    assert runtime.max_rel_diff([np.array([0.01, -0.005])], [np.array([0.0101, -0.005])]) == pytest.approx(1e-2)
    assert runtime.max_rel_diff([np.zeros(2)], [np.array([0.0, 1e-3])]) == pytest.approx(1e-3)  # all zero: absolute
    assert runtime.max_rel_diff([np.zeros(2)], [np.zeros(3)]) == float("inf")
    assert runtime.output_scale(np.array([-3.0, 2.0])) == 3.0 and runtime.output_scale(np.zeros(0)) == 1.0
    a = model(RELU)
    b = model(RELU.replace("y = Relu (x)", "r = Relu (x)\n one = Constant <value = float {0.5}> ()\n y = Add (r, one)"))
    x = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32) * 10
    scale = float(np.abs(np.maximum(x, 0)).max())
    assert runtime.output_agreement(a, b, x, batch=10) == pytest.approx(0.5 / scale, rel=1e-5)
    assert runtime.output_agreement(a, b, x, batch=3) >= 0.5 / scale  # the worst batch counts
    assert runtime.output_agreement(a, a, {"x": x}) == 0.0


def test_evaluate_and_accuracy():
    m = model("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3] x) => (float[N,3] y) { y = Identity (x) }""")
    x = np.array([[3, 1, 0], [0, 2, 1], [1, 0, 5], [2, 9, 0]], np.float64)
    labels = np.array([0, 1, 0, 1])
    res = runtime.evaluate(m, x, labels, batch=3)
    assert res.samples == 4 and res.accuracy == pytest.approx(0.75)
    assert runtime.accuracy(x, labels) == pytest.approx(0.75)
    z = x - x.max(axis=1, keepdims=True)
    ce = -(z - np.log(np.exp(z).sum(axis=1, keepdims=True)))[np.arange(4), labels].mean()
    assert res.loss == pytest.approx(ce, rel=1e-5)


def test_production_code_does_not_import_testing():
    root = pathlib.Path(__file__).resolve().parents[2]
    allowed = {root / "otoir" / "testing.py"}
    offenders = []
    for folder in ("otoir", "passes", "tools", "kernels"):
        for path in (root / folder).rglob("*.py"):
            if path not in allowed and re.search(r"otoir\.testing|from otoir import testing", path.read_text()):
                offenders.append(str(path.relative_to(root)))
    assert offenders == []
