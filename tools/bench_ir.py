"""Benchmark: otoir load / classify-vertices / save vs plain onnx.load / onnx.save.

Builds a synthetic conv/BN/ReLU/Add model (default 20,000 nodes, external data), then runs
each side in its own subprocess (so peak RSS is that side's own) and prints times, peak RSS
and ratios measured in this one run::

    python -m otoir.tools.bench_ir [--nodes 20000] [--channels 64] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

__all__ = ["build_model", "main"]


def build_model(path: str, nodes: int, channels: int, seed: int = 0) -> int:
    """Writes a chain of residual blocks (Conv, BN, Relu, Add: 4 nodes each) with external data.

    Returns the number of nodes.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    blocks = max(nodes // 4, 1)
    c = channels
    inits, node_list = [], []
    prev = "x"
    for i in range(blocks):
        w = f"b{i}.conv.weight"
        inits.append(numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.01).astype(np.float32), w))
        for name, val in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            inits.append(numpy_helper.from_array(np.full((c,), val, np.float32), f"b{i}.bn.{name}"))
        node_list += [
            helper.make_node("Conv", [prev, w], [f"b{i}.c"], name=f"b{i}.conv", pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", [f"b{i}.c"] + [f"b{i}.bn.{n}" for n in ("weight", "bias", "running_mean", "running_var")],
                             [f"b{i}.n"], name=f"b{i}.bn"),
            helper.make_node("Relu", [f"b{i}.n"], [f"b{i}.r"], name=f"b{i}.relu"),
            helper.make_node("Add", [f"b{i}.r", prev], [f"b{i}.out"], name=f"b{i}.add"),
        ]
        prev = f"b{i}.out"
    graph = helper.make_graph(node_list, "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 8, 8])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", c, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location=os.path.basename(path) + ".data", size_threshold=1024)
    return len(node_list)


_OTOIR = """
import sys, time, json
def hwm():
    # VmHWM: this process's own peak RSS (ru_maxrss would include the parent's peak at fork)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
t0 = time.perf_counter()
import otoir
from otoir.infra import PassManager
t_import = time.perf_counter() - t0
src, dst = sys.argv[1], sys.argv[2]
t0 = time.perf_counter(); m = otoir.load(src); t_load = time.perf_counter() - t0
t0 = time.perf_counter(); r = PassManager.from_text("classify-vertices").run(m); t_cls = time.perf_counter() - t0
t0 = time.perf_counter(); otoir.save(m, dst, external_data=True); t_save = time.perf_counter() - t0
print(json.dumps(dict(load=t_load, classify=t_cls, save=t_save, rss=hwm(),
                      stems=r.statistics[0][1]["num-stem"])))
"""

_ONNX = """
import sys, time, json, os
def hwm():
    # VmHWM: this process's own peak RSS (ru_maxrss would include the parent's peak at fork)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
import onnx
src, dst = sys.argv[1], sys.argv[2]
t0 = time.perf_counter(); m = onnx.load(src); t_load = time.perf_counter() - t0
t0 = time.perf_counter()
onnx.save(m, dst, save_as_external_data=True, all_tensors_to_one_file=True, location=os.path.basename(dst) + ".data")
t_save = time.perf_counter() - t0
print(json.dumps(dict(load=t_load, save=t_save, rss=hwm())))
"""


def _run(code: str, src: str, dst: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, src, dst], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=20000)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        src = os.path.join(d, "model.onnx")
        t0 = time.perf_counter()
        # built in a subprocess so that this process stays small
        n = int(subprocess.run([sys.executable, "-c", "import sys; from otoir.tools.bench_ir import build_model; "
                                "print(build_model(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))",
                                src, str(args.nodes), str(args.channels)],
                               check=True, capture_output=True, text=True).stdout.split()[-1])
        size = os.path.getsize(src + ".data") / 2**20
        print(f"model: {n} nodes, {size:.0f} MiB external data (built in {time.perf_counter() - t0:.1f} s)")
        o = _run(_OTOIR, src, os.path.join(d, "otoir.onnx"))
        p = _run(_ONNX, src, os.path.join(d, "onnx.onnx"))
    print(f"{'step':<22}{'otoir':>12}{'onnx':>12}{'otoir/onnx':>12}")
    print(f"{'load (s)':<22}{o['load']:>12.3f}{p['load']:>12.3f}{o['load'] / p['load']:>12.2f}")
    print(f"{'classify-vertices (s)':<22}{o['classify']:>12.3f}{'-':>12}{'-':>12}")
    print(f"{'save (s)':<22}{o['save']:>12.3f}{p['save']:>12.3f}{o['save'] / p['save']:>12.2f}")
    print(f"{'peak RSS (MiB)':<22}{o['rss']:>12.0f}{p['rss']:>12.0f}{o['rss'] / p['rss']:>12.2f}")
    print(f"stems classified: {o['stems']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
