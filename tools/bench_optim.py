"""Benchmarks of otoir's structured-sparsity optimizers.

(a) step time on the ResNet-18 (CIFAR) parameter set with fixed gradients: otoir DHSPG / H2SPG
    per phase vs ``torch.optim.SGD(momentum=0.9)`` in the same run, same thread count;
(b) the CUDA kernel's achieved memory bandwidth and its time vs the torch fallback (needs a GPU);
(c) support recovery on synthetic group-sparse least squares / logistic regression: F1 and
    exact-match rate of the identified zero groups for DHSPG, H2SPG, HSPG and proximal SGD.

Usage::

    python -m otoir.tools.bench_optim --part a --threads 1
    python tools/bench_optim.py --part all
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["main"]


# ---------------------------------------------------------------------------- (a) ResNet-18
def _resnet18_cifar() -> Any:
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

    class ResNet18(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            cin = 64
            for i, (c, s) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
                setattr(self, f"layer{i}", nn.Sequential(Block(cin, c, s), Block(c, c, 1)))
                cin = c
            self.fc = nn.Linear(512, 10)

    return ResNet18()


def resnet18_groups(model: Any) -> list[list[tuple[str, int, list[int]]]]:
    """Pruning groups of ResNet-18: residual-stream channels per stage, and each block's conv1.

    Producer side only: conv output rows and the BN weight/bias entries that follow them.
    """
    groups: list[list[tuple[str, int, list[int]]]] = []
    stage_members = {0: ["conv1", "bn1"]}
    for i in range(1, 5):
        stage_members[i] = []
        for b in range(2):
            p = f"layer{i}.{b}"
            groups_block = [f"{p}.conv1", f"{p}.bn1"]
            c = model.get_parameter(f"{p}.conv1.weight").shape[0]
            for ch in range(c):
                groups.append(
                    [(f"{groups_block[0]}.weight", 0, [ch]), (f"{groups_block[1]}.weight", 0, [ch]),
                     (f"{groups_block[1]}.bias", 0, [ch])]
                )
            stage_members[i] += [f"{p}.conv2", f"{p}.bn2"]
            if model.get_submodule(p).downsample is not None:
                stage_members[i] += [f"{p}.downsample.0", f"{p}.downsample.1"]
    # stage 0 (stem) and stage 1 share the residual stream of 64 channels
    stage_members[1] = stage_members[0] + stage_members[1]
    del stage_members[0]
    for members in stage_members.values():
        c = model.get_parameter(f"{members[0]}.weight").shape[0]
        for ch in range(c):
            grp = []
            for conv, bn in zip(members[0::2], members[1::2]):
                grp += [(f"{conv}.weight", 0, [ch]), (f"{bn}.weight", 0, [ch]), (f"{bn}.bias", 0, [ch])]
            groups.append(grp)
    return groups


def _time_steps(step: Callable[[], None], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def bench_step_time(threads: int, steps: int) -> str:
    """Part (a): ms/step of otoir H2SPG/DHSPG per phase vs torch SGD on ResNet-18-CIFAR params."""
    import torch

    from otoir.optim import DHSPG, H2SPG, GroupLayout, select_top_k

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = _resnet18_cifar()
    named = dict(model.named_parameters())
    grads = {n: torch.randn_like(p) * 1e-2 for n, p in named.items()}
    groups = resnet18_groups(model)
    layout = GroupLayout.from_slices(groups, {n: p.shape for n, p in named.items()})
    nparams = sum(p.numel() for p in named.values())

    def fresh() -> dict[str, torch.Tensor]:
        torch.manual_seed(1)
        m = _resnet18_cifar()
        ps = dict(m.named_parameters())
        for n, p in ps.items():
            p.grad = grads[n].clone()
        return ps

    # The machine may be shared: every otoir step is timed next to a torch SGD step (interleaved)
    # and each row reports the median ratio of the pairs as well as the medians.
    ps_sgd = fresh()
    sgd = torch.optim.SGD(ps_sgd.values(), lr=0.01, momentum=0.9)
    ps_fe = fresh()
    sgd_fe = torch.optim.SGD(ps_fe.values(), lr=0.01, momentum=0.9, foreach=True)
    for _ in range(3):
        sgd.step()
        sgd_fe.step()

    def timed(fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    rows: list[tuple[str, float, float]] = []
    pairs = [(timed(sgd.step), timed(sgd_fe.step)) for _ in range(steps)]
    sgd_med = statistics.median(p[0] for p in pairs)
    rows.append(("SGD(momentum=0.9)", sgd_med, 1.0))
    rows.append(("SGD(momentum=0.9, foreach=True)", statistics.median(p[1] for p in pairs),
                 statistics.median(p[1] / p[0] for p in pairs)))
    warm, window = steps + 3, 2 * steps + 3
    zero_counts = []
    for name, cls, extra in [
        ("DHSPG", DHSPG, {}),
        ("H2SPG", H2SPG, {"selector": select_top_k}),
    ]:
        for interval in (1, 10):
            if interval != 1 and name != "DHSPG":
                continue
            ps = fresh()
            opt = cls(ps, layout, lr=0.01, momentum=0.9, target=0.5, warmup_steps=warm,
                      projection_steps=window, epsilon=0.0, score_interval=interval, **extra)
            times: dict[str, list[tuple[float, float]]] = {"warmup": [], "hybrid": [], "done": []}
            for _ in range(warm + window + steps):
                phase = opt.phase
                times[phase].append((timed(opt.step), timed(sgd.step)))
            tag = f"{name}" + (f" score_interval={interval}" if interval != 1 else "")
            for phase in ("warmup", "hybrid", "done"):
                if interval != 1 and phase != "warmup":
                    continue
                # drop the first steps of a phase (buffers, partition, index caches)
                tp = times[phase][3:]
                rows.append((f"{tag} {phase}", statistics.median(t[0] for t in tp),
                             statistics.median(t[0] / t[1] for t in tp)))
            zero_counts.append(f"{tag}: {opt.num_zero_groups}/{layout.num_groups} zero groups")
    # the numpy stepper (ONNX Runtime backend) against the same SGD(momentum) written in numpy
    from otoir.optim import DHSPGStepper

    np_grads = {n: g.numpy().copy() for n, g in grads.items()}
    shapes = {n: tuple(p.shape) for n, p in named.items()}

    def np_params() -> dict[str, np.ndarray]:
        return {n: p.detach().numpy().copy() for n, p in fresh().items()}

    ref_p, ref_m = np_params(), {n: g.copy() for n, g in np_grads.items()}

    def np_sgd() -> None:
        for n, x in ref_p.items():
            m = ref_m[n]
            m *= 0.9
            m += np_grads[n]
            x -= 0.01 * m

    st = DHSPGStepper(layout, shapes, lr=0.01, momentum=0.9, target=0.5, warmup_steps=warm,
                      projection_steps=window)
    pp = np_params()
    np_times: dict[str, list[tuple[float, float]]] = {"warmup": [], "hybrid": [], "done": []}
    for _ in range(warm + window + steps):
        phase = st.core.phase
        np_times[phase].append((timed(lambda: st.step(pp, np_grads)), timed(np_sgd)))
    ref_med = statistics.median(t[1] for t in np_times["warmup"][3:])
    rows.append(("numpy SGD(momentum=0.9) reference", ref_med, float("nan")))
    for phase in ("warmup", "hybrid", "done"):
        tp = np_times[phase][3:]
        rows.append((f"numpy DHSPGStepper {phase} (x numpy SGD)", statistics.median(t[0] for t in tp),
                     statistics.median(t[0] / t[1] for t in tp)))
    try:
        from otoir.kernels.cpu import cpu_kernel_status

        kstat = cpu_kernel_status()
    except ImportError:
        kstat = "not importable"
    lines = [
        f"(a) optimizer step, ResNet-18-CIFAR params ({nparams/1e6:.2f} M, "
        f"{layout.num_groups} groups), fixed grads, torch threads={threads}, median of {steps} steps",
        f"{'optimizer / phase':<40} {'ms/step':>9} {'x SGD':>7}  (x SGD: median of per-step pairs)",
    ]
    for label, ms, ratio in rows:
        lines.append(f"{label:<40} {ms:>9.2f} {ratio:>7.2f}")
    lines.append("after the window: " + "; ".join(zero_counts))
    lines.append(f"fused CPU step kernel (kernels/cpu_step.c): {kstat}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- (b) CUDA
def _peak_bandwidth_gbs(props: Any) -> float | None:
    clock = getattr(props, "memory_clock_rate", None)  # kHz
    width = getattr(props, "memory_bus_width", None)  # bits
    if clock and width:
        return 2.0 * clock * 1e3 * width / 8 / 1e9
    table = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0}
    for k, v in table.items():
        if k in props.name:
            return v
    return None


def bench_cuda(steps: int) -> str:
    """Part (b): kernel bandwidth and time vs the torch fallback (``skipped`` without a GPU)."""
    try:
        import torch
    except ImportError:
        return "(b) skipped: torch not installed"
    if not torch.cuda.is_available():
        return "(b) skipped: no CUDA device"
    from otoir import kernels
    from otoir.optim import GroupLayout, LambdaRule
    from otoir.optim.halfspace import halfspace_project

    if not kernels.cuda_available():
        return f"(b) skipped: CUDA device present but kernel library unavailable ({kernels.kernel_status()})"
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = _resnet18_cifar()
    named = dict(model.named_parameters())
    layout = GroupLayout.from_slices(resnet18_groups(model), {n: p.shape for n, p in named.items()})
    xs = [named[n].detach().to(dev).contiguous() for n in layout.names]
    ds = [torch.randn_like(x) * 1e-3 for x in xs]
    active = np.ones(layout.num_groups, dtype=bool)
    rule = LambdaRule()
    impl = kernels.CudaHalfspace(layout, dev)
    # keep groups alive: a tiny lr and epsilon 0 → no projection on random data
    lr = 1e-6

    def run(fn: Callable[[], Any]) -> float:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps * 1e3

    t_kernel = run(lambda: impl(xs, ds, active, lr, rule, 0.0))
    t_torch = run(lambda: halfspace_project(layout, xs, ds, active, lr, rule, 0.0))
    elems = int(layout.group_numel.sum())
    moved = elems * 4 * 4  # pass 1 reads x, d; pass 2 reads and writes x
    gbs = moved / (t_kernel * 1e-3) / 1e9
    props = torch.cuda.get_device_properties(dev)
    peak = _peak_bandwidth_gbs(props)
    frac = f"{gbs / peak:.1%} of {peak:.0f} GB/s peak" if peak else "peak unknown"
    return "\n".join([
        f"(b) fused half-space projection on {props.name}, {layout.num_groups} active groups, "
        f"{elems/1e6:.2f} M elements",
        f"kernel        {t_kernel:8.3f} ms/call  {gbs:8.1f} GB/s  ({frac}; includes host sync)",
        f"torch ref     {t_torch:8.3f} ms/call  ({t_torch / t_kernel:.1f}x the kernel)",
    ])


# ---------------------------------------------------------------------------- (c) recovery
def _problem(seed: int, kind: str, G: int, size: int, k_zero: int, m: int, blocks: int):
    rng = np.random.default_rng(seed)
    n = G * size
    # k_zero zero groups spread evenly over the blocks so the hierarchy constraint holds
    per_block = G // blocks
    zero = np.concatenate([
        b * per_block + rng.choice(per_block, k_zero // blocks, replace=False) for b in range(blocks)
    ])
    w = rng.normal(size=(G, size)) * rng.uniform(0.3, 1.0, size=(G, 1))
    w[zero] = 0.0
    A = rng.normal(size=(m, n)) / np.sqrt(n) * 3.0
    z = A @ w.ravel()
    if kind == "lsq":
        y = z + 0.1 * rng.normal(size=m)
    else:
        y = (rng.uniform(size=m) < 1.0 / (1.0 + np.exp(-4.0 * z))).astype(np.float64)
    return A, y, set(zero.tolist())


def _grad(kind: str, A: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    z = A @ w
    if kind == "lsq":
        r = z - y
    else:
        r = 1.0 / (1.0 + np.exp(-4.0 * z)) * 4.0 - 4.0 * y
    return A.T @ r / A.shape[0]


def _full_batch_oracle(kind: str, A: np.ndarray, y: np.ndarray, k: int, lr: float, G: int, size: int):
    """The K smallest group norms of a full-batch gradient-descent fit (3000 steps, no penalty).

    A reference for what the data identify: every method above selects K groups from noisier
    (mini-batch) information. Also returns the fit's training accuracy (logistic: 1.0 means the
    samples are linearly separable, so the loss has no finite minimiser and the norms of the
    true-zero groups keep growing with the others).
    """
    w = np.zeros(A.shape[1])
    for _ in range(3000):
        w -= lr * _grad(kind, A, y, w)
    norms = np.linalg.norm(w.reshape(G, size), axis=1)
    found = set(np.argsort(norms, kind="stable")[:k].tolist())
    acc = float(np.mean(((A @ w) > 0) == (y > 0.5))) if kind != "lsq" else float("nan")
    return found, acc


def _block_selector(G: int, blocks: int) -> Callable[[np.ndarray, int], list[int]]:
    per = G // blocks

    def select(scores: np.ndarray, k: int) -> list[int]:
        used = np.zeros(blocks, dtype=int)
        out: list[int] = []
        for g in np.argsort(-scores, kind="stable"):
            if len(out) == k:
                break
            b = int(g) // per
            if used[b] + 1 < per:  # a block may never lose all its alternatives
                used[b] += 1
                out.append(int(g))
        return out

    return select


def bench_recovery(seeds: int, steps: int) -> str:
    """Part (c): F1 / exact match of the recovered zero-group set over ``seeds`` seeds."""
    from otoir.optim import DHSPGStepper, GroupLayout, H2SPGStepper, HSPGStepper

    G, size, k_zero, m, blocks, batch = 40, 5, 16, 400, 8, 32
    layout = GroupLayout.from_slices([[("w", 0, [g])] for g in range(G)], {"w": (G, size)})
    shapes = {"w": (G, size)}
    warm, window = steps // 4, steps // 4
    lr = {"lsq": 0.5, "logistic": 0.3}
    lam = {"lsq": 0.02, "logistic": 0.01}
    lines = [
        f"(c) support recovery: {G} groups x {size}, {k_zero} true zero groups, {m} samples, "
        f"batch {batch}, {steps} steps, {seeds} seeds",
        "    data: A ~ N(0, 9/n), nonzero groups N(0,1)*U(0.3,1); lsq y = Aw + N(0, 0.01); "
        "logistic y ~ Bernoulli(sigmoid(4Aw))",
        f"{'problem':<9} {'method':<22} {'F1 %':>7} {'exact %':>8} {'#zero (mean)':>13}",
    ]
    notes = []
    for kind in ("lsq", "logistic"):
        results: dict[str, list[tuple[float, bool, int]]] = {}
        accs = []
        for seed in range(seeds):
            A, y, truth = _problem(seed, kind, G, size, k_zero, m, blocks)
            found, acc = _full_batch_oracle(kind, A, y, k_zero, lr[kind], G, size)
            accs.append(acc)
            tp = len(found & truth)
            results.setdefault("oracle (full batch)", []).append(
                (2 * tp / (len(found) + len(truth)), found == truth, len(found)))
            makers: dict[str, Callable[[], Any]] = {
                "DHSPG": lambda kind=kind: DHSPGStepper(layout, shapes, lr=lr[kind], target=k_zero,
                                              warmup_steps=warm, projection_steps=window),
                "H2SPG (block validity)": lambda kind=kind: H2SPGStepper(
                    layout, shapes, lr=lr[kind], target=k_zero, warmup_steps=warm,
                    projection_steps=window, selector=_block_selector(G, blocks)),
                f"HSPG (lam={lam[kind]})": lambda kind=kind: HSPGStepper(layout, shapes, lr=lr[kind],
                                                               warmup_steps=warm, lam=lam[kind]),
                f"prox-SGD (lam={lam[kind]})": lambda: None,
            }
            for name, make in makers.items():
                rng = np.random.default_rng(10_000 + seed)
                w = {"w": np.zeros((G, size)) + 0.01 * rng.normal(size=(G, size))}
                stepper = make()
                for _ in range(steps):
                    idx = rng.choice(m, batch, replace=False)
                    g = _grad(kind, A[idx], y[idx], w["w"].ravel()).reshape(G, size)
                    if stepper is None:
                        zt = w["w"] - lr[kind] * g
                        nz = np.linalg.norm(zt, axis=1, keepdims=True)
                        w["w"] = np.maximum(0.0, 1.0 - lr[kind] * lam[kind] / np.maximum(nz, 1e-30)) * zt
                    else:
                        stepper.step(w, {"w": g})
                found = set(np.flatnonzero(~w["w"].any(axis=1)).tolist())
                tp = len(found & truth)
                f1 = 2 * tp / (len(found) + len(truth)) if found or truth else 1.0
                results.setdefault(name, []).append((f1, found == truth, len(found)))
        for name, res in results.items():
            f1 = 100 * np.mean([r[0] for r in res])
            ex = 100 * np.mean([r[1] for r in res])
            nz = np.mean([r[2] for r in res])
            lines.append(f"{kind:<9} {name:<22} {f1:>7.1f} {ex:>8.1f} {nz:>13.1f}")
        if kind != "lsq":
            notes.append(f"{kind}: the full-batch fit classifies {100 * np.mean(accs):.1f}% of the "
                         f"training samples correctly (100% = separable, no finite minimiser)")
    lines.append("oracle (full batch): the K smallest group norms of an unpenalised 3000-step full-batch GD fit")
    return "\n".join(lines + notes)


# ---------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """Runs the selected benchmark parts and prints their tables."""
    ap = argparse.ArgumentParser(prog="bench_optim", description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["a", "b", "c", "all"], default="all")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for (a)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per phase for (a)/(b)")
    ap.add_argument("--seeds", type=int, default=20, help="seeds for (c)")
    ap.add_argument("--recovery-steps", type=int, default=800, help="training steps for (c)")
    args = ap.parse_args(argv)
    parts = ["a", "b", "c"] if args.part == "all" else [args.part]
    for p in parts:
        t0 = time.perf_counter()
        if p == "a":
            out = bench_step_time(args.threads, args.steps)
        elif p == "b":
            out = bench_cuda(args.steps)
        else:
            out = bench_recovery(args.seeds, args.recovery_steps)
        print(out)
        print(f"[{p}: {time.perf_counter() - t0:.1f} s]\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
