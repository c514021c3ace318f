"""Benchmark: one training step with ONNX Runtime training vs torch, same model, batch, threads.

Each backend runs in its own subprocess (same-process runs are erratic: both thread pools
spin). Per step it measures the whole step (forward + backward + optimizer) and the optimizer
alone (otoir's numpy SGD over ORT's buffers; ``torch.optim.SGD`` for torch), and prints medians,
minimums and the ORT / torch ratio::

    python -m otoir.tools.bench_train [--model resnet_basic] [--width 8] [--batch 32]
                                      [--threads 1] [--steps 30] [--warmup 5] [--rounds 2]

The model comes from ``otoir.zoo`` (``--width`` overrides its width where it has one) and is
exported once per process with ``otoir.frontends.torch_export.export_torch``; both sides start
from the same seed and see the same random batch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

__all__ = ["main", "run_worker"]


def _build(name: str, width: int | None, batch: int, seed: int):
    import numpy as np
    import torch

    from otoir.zoo import MODELS

    torch.manual_seed(seed)
    entry = MODELS[name]
    kwargs = {"width": width} if width else {}
    try:
        module = entry.factory(**kwargs)
    except TypeError:
        module = entry.factory()
    shape = (batch, *entry.example_input_shape[1:])
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    out = module.eval()(torch.from_numpy(x[:2]))
    classes = int(out.shape[1])
    y = rng.integers(0, classes, batch).astype(np.int64)
    module.train()
    return module, x, y


def run_worker(backend: str, args: argparse.Namespace) -> dict:
    """Runs the steps of one backend in this process; returns times in seconds."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    module, x, y = _build(args.model, args.width, args.batch, args.seed)
    steps, opt_times = [], []
    if backend == "torch":
        opt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=False)
            loss = torch.nn.functional.cross_entropy(module(xt), yt)
            loss.backward()
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            if i >= args.warmup:
                steps.append(t2 - t0)
                opt_times.append(t2 - t1)
        params = sum(p.numel() for p in module.parameters())
    else:
        from otoir.frontends.torch_export import export_torch
        from otoir.train.ort_backend import OrtTrainer
        from otoir.train.sgd import SGD

        model = export_torch(module, torch.from_numpy(x[:2]))
        opt = SGD(0.01, momentum=0.9)
        with OrtTrainer(model, threads=args.threads) as tr:
            for i in range(args.warmup + args.steps):
                t0 = time.perf_counter()
                tr.forward_backward(x, y)
                t1 = time.perf_counter()
                opt.step(tr.params(), tr.grads())
                t2 = time.perf_counter()
                if i >= args.warmup:
                    steps.append(t2 - t0)
                    opt_times.append(t2 - t1)
            params = int(sum(np.size(v) for v in tr.params().values()))
    return {"backend": backend, "step": steps, "opt": opt_times, "params": params}


def _fmt(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths, strict=False))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (prints the table to stdout)."""
    ap = argparse.ArgumentParser(prog="bench_train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet_basic", help="otoir.zoo model name")
    ap.add_argument("--width", type=int, default=8, help="model width (0: the zoo default)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2, help="alternate ORT / torch workers this many times")
    ap.add_argument("--worker", choices=("ort", "torch"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(run_worker(args.worker, args)))
        return 0

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    results: dict[str, dict] = {}
    for backend in [b for _ in range(max(1, args.rounds)) for b in ("ort", "torch")]:
        cmd = [sys.executable, "-m", "otoir.tools.bench_train", "--worker", backend,
               "--model", args.model, "--width", str(args.width), "--batch", str(args.batch),
               "--threads", str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--seed", str(args.seed)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            print(f"bench_train: the {backend} worker failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        if backend in results:
            results[backend]["step"] += got["step"]
            results[backend]["opt"] += got["opt"]
        else:
            results[backend] = got

    def ms(v: float) -> str:
        return f"{v * 1e3:.2f}"

    rows = [["backend", "step median ms", "step min ms", "optimizer median ms", "optimizer share"]]
    med = {}
    for b, label in (("ort", "onnxruntime-training + numpy SGD"), ("torch", "torch + torch.optim.SGD")):
        r = results[b]
        sm, om = statistics.median(r["step"]), statistics.median(r["opt"])
        med[b] = (sm, om)
        rows.append([label, ms(sm), ms(min(r["step"])), ms(om), f"{100 * om / sm:.1f}%"])
    (so, oo), (st, ot) = med["ort"], med["torch"]
    rows.append(["ratio ORT / torch", f"{so / st:.2f}x", "", f"{oo / ot:.2f}x" if ot > 0 else "-", ""])
    print(f"model {args.model} (width {args.width or 'default'}, {results['torch']['params']} parameters), "
          f"batch {args.batch}, {args.threads} thread(s), {args.rounds} x {args.steps} timed steps after "
          f"{args.warmup} warm-up, separate processes, alternating")
    print(_fmt(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
