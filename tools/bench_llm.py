"""Benchmark: otoir's analyses at LLM scale (TinyLlama-1.1B and LLaMA-7B shapes), no torch.

The models are LLaMA-architecture ONNX graphs with external data written by
:func:`otoir.zoo.llama_onnx.build_llama` into a temporary directory: the analysis models have
*sparse* weight files (holes made by ``truncate``: 4.4 GB and 27 GB of fp32 zeros that take
no disk and no time), so any weight value otoir reads shows up as resident memory. Each
measurement runs in its own subprocess (clean peak RSS: that process's ``VmHWM``):

* ``analyse``: ``otoir.load`` + ``classify-vertices`` + ``partition-zig`` +
  ``grow-segments,partition-gezig`` — time of each step, groups found, peak RSS;
* ``prune`` (1.1B only, ``--prune-model``): a copy with non-zero weights (every entry 0.02) in which half the FFN
  units and a quarter of the attention heads (one K/V head group of four per layer, with
  its query heads) are zeroed, then ``otoir.load`` + ``partition-zig`` + ``prune-channels``
  in memory (no save) — time, parameters removed, peak RSS;
* ``onnx.load``: the same ``.onnx`` with its external data (``onnx.load``), and the graph only
  (``load_external_data=False``), peak RSS. The full 7B load needs 27 GB of memory; it is
  skipped when the machine has less (the row says so).

The goal: the 7B graph analysed in under 60 s and under 4 GB peak RSS (the public OTO library
needed 74 GB of GPU memory to build its graph for LLaMA-7B).

Usage::

    python -m otoir.tools.bench_llm [--models tinyllama-1.1b,llama-7b] [--no-prune] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

__all__ = ["main", "run_child"]

_GB = 1024**3


def _status_gb(key: str) -> float | None:
    """The ``key:`` line of ``/proc/self/status`` (kB) in GiB, or None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) * 1024 / _GB
    except OSError:
        pass
    return None


def _rss_gb() -> float:
    """Peak RSS of this process in GiB: ``VmHWM`` (``ru_maxrss`` keeps the parent's peak across exec)."""
    peak = _status_gb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GB


def _rss_file_gb() -> float:
    """Resident file-backed memory now (memory-mapped weights that were read), in GiB."""
    now = _status_gb("RssFile")
    return now if now is not None else float("nan")


def _analyse(path: str) -> dict:
    import otoir
    from otoir.analyses.gezig import GeZIGPartition
    from otoir.analyses.zig import ChannelGroups
    from otoir.infra.pass_manager import PassManager

    out: dict = {}
    t0 = time.perf_counter()
    model = otoir.load(path)
    out["load_s"] = time.perf_counter() - t0
    out["nodes"] = len(model.graph)
    t = time.perf_counter()
    res = PassManager.from_text("classify-vertices").run(model)
    out["classify_s"] = time.perf_counter() - t
    t = time.perf_counter()
    res = PassManager.from_text("partition-zig").run(model)
    groups = res.analyses.get(ChannelGroups).groups
    out["zig_s"] = time.perf_counter() - t
    out["zig_groups"] = sum(1 for g in groups if g.prunable)
    t = time.perf_counter()
    res = PassManager.from_text("grow-segments,partition-gezig").run(model)
    out["gezig_s"] = time.perf_counter() - t
    out["gezig_groups"] = len(res.analyses.get(GeZIGPartition).groups)
    out["total_s"] = time.perf_counter() - t0
    out["rss_file_gb"] = _rss_file_gb()
    return out


def _chosen_groups(model) -> tuple[list, int, int]:
    """Half of the FFN unit groups and a quarter of the head groups (by K/V head) of every layer."""
    from otoir.analyses.zig import ChannelGroups
    from otoir.infra.analysis import AnalysisManager

    groups = [g for g in AnalysisManager(model).get(ChannelGroups).groups if g.prunable and g.meta.get("exact", True)]
    ffn = [g for g in groups if any(s.tensor.endswith("mlp.gate_proj.weight") for s in g.slices)]
    heads = [g for g in groups if any(s.tensor.endswith("self_attn.q_proj.weight") for s in g.slices)]
    by_layer: dict[str, list] = {}
    for g in heads:
        layer = next(s.tensor for s in g.slices if s.tensor.endswith("q_proj.weight"))
        by_layer.setdefault(layer, []).append(g)
    chosen_heads = []
    for layer, gs in by_layer.items():
        want = model.graph.initializers[layer].shape[1] // 4  # a quarter of the query-head columns
        got = 0
        for g in gs:
            width = len(next(s.indices for s in g.slices if s.tensor == layer))
            if got + width <= want:
                chosen_heads.append(g)
                got += width
    return ffn[::2] + chosen_heads, len(ffn[::2]), len(chosen_heads)


