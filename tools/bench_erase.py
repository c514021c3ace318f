"""Benchmark: grow-segments + partition-gezig + eliminate-dead-branches on generated super-networks.

Usage: ``python tools/bench_erase.py [--sizes 1000,10000,100000]``. Each network is a chain of
residual blocks ``x + conv-bn-relu(x) + conv-bn(x)`` (Sum of three inputs); one candidate per
block is zeroed. Prints the time per phase and the time per vertex (constant = linear growth).

Times are CPU seconds of this process (``time.process_time``): the machine is shared, and wall
time mostly measures the other jobs. ``wall s`` is the wall-clock total for reference.
``--gc-stats`` also prints the time spent in Python's garbage collector per size.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

__all__ = ["make_supernet", "main"]


def make_supernet(n_vertices: int, c: int = 2, hw: int = 4) -> ir.Model:
    """A chain of blocks of ~6 vertices each, about ``n_vertices`` nodes in total."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = "x"
    blocks = max(1, n_vertices // 6)
    for b in range(blocks):
        outs = [x]
        for j, act in enumerate((True, False)):
            w = f"b{b}c{j}.weight"
            inits.append(numpy_helper.from_array((rng.standard_normal((c, c, 1, 1)) * 0.3).astype(np.float32), w))
            nodes.append(helper.make_node("Conv", [x, w], [f"b{b}c{j}"], name=f"b{b}conv{j}"))
            names = [f"b{b}bn{j}.{k}" for k in ("weight", "bias", "mean", "var")]
            for nm, val in zip(names, (np.ones(c), np.zeros(c), np.zeros(c), np.ones(c)), strict=True):
                inits.append(numpy_helper.from_array(val.astype(np.float32), nm))
            y = f"b{b}n{j}"
            nodes.append(helper.make_node("BatchNormalization", [f"b{b}c{j}", *names], [y], name=f"b{b}bn{j}"))
            if act:
                nodes.append(helper.make_node("Relu", [y], [y + "r"], name=f"b{b}relu{j}"))
                y = y + "r"
            outs.append(y)
        nodes.append(helper.make_node("Sum", outs, [f"b{b}s"], name=f"b{b}sum"))
        x = f"b{b}s"
    g = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, c, hw, hw])], inits)
    return ir.serde.deserialize_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))


def _run(n: int, fresh: bool = False) -> tuple[int, float, float, float, int, float]:
    from otoir.analyses.gezig import GeZIGPartition
    from otoir.analyses.groups import zero_group
    from otoir.analyses.segments import SegmentGraph
    from otoir.infra import PassManager
    from otoir.infra.analysis import AnalysisManager

    model = make_supernet(n)
    w0 = time.perf_counter()
    t0 = time.process_time()
    am = AnalysisManager(model)
    seg = am.get(SegmentGraph)
    t1 = time.process_time()
    part = am.get(GeZIGPartition)
    t2 = time.process_time()
    for g in part.groups[::2]:
        zero_group(model, g)
    t3 = time.process_time()
    # As in the pipeline ``grow-segments,partition-gezig,zero-groups,eliminate-dead-branches``:
    # zero-groups preserves the structural analyses. ``fresh``: recompute them (a separate run).
    PassManager.from_text("eliminate-dead-branches").run(model, analyses=None if fresh else am)
    t4 = time.process_time()
    wall = time.perf_counter() - w0 - (t3 - t2)
    return len(seg.data_nodes), t1 - t0, t2 - t1, t4 - t3, len(part.groups), wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--fresh-analyses", action="store_true",
                    help="eliminate-dead-branches recomputes every analysis (a separate pipeline run)")
    ap.add_argument("--gc-stats", action="store_true", help="also print the CPU time spent in the garbage collector")
    args = ap.parse_args(argv)
    gc_time = [0.0, 0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_time[1] = time.process_time()
        else:
            gc_time[0] += time.process_time() - gc_time[1]

    if args.gc_stats:
        gc.callbacks.append(on_gc)
    print(f"{'vertices':>9} {'groups':>7} {'grow-seg s':>10} {'partition s':>11} {'eliminate s':>11} {'total s':>8} "
          f"{'us/vertex':>9} {'wall s':>7}" + (f" {'gc s':>6}" if args.gc_stats else ""))
    for n in (int(s) for s in args.sizes.split(",")):
        gc_time[0] = 0.0
        v, a, b, c, ng, wall = _run(n, args.fresh_analyses)
        tot = a + b + c
        print(f"{v:>9} {ng:>7} {a:>10.3f} {b:>11.3f} {c:>11.3f} {tot:>8.3f} {1e6 * tot / v:>9.1f} {wall:>7.2f}"
              + (f" {gc_time[0]:>6.2f}" if args.gc_stats else ""), flush=True)
    if args.gc_stats:
        gc.callbacks.remove(on_gc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
