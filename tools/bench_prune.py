"""Benchmark: channel-group analysis time (``partition-zig``) against the public OTO library.

Builds conv-BN-ReLU chains of 306, 906 and 1806 vertices (ONNX, built in code) and a
DenseNet-201-like network (growth 32, blocks 6/12/48/32, CIFAR input, exported from torch), and
times the :class:`~otoir.analyses.zig.ChannelGroups` analysis: static shapes, channel
propagation, union-find, and materialising every :class:`~otoir.analyses.groups.Group`
(``otoir s``; a group's ``slices``/``dependent`` tuples are built on first read). The
``+slices s`` column is the extra time to read every group's slices too (one
:class:`~otoir.analyses.groups.TensorSlice` per group and tensor: 590k on DenseNet-201), which
only consumers that need all of them pay. The OTO numbers are the ones measured on this kind
of machine (research notes §5.8). Run with one thread (``OMP_NUM_THREADS=1``); the best of
``--repeat`` runs is reported.

Usage: ``python tools/bench_prune.py [--repeat N]``
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

__all__ = ["chain", "main"]

OTO_SECONDS = {"chain-306": 1.25, "chain-906": 11.7, "chain-1806": 59.8, "densenet201": 5.02}


def chain(blocks: int, channels: int = 16, size: int = 8) -> ir.Model:
    """x -> [Conv -> BN -> ReLU] x blocks -> GlobalAveragePool -> Flatten -> Gemm (3·blocks + 3 nodes)."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x, cin = "input", 3
    for i in range(blocks):
        inits += [numpy_helper.from_array(rng.standard_normal((channels, cin, 3, 3)).astype(np.float32), f"c{i}.w"),
                  numpy_helper.from_array(np.ones(channels, np.float32), f"bn{i}.s"),
                  numpy_helper.from_array(np.zeros(channels, np.float32), f"bn{i}.b"),
                  numpy_helper.from_array(np.zeros(channels, np.float32), f"bn{i}.m"),
                  numpy_helper.from_array(np.ones(channels, np.float32), f"bn{i}.v")]
        nodes += [helper.make_node("Conv", [x, f"c{i}.w"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"),
                  helper.make_node("BatchNormalization", [f"c{i}", f"bn{i}.s", f"bn{i}.b", f"bn{i}.m", f"bn{i}.v"],
                                   [f"n{i}"], name=f"bn{i}"),
                  helper.make_node("Relu", [f"n{i}"], [f"r{i}"], name=f"relu{i}")]
        x, cin = f"r{i}", channels
    inits += [numpy_helper.from_array(rng.standard_normal((10, channels)).astype(np.float32), "fc.w"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["output"], transB=1, name="fc")]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3, size, size])],
                          [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["N", 10])], inits)
    return ir.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))


def _densenet201() -> ir.Model:
    import torch

    from otoir.frontends.torch_export import export_torch
    from otoir.zoo.cnns import DenseNet

    torch.manual_seed(0)
    m = DenseNet(growth=32, blocks=(6, 12, 48, 32))
    return export_torch(m, (torch.randn(2, 3, 32, 32),), training=True)


def _time(model: ir.Model, repeat: int) -> tuple[float, float, int, int]:
    from otoir.analyses.zig import ChannelGroups
    from otoir.infra.analysis import AnalysisManager

    best = best_slices = float("inf")
    n = p = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        cg = AnalysisManager(model).get(ChannelGroups)
        groups = cg.groups
        n, p = len(groups), sum(1 for g in groups if g.prunable)
        t1 = time.perf_counter()
        for g in groups:
            g.slices, g.dependent  # noqa: B018 - materialise
        t2 = time.perf_counter()
        best = min(best, t1 - t0)
        best_slices = min(best_slices, t2 - t1)
    return best, best_slices, n, p


def main(argv: list[str] | None = None) -> int:
    """Prints one line per network: vertices, groups, otoir seconds, OTO seconds, speed-up."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per network (best time is reported)")
    args = ap.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    nets = [("chain-306", lambda: chain(101)), ("chain-906", lambda: chain(301)), ("chain-1806", lambda: chain(601)),
            ("densenet201", _densenet201)]
    print(f"{'network':<14}{'vertices':>9}{'groups':>8}{'prunable':>10}{'otoir s':>10}{'OTO s':>8}{'speed-up':>10}"
          f"{'us/vertex':>11}{'+slices s':>11}")
    for name, make in nets:
        model = make()
        sec, sl, n, p = _time(model, args.repeat)
        v = len(model.graph)
        oto = OTO_SECONDS[name]
        print(f"{name:<14}{v:>9}{n:>8}{p:>10}{sec:>10.3f}{oto:>8.2f}{oto / sec:>9.0f}x{1e6 * sec / v:>11.1f}"
              f"{sl:>11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