def _prepare_prune(path: str) -> dict:
    """Zeroes the chosen groups' entries in the data file (np.memmap), without loading the weights."""
    import numpy as np
    import onnx

    import otoir

    model = otoir.load(path)
    chosen, n_ffn, n_heads = _chosen_groups(model)
    proto = onnx.load(path, load_external_data=False)
    where = {}
    for t in proto.graph.initializer:
        info = {e.key: e.value for e in t.external_data}
        if info:
            where[t.name] = (os.path.join(os.path.dirname(path), info["location"]), int(info["offset"]), tuple(t.dims))
    per_tensor: dict[tuple[str, int], set[int]] = {}
    for g in chosen:
        for s in (*g.slices, *g.dependent):
            per_tensor.setdefault((s.tensor, s.axis), set()).update(s.indices)
    for (name, axis), idx in per_tensor.items():  # one pass over each tensor
        file, off, dims = where[name]
        mm = np.memmap(file, dtype=np.float32, mode="r+", offset=off, shape=dims)
        arr = np.array(mm)
        sel = [slice(None)] * len(dims)
        sel[axis] = sorted(idx)
        arr[tuple(sel)] = 0
        mm[...] = arr
        mm.flush()
        del mm, arr
    return {"ffn_groups": n_ffn, "head_groups": n_heads}


def _prune(path: str) -> dict:
    import otoir
    from otoir.infra.pass_manager import PassManager

    def nparams(m) -> int:
        return sum(v.const_value.size for v in m.graph.initializers.values() if v.const_value is not None)

    t0 = time.perf_counter()
    model = otoir.load(path)
    before = nparams(model)
    t = time.perf_counter()
    res = PassManager.from_text("partition-zig,prune-channels").run(model)
    out = {"load_s": t - t0, "prune_s": time.perf_counter() - t, "total_s": time.perf_counter() - t0,
           "removed": before - nparams(model), "params": before}
    out["removed_groups"] = res.statistics.get("prune-channels", {}).get("num-groups-removed") \
        if isinstance(res.statistics, dict) else None
    return out


def _onnx_load(path: str, external: bool) -> dict:
    import onnx

    t0 = time.perf_counter()
    m = onnx.load(path, load_external_data=external)
    return {"total_s": time.perf_counter() - t0, "initializers": len(m.graph.initializer)}


def run_child(task: str, path: str) -> dict:
    """Runs one measurement in this process and returns its figures with ``rss_gb`` (peak)."""
    if task == "analyse":
        out = _analyse(path)
    elif task == "prepare-prune":
        out = _prepare_prune(path)
    elif task == "prune":
        out = _prune(path)
    elif task == "onnx-load":
        out = _onnx_load(path, True)
    elif task == "onnx-load-graph":
        out = _onnx_load(path, False)
    else:
        raise ValueError(f"unknown task {task!r}")
    out["rss_gb"] = _rss_gb()
    return out


def _spawn(task: str, path: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, "-m", "otoir.tools.bench_llm", "--child", task, path],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit {proc.returncode}: {last[:200]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mem_total_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024 / _GB
    except OSError:
        pass
    return 0.0


def _fmt(r: dict, key: str, unit: str = "s") -> str:
    if "error" in r:
        return "error"
    if "skipped" in r:
        return "skipped"
    v = r.get(key)
    if v is None:
        return "-"
    return f"{v:.2f} GB" if unit == "GB" else f"{v:.1f} s" if unit == "s" else f"{v:,}"


def main(argv: Sequence[str] | None = None) -> int:
    """Builds the models, runs every measurement in a subprocess and prints one table."""
    from otoir.zoo.llama_onnx import SHAPES, LlamaShape, build_llama

    ap = argparse.ArgumentParser(prog="bench_llm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tinyllama-1.1b,llama-7b", help="comma-separated presets of llama_onnx.SHAPES")
    ap.add_argument("--prune-model", default="tinyllama-1.1b",
                    help="model of the prune-channels measurement (writes a dense copy: 4.4 GB for 1.1B)")
    ap.add_argument("--no-prune", action="store_true", help="skip the prune-channels measurement")
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one, removed afterwards)")
    ap.add_argument("--seq", type=int, default=128, help="sequence length of the graphs (default 128)")
    ap.add_argument("--child", nargs=2, metavar=("TASK", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(*args.child)))
        return 0
    names = [m for m in args.models.split(",") if m]
    bad = [m for m in names if m not in SHAPES]
    if bad:
        print(f"bench_llm: error: unknown model(s) {', '.join(bad)} (known: {', '.join(SHAPES)})", file=sys.stderr)
        return 2
    work = args.dir or tempfile.mkdtemp(prefix="otoir-bench-llm-")
    os.makedirs(work, exist_ok=True)
    mem = _mem_total_gb()
    rows: dict[str, dict] = {}
    try:
        for name in names:
            shape = LlamaShape(**SHAPES[name])
            path = os.path.join(work, f"{name}.onnx")
            t = time.perf_counter()
            try:  # build_llama's own checks, e.g. --seq beyond the preset's max_positions
                build_llama(path, **SHAPES[name], seq=args.seq, weights="sparse")
            except ValueError as exc:
                print(f"bench_llm: error: {name}: {exc}", file=sys.stderr)
                return 2
            r: dict = {"params": shape.params(), "build_s": time.perf_counter() - t,
                       "data_gb": os.path.getsize(path + ".data") / _GB}
            r["analyse"] = _spawn("analyse", path)
            r["onnx_graph"] = _spawn("onnx-load-graph", path)
            need = r["data_gb"] * 1.1 + 1
            r["onnx_full"] = _spawn("onnx-load", path) if need < 0.8 * mem else \
                {"skipped": f"needs ~{need:.0f} GB, machine has {mem:.0f} GB"}
            if name == args.prune_model and not args.no_prune:
                dense = os.path.join(work, f"{name}-dense.onnx")
                t = time.perf_counter()
                build_llama(dense, **SHAPES[name], seq=args.seq, weights="constant")
                prep = _spawn("prepare-prune", dense)
                r["prune_prep"] = {**prep, "build_s": time.perf_counter() - t}
                r["prune"] = _spawn("prune", dense)
                os.remove(dense + ".data")
            os.remove(path + ".data")
            rows[name] = r
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    _print(rows)
    errors = [f"{n} {k}: {v['error']}" for n, r in rows.items() for k, v in r.items()
              if isinstance(v, dict) and "error" in v]
    for e in errors:
        print(f"bench_llm: error: {e}", file=sys.stderr)
    return 1 if errors else 0


