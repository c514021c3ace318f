"""Benchmark: channel-group analysis time, otoir against the public OTO library, both measured in one run.

Every network is a torch module, so both libraries see the same model:

* ``chain-306`` / ``chain-906`` / ``chain-1806``: Conv-BN-ReLU x 101 / 301 / 601, GAP, Linear;
* ``densenet201``: DenseNet-201-like (growth 32, blocks 6/12/48/32, CIFAR input);
* ``llama-L``: a LLaMA-shaped decoder stack of L layers (token embedding, RMSNorm, multi-head
  attention with q/k/v/o Linears and a head reshape, SwiGLU MLP, LM head; no rotary embedding),
  width 1024, 16 heads, MLP 2816, vocabulary 8000 (about 13M parameters a layer);
* ``chain-100k``: Conv-BN-ReLU x 33,332 built directly as ONNX (100k vertices): ONNX->groups only,
  unless ``--huge`` also exports the torch module (minutes).

Columns: ``vertices`` (ONNX nodes), otoir's groups (prunable), ``torch->groups s`` (otoir.load's
torch export included, then the :class:`~otoir.analyses.zig.ChannelGroups` analysis with every
group materialised), ``onnx->groups s`` (read the ``.onnx`` file, then the same analysis), OTO's
channel groups (in its prunable node groups) and ``OTO s``: ``OTO(model, dummy_input)``, i.e.
trace, graph build, pruning dependency graph, node groups and clustering — torch module to
groups, like otoir's torch column. ``OTO/otoir`` is the ratio of those two. The best of
``--repeat`` runs is reported for each side (the OTO runs of one network follow otoir's).

OTO is measured when ``only_train_once`` imports (``pip install otoir[benchmark]``); otherwise the
column shows the figures recorded on this kind of machine on 2026-11-21 (research notes §5.8),
marked ``(rec.)``. OTO is not run on ``chain-100k`` (its graph build is quadratic in the
vertices: 59.8 s recorded on chain-1806) nor, by default, on graphs over ``--oto-max-vertices``.
Run with one thread (``OMP_NUM_THREADS=1``); the machine's load average is printed.

Usage: ``python tools/bench_prune.py [--repeat N] [--quick] [--huge] [--llama-layers L]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

__all__ = ["chain", "main", "oto_available"]

#: OTO 3.0.1's graph-build seconds recorded on 2026-11-21 (research notes §5.8), shown when it is not importable.
RECORDED_OTO_SECONDS = {"chain-306": 1.25, "chain-906": 11.7, "chain-1806": 59.8, "densenet201": 5.02}
RECORDED_DATE = "2026-11-21"


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


# -- torch networks -------------------------------------------------------------------------------
def _torch_chain(blocks: int, channels: int = 16, size: int = 8) -> tuple[Any, Any]:
    """The torch module of :func:`chain` (same layers), and an input."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    cin = 3
    for _ in range(blocks):
        layers += [nn.Conv2d(cin, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
        cin = channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)]
    return nn.Sequential(*layers), torch.randn(2, 3, size, size)


def _densenet201() -> tuple[Any, Any]:
    import torch

    from otoir.zoo.cnns import DenseNet

    torch.manual_seed(0)
    return DenseNet(growth=32, blocks=(6, 12, 48, 32)), torch.randn(2, 3, 32, 32)


def _llama(layers: int, hidden: int = 1024, heads: int = 16, mlp: int = 2816, vocab: int = 8000,
           seq: int = 32) -> tuple[Any, Any]:
    """A LLaMA-shaped decoder (RMSNorm, MHA, SwiGLU; no rotary embedding) and token ids."""
    import torch
    from torch import nn

    class RMSNorm(nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(n))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(hidden, hidden, bias=False)
                                                                  for _ in range(4))
            self.register_buffer("mask", torch.full((seq, seq), float("-inf")).triu(1), persistent=False)

        def forward(self, x):
            b, t, _ = x.shape
            d = hidden // heads
            q, k, v = (p(x).reshape(b, t, heads, d).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
            a = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5 + self.mask[:t, :t], dim=-1)
            return self.o_proj((a @ v).transpose(1, 2).reshape(b, t, hidden))

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate_proj = nn.Linear(hidden, mlp, bias=False)
            self.up_proj = nn.Linear(hidden, mlp, bias=False)
            self.down_proj = nn.Linear(mlp, hidden, bias=False)

        def forward(self, x):
            return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input_layernorm, self.post_attention_layernorm = RMSNorm(hidden), RMSNorm(hidden)
            self.self_attn, self.mlp = Attention(), MLP()

        def forward(self, x):
            x = x + self.self_attn(self.input_layernorm(x))
            return x + self.mlp(self.post_attention_layernorm(x))

    class Llama(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed_tokens = nn.Embedding(vocab, hidden)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))
            self.norm = RMSNorm(hidden)
            self.lm_head = nn.Linear(hidden, vocab, bias=False)

        def forward(self, ids):
            x = self.embed_tokens(ids)
            for layer in self.layers:
                x = layer(x)
            return self.lm_head(self.norm(x))

    torch.manual_seed(0)
    return Llama(), torch.randint(0, vocab, (1, seq))


# -- OTO (the public library) -------------------------------------------------------------------
def _alias_torch_onnx_private() -> None:
    """OTO 3.0.1 imports torch's private ``torch.onnx._globals`` / ``symbolic_helper`` and calls
    ``torch.onnx._optimize_graph``; torch 2.13 moved them to
    ``torch.onnx._internal.torchscript_exporter.*``. Alias the old names (this process only) so
    the library runs unchanged; nothing outside this benchmark does this."""
    import torch.onnx

    try:
        from torch.onnx._internal.torchscript_exporter import _globals, symbolic_helper, utils
    except ImportError:  # an older torch: the old names are still there
        return
    sys.modules.setdefault("torch.onnx._globals", _globals)
    sys.modules.setdefault("torch.onnx.symbolic_helper", symbolic_helper)
    if not hasattr(torch.onnx, "symbolic_helper"):
        torch.onnx.symbolic_helper = symbolic_helper
    if not hasattr(torch.onnx, "_optimize_graph"):
        torch.onnx._optimize_graph = utils._optimize_graph


def oto_available() -> str | None:
    """None when ``only_train_once`` imports (after the alias), else why not (one line)."""
    try:
        _alias_torch_onnx_private()
        with contextlib.redirect_stdout(io.StringIO()):
            import only_train_once  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "not measured"
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def _time_oto(module: Any, x: Any, repeat: int) -> tuple[float, int]:
    """Best seconds of ``OTO(module, x)`` and its channel groups (prunable node groups)."""
    from only_train_once import OTO

    best, n = float("inf"), 0
    for _ in range(repeat):
        with contextlib.redirect_stdout(io.StringIO()):  # OTO prints progress lines
            t0 = time.perf_counter()
            oto = OTO(module, x)
            best = min(best, time.perf_counter() - t0)
        n = sum(int(g["num_groups"]) for g in oto._graph.get_param_groups() if g["is_prunable"])
    return best, n


# -- otoir ------------------------------------------------------------------------------------------
def _groups(model: ir.Model) -> tuple[int, int]:
    from otoir.analyses.zig import ChannelGroups
    from otoir.infra.analysis import AnalysisManager

    groups = AnalysisManager(model).get(ChannelGroups).groups
    for g in groups:
        g.slices, g.dependent  # noqa: B018 - materialise every group
    return len(groups), sum(1 for g in groups if g.prunable)


def _time_otoir_torch(module: Any, x: Any, repeat: int) -> tuple[float, ir.Model, int, int]:
    import otoir

    best, model, n, p = float("inf"), None, 0, 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        model = otoir.load(module, x)
        n, p = _groups(model)
        best = min(best, time.perf_counter() - t0)
    return best, model, n, p