def _print(rows: dict[str, dict]) -> None:
    names = list(rows)
    lines = [("", *names)]

    def row(label: str, f) -> None:
        lines.append((label, *(f(rows[n]) for n in names)))

    row("parameters", lambda r: f"{r['params'] / 1e9:.2f} B" if r["params"] >= 1e8 else f"{r['params'] / 1e6:.2f} M")
    row("external data (fp32, sparse file)", lambda r: f"{r['data_gb']:.1f} GB")
    row("graph nodes", lambda r: _fmt(r["analyse"], "nodes", ""))
    row("otoir.load", lambda r: _fmt(r["analyse"], "load_s"))
    row("classify-vertices", lambda r: _fmt(r["analyse"], "classify_s"))
    row("partition-zig", lambda r: _fmt(r["analyse"], "zig_s"))
    row("  channel groups (prunable)", lambda r: _fmt(r["analyse"], "zig_groups", ""))
    row("grow-segments + partition-gezig", lambda r: _fmt(r["analyse"], "gezig_s"))
    row("  GeZIGs", lambda r: _fmt(r["analyse"], "gezig_groups", ""))
    row("analysis total (load..gezig)", lambda r: _fmt(r["analyse"], "total_s"))
    row("analysis peak RSS", lambda r: _fmt(r["analyse"], "rss_gb", "GB"))
    row("  of it weight pages read (RssFile at end)", lambda r: _fmt(r["analyse"], "rss_file_gb", "GB"))
    row("onnx.load graph only: peak RSS", lambda r: _fmt(r["onnx_graph"], "rss_gb", "GB"))
    row("onnx.load with data: time", lambda r: _fmt(r["onnx_full"], "total_s"))
    row("onnx.load with data: peak RSS", lambda r: _fmt(r["onnx_full"], "rss_gb", "GB"))
    if any("prune" in r for r in rows.values()):
        def pr(key, unit="s"):
            return lambda r: _fmt(r["prune"], key, unit) if "prune" in r else "-"
        row("prune: groups zeroed (FFN units + head groups)",
            lambda r: f"{r['prune_prep']['ffn_groups']} + {r['prune_prep']['head_groups']}"
            if "prune" in r and "error" not in r["prune_prep"] else "-")
        row("prune: otoir.load", pr("load_s"))
        row("prune: partition-zig + prune-channels", pr("prune_s"))
        row("prune: parameters removed",
            lambda r: f"{r['prune']['removed'] / r['prune']['params']:.1%}" if "prune" in r and "error" not in r["prune"]
            else "-")
        row("prune: peak RSS", pr("rss_gb", "GB"))
    widths = [max(len(x[i]) for x in lines) for i in range(len(lines[0]))]
    for x in lines:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths))))
    for n, r in rows.items():
        for k in ("onnx_full",):
            if "skipped" in r[k]:
                print(f"{n}: onnx.load with data skipped: {r[k]['skipped']}")


if __name__ == "__main__":
    sys.exit(main())