def _time_otoir_onnx(model: ir.Model, repeat: int) -> tuple[float, int, int]:
    import otoir

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        otoir.save(model, path, check=False)  # writing is not timed (nor its load check)
        best, n, p = float("inf"), 0, 0
        for _ in range(repeat):
            t0 = time.perf_counter()
            n, p = _groups(otoir.load(path))
            best = min(best, time.perf_counter() - t0)
    return best, n, p


def main(argv: list[str] | None = None) -> int:
    """Prints one line per network; OTO's column is measured when the library imports."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per network and side (the best is reported)")
    ap.add_argument("--quick", action="store_true", help="1 run each; no chain-1806; a 2-layer llama")
    ap.add_argument("--huge", action="store_true", help="also export the 100k-vertex chain from torch (minutes)")
    ap.add_argument("--llama-layers", type=int, default=None, help="layers of the llama stack (default 8; quick 2)")
    ap.add_argument("--oto-max-vertices", type=int, default=3000, help="do not run OTO on larger graphs")
    args = ap.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    repeat = 1 if args.quick else max(args.repeat, 1)
    layers = args.llama_layers or (2 if args.quick else 8)
    why_not = oto_available()
    nets: list[tuple[str, Callable[[], tuple[Any, Any]] | None, Callable[[], ir.Model] | None]] = [
        ("chain-306", lambda: _torch_chain(101), None), ("chain-906", lambda: _torch_chain(301), None)]
    if not args.quick:
        nets.append(("chain-1806", lambda: _torch_chain(601), None))
    nets += [("densenet201", _densenet201, None), (f"llama-{layers}", lambda: _llama(layers), None),
             ("chain-100k", (lambda: _torch_chain(33332)) if args.huge else None, lambda: chain(33332))]
    load = os.getloadavg()
    print(f"# {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; best of {repeat}")
    if why_not is None:
        import only_train_once

        print(f"# OTO {getattr(only_train_once, '__version__', '3.0.1')}: measured in this run (OTO(model, dummy_input))")
    else:
        print(f"# OTO not importable ({why_not}): OTO s are the figures recorded on {RECORDED_DATE} (rec.)")
    print(f"{'network':<14}{'vertices':>9}{'groups':>8}{'prunable':>10}{'torch->groups s':>17}{'onnx->groups s':>16}"
          f"{'OTO groups':>12}{'OTO s':>12}{'OTO/otoir':>11}")
    for name, make_torch, make_onnx in nets:
        t_torch = None
        if make_torch is not None:
            module, x = make_torch()
            t_torch, model, n, p = _time_otoir_torch(module, x, repeat)
        else:
            module = x = None
            model = make_onnx()
        t_onnx, n, p = _time_otoir_onnx(model, repeat)
        v = len(model.graph)
        oto_groups, oto_s = "-", "-"
        oto_t = None
        if why_not is None and module is not None and v <= args.oto_max_vertices:
            oto_t, ng = _time_oto(module, x, repeat)
            oto_groups, oto_s = str(ng), f"{oto_t:.3f}"
        elif why_not is not None and name in RECORDED_OTO_SECONDS:
            oto_t = RECORDED_OTO_SECONDS[name]
            oto_s = f"{oto_t:.2f} (rec.)"
        elif why_not is None:
            oto_s = "not run"
        ratio = "-"
        if oto_t is not None and t_torch:
            r = oto_t / t_torch
            ratio = f"{r:.0f}x" if r >= 10 else f"{r:.2f}x"
        ts = f"{t_torch:.3f}" if t_torch is not None else "-"
        print(f"{name:<14}{v:>9}{n:>8}{p:>10}{ts:>17}{t_onnx:>16.3f}{oto_groups:>12}{oto_s:>12}{ratio:>11}",
              flush=True)
        del module, model
    print("# groups: otoir's channel groups (one per channel; a whole attention head is one group). OTO groups: "
          "the sum of num_groups over OTO's prunable node groups, which counts differently: the BatchNorm after a "
          "Concat is a node group of its own (its channels are counted again), q/k/v channels count singly, and "
          "a transformer's hidden width (RMSNorm/LayerNorm, not exactly zero-invariant) counts as prunable")
    load = os.getloadavg()
    print(f"# load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
