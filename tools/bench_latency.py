"""Benchmark: do fewer FLOPs give less time? FLOPs, parameters and ONNX Runtime latency ratios.

For each network (ResNet-18, ResNet-50, MobileNetV2, an EfficientNet-B0-like net, a ViT and a
BERT-like encoder; by default at their own sizes, 224x224 images and 128 tokens, the transformers
with 4 of their 12 layers; ``--size cifar``: 32x32/64x64 images at reduced widths; ``--list``
says what each is) the channel groups (``partition-zig``) are chosen, with the same random
redundancy scores for every column, by

* ``r1``: the selection without rounding (:func:`~otoir.analyses.validity.select_redundant`,
  ``round-to=1``, the default before 2026-11-30), as many groups as bring the predicted FLOPs to
  ``--flops`` (0.5) of the full model's;
* ``auto``: the same with the default, ``round-to=auto`` (multiples of 16 for tensors of at
  least 32 channels, of 8 for 16 to 31, smaller tensors not rounded);
* ``rt8``: the same with ``round-to=8`` (kept channels of every pruned tensor a multiple of 8);
* ``rt16``: the same with ``round-to=16``, a multiple of ORT's x86 channel blocks (16 with
  AVX-512, 8 with AVX2), without the work units of ``runtime``;
* ``runtime``: the same with ``round-to=runtime``: kept counts multiples of the runtime's
  channel block (16 with AVX-512, 8 with AVX2), a dense convolution's outputs above one work
  unit of its threads (4 blocks) whole units;
* ``lat``: latency-aware selection with ``target-latency=--latency`` (0.5): groups ranked by
  importance per unit of measured ONNX Runtime latency saved (the latency table; importance the
  redundancy rank, and the rank weighed by the group's FLOPs: of the two selections, the one
  keeping more FLOPs), the count
  the smallest whose constructed deployment-form sub-network measured at most that fraction of
  the full model's latency (1 thread, batch 1, or ``--latency-threads``, ``--latency-batch``) — the library's path,
  :func:`~otoir.analyses.latency.measured_cost_model` (channel counts multiples of the
  runtime's block, a dense convolution's outputs above one work unit whole work units:
  :func:`~otoir.analyses.latency.runtime_aligned`);
* ``lat+rt8``: latency-aware with ``round-to=8``, only where the runtime's block is not a
  multiple of 8 (elsewhere it is ``lat``: kept counts multiples of the lcm of 8 and the block).

With ``--mix F``, two more rows for a network with depthwise convolutions: ``inner`` removes a
random ``F`` of the groups whose channels pass through one (an inverted residual's expanded
channels), ``outer`` the same fraction of the others, both with ``round-to=runtime``: what the
same FLOPs cost in time depends on which channels go.

Each choice is zeroed and cut out (``to-inference, prune-channels, cleanup, to-deployment``;
the oracle checks the sub-network against the zeroed full model), and every model of a network
is timed side by side, the models taking turns in blocks of runs (5 at batch 1, 2 at batch 16)
after one untimed run each
(:func:`otoir.report.time_interleaved`: steady-state latency; thread pools spinning within a
run only), 20 runs each, 60 at batch 1; a ratio is the median over the turns of the model's
time over the full model's in the same turn. ONNX Runtime CPU, 1 and 2 intra-op threads,
batch 1 and 16. A setting with more threads is timed again (twice at most) when the full model
took more than 0.85 of its 1-thread time there (:data:`PARALLEL`: the threads did not get the
cores; on this 2-vCPU machine the full EfficientNet took 8.6-9.3 ms at 2 threads, batch 1 in
some runs and 13.7-14.2 ms, against 14.5 ms at 1 thread, in others); one still serial is named
in the note.
``--variants`` constructs and times only the rows named. No training is needed: latency does not depend on the values. ``--kernels``
adds ``kern`` (is each kept kernel as efficient as in the full model?) and ``work`` (the latency
ratio kernels whose time followed their work exactly would give), and ``--by-kind`` each
kind of kernel's share of the full model's time and the time and work every model kept of it
(ORT's per-node profile, 1 thread, batch 1).

Usage: ``python tools/bench_latency.py [--size cifar | --quick] [--models resnet18,mobilenetv2] [--runs N]``.
Other processes on the machine slow every model of a round alike, but not exactly: say what the
load was when quoting the figures.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["MODELS", "main"]


@dataclass(frozen=True)
class Net:
    """A benchmark network: ``build(size) -> (module, example input)`` and what it is at each size.

    Sizes: ``full`` (the default: the networks' own sizes and input resolutions, 224×224
    images, 128 tokens), ``cifar`` (32×32 or 64×64 images, reduced widths: the figures of
    earlier stops) and ``quick`` (``cifar`` at about half width).
    """

    build: Callable[[str], tuple]
    description: dict[str, str]


SIZES = ("full", "cifar", "quick")


def _zoo(name: str, **kw):
    from otoir.zoo import build

    return build(name, **kw)


def _image(side: int):
    import torch

    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0))


def _resnet(size: str, block: str, layers: tuple[int, ...], cifar_width: int):
    import torch

    from otoir.zoo.cnns import ResNet

    torch.manual_seed(0)
    if size == "full":
        return ResNet(64, block, layers, num_classes=1000, stem="imagenet"), _image(224)
    return ResNet(cifar_width // (2 if size == "quick" else 1), block, layers), _image(32)


def _resnet18(size: str):
    return _resnet(size, "basic", (2, 2, 2, 2), 64)


def _resnet50(size: str):
    return _resnet(size, "bottleneck", (3, 4, 6, 3), 32)


_MBV2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _mobilenetv2(size: str):
    import torch

    from otoir.zoo.cnns import MobileNetV2

    torch.manual_seed(0)
    if size == "full":
        return MobileNetV2(1.0, _MBV2, num_classes=1000, stem_stride=2, last=1280), _image(224)
    quick = size == "quick"
    return MobileNetV2(0.5 if quick else 1.0, _MBV2), _image(32 if quick else 64)


def _efficientnet(size: str):
    import torch

    torch.manual_seed(0)
    if size == "full":
        return EfficientNetLike(1.0, stem_stride=2, num_classes=1000), _image(224)
    quick = size == "quick"
    return EfficientNetLike(width=0.5 if quick else 1.0), _image(32 if quick else 64)


def _vit(size: str):
    if size == "full":  # ViT-S/16, 4 of its 12 layers
        m, _ = _zoo("vit_like", image=224, patch=16, hidden=384, heads=6, ffn=1536, layers=4, num_classes=1000,
                    dropout=0.0)
        return m, _image(224)
    quick = size == "quick"
    return _zoo("vit_like", image=32, patch=4, hidden=96 if quick else 192, heads=3, ffn=384 if quick else 768,
                layers=2 if quick else 4)


def _bert(size: str):
    import torch

    from otoir.zoo import build

    if size == "full":  # BERT-base, 4 of its 12 layers, 128 tokens
        m, _ = build("bert_like", vocab=30522, hidden=768, heads=12, ffn=3072, layers=4, max_len=128, dropout=0.0)
        tokens = 128
    else:
        quick = size == "quick"
        m, _ = build("bert_like", vocab=1000, hidden=128 if quick else 256, heads=4, ffn=512 if quick else 1024,
                     layers=2 if quick else 4, max_len=64, dropout=0.0)
        tokens = 64
    return m, torch.randint(0, 1000, (2, tokens), generator=torch.Generator().manual_seed(0))


MODELS: dict[str, Net] = {
    "resnet18": Net(_resnet18, {
        "full": "ResNet-18, torchvision's layout (7x7 stem, max-pool), 224x224",
        "cifar": "ResNet-18 (CIFAR stem, 32x32), full width 64", "quick": "ResNet-18, CIFAR stem, 32x32, width 32"}),
    "resnet50": Net(_resnet50, {
        "full": "ResNet-50, torchvision's layout, 224x224",
        "cifar": "ResNet-50 bottlenecks 3-4-6-3 (CIFAR stem, 32x32), narrow: width 32", "quick": "ResNet-50 bottlenecks, CIFAR stem, 32x32, width 16"}),
    "mobilenetv2": Net(_mobilenetv2, {
        "full": "MobileNetV2, torchvision's layout (width 1.0, last conv 1280), 224x224",
        "cifar": "MobileNetV2, the 7 ImageNet stages (stride-1 stem, last conv 128), 64x64",
        "quick": "MobileNetV2, 7 stages, width 0.5, 32x32"}),
    "efficientnet": Net(_efficientnet, {
        "full": "EfficientNet-B0-like: MBConv + SE + SiLU, the B0 stages and head (stride-2 stem), 224x224",
        "cifar": "EfficientNet-B0-like, stride-1 stem, 64x64",
        "quick": "EfficientNet-B0-like, width 0.5, 32x32"}),
    "vit": Net(_vit, {
        "full": "ViT-S/16: 224x224 (197 tokens), width 384, 6 heads, 4 of its 12 layers",
        "cifar": "ViT: 32x32, patch 4 (65 tokens), width 192, 3 heads, 4 layers", "quick": "ViT: 32x32, width 96, 2 layers"}),
    "bert": Net(_bert, {
        "full": "BERT-base sized: 128 tokens, width 768, 12 heads, FFN 3072, 4 of its 12 layers",
        "cifar": "BERT-like: 64 tokens, width 256, 4 heads, FFN 1024, 4 layers", "quick": "BERT-like: 64 tokens, width 128, 2 layers"}),
}
#: A setting with more than one thread is timed again (twice at most) when the full model takes
#: more than this fraction of its 1-thread time: its threads did not get the cores. On this
#: 2-vCPU machine (2026-12-01, full size) the six full models at 2 threads took 0.51-0.74 of
#: their 1-thread time when both cores were theirs, and 0.94-0.98 when the hypervisor held one;
#: a 0.94 setting gave EfficientNet's selection 1.10x its FLOPs ratio, 1.02-1.08x in the others.
PARALLEL = 0.85
CONV_NETS = ("resnet18", "resnet50", "mobilenetv2", "efficientnet")
#: The FLOPs-selection rows rounded by ``round-to``, and their option values.
ROUNDED = {"auto": "auto", "rt8": 8, "rt16": 16, "runtime": "runtime"}
#: Every row ``--variants`` may name (``inner``/``outer`` need ``--mix``).
VARIANTS = ("r1", *ROUNDED, "lat", "lat+rt8", "inner", "outer")


def _efficientnet_class():
    import torch
    from torch import nn

    class MBConv(nn.Module):
        def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int) -> None:
            super().__init__()
            hid = cin * expand
            layers: list[nn.Module] = []
            if expand != 1:
                layers += [nn.Conv2d(cin, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.SiLU()]
            layers += [nn.Conv2d(hid, hid, k, stride, k // 2, groups=hid, bias=False), nn.BatchNorm2d(hid), nn.SiLU()]
            self.pre = nn.Sequential(*layers)
            sq = max(1, cin // 4)
            self.se1 = nn.Conv2d(hid, sq, 1)
            self.se2 = nn.Conv2d(sq, hid, 1)
            self.post = nn.Sequential(nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.res = stride == 1 and cin == cout

        def forward(self, x):
            h = self.pre(x)
            s = torch.sigmoid(self.se2(nn.functional.silu(self.se1(nn.functional.adaptive_avg_pool2d(h, 1)))))
            h = self.post(h * s)
            return x + h if self.res else h

    class Net(nn.Module):
        """EfficientNet-B0's stages (expand, channels, repeats, stride, kernel); stride-1 (CIFAR) or 2 stem."""

        stages = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5),
                  (6, 192, 4, 2, 5), (6, 320, 1, 1, 3))

        def __init__(self, width: float = 1.0, num_classes: int = 10, stem_stride: int = 1) -> None:
            super().__init__()

            def w(c: int) -> int:
                return max(8, int(c * width + 4) // 8 * 8)

            c = w(32)
            blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, c, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(c),
                                                     nn.SiLU())]
            for e, ch, n, s, k in self.stages:
                for i in range(n):
                    blocks.append(MBConv(c, w(ch), e, k, s if i == 0 else 1))
                    c = w(ch)
            head = w(1280)
            blocks.append(nn.Sequential(nn.Conv2d(c, head, 1, bias=False), nn.BatchNorm2d(head), nn.SiLU()))
            self.features = nn.Sequential(*blocks)
            self.fc = nn.Linear(head, num_classes)

        def forward(self, x):
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))

    return Net


def EfficientNetLike(width: float = 1.0, num_classes: int = 10, stem_stride: int = 1):  # noqa: N802 - a factory
    """An EfficientNet-B0-like network (MBConv blocks with squeeze-and-excitation and SiLU)."""
    return _efficientnet_class()(width, num_classes, stem_stride)


# ---------------------------------------------------------------------------------------------


def _flops_count(groups, scores, target: float, costs) -> list[int]:
    """The selection (select_redundant over ``groups``) of the fewest groups reaching ``target`` FLOPs."""
    from otoir.analyses.validity import select_redundant

    full = costs.full
    cache: dict[int, tuple[list[int], float]] = {}

    def at(k: int):
        if k not in cache:
            sel = select_redundant(groups, scores, k)
            cache[k] = (sel, costs.predict(sel) / full)
        return cache[k]

    from otoir.analyses.latency import smallest_selection

    return smallest_selection(at, len(at(len(groups))[0]), target)


def _construct(model, groups, chosen):
    """The zeroed full model (inference form) and the constructed deployment-form sub-network."""
    from otoir.analyses.groups import zero_groups
    from otoir.api import clone_model
    from otoir.infra import PassManager

    zeroed = clone_model(model)
    zero_groups(zeroed, [groups[i] for i in chosen])
    PassManager.from_text("to-inference").run(zeroed)
    sub = clone_model(zeroed)
    PassManager.from_text("prune-channels,cleanup,to-deployment").run(sub)
    return zeroed, sub


def time_settings(models, sample, threads_list, batches, runs: int, timer=None):
    """Times ``models`` (the full model first) at every (threads, batch) setting: ``(lat, ratio,
    best, serial)``, the first three by setting as :func:`interleaved` gives them, ``serial`` the
    settings named ``t<threads> b<batch>`` whose threads did not run in parallel.

    A setting with more than one thread is timed again, twice at most, while the full model takes
    more than :data:`PARALLEL` of its 1-thread time at the same batch (timed first): its threads
    did not get the cores. ``runs`` is tripled at batch 1 (cheap, and the most disturbed by other
    load). ``timer`` replaces :func:`interleaved` (tests).
    """
    timer = timer or interleaved
    lat: dict[tuple[int, int], list[float]] = {}
    ratio: dict[tuple[int, int], list[float]] = {}
    best: dict[tuple[int, int], list[float]] = {}
    serial: list[str] = []
    for threads in sorted(threads_list):  # 1 thread first: the reference of the retry
        for batch in batches:
            tb = (threads, batch)
            one = lat.get((1, batch))
            for _ in range(3):
                lat[tb], ratio[tb], best[tb] = timer(models, sample, runs=runs * (3 if batch == 1 else 1),
                                                     threads=threads, batch=batch)
                if threads == 1 or one is None or lat[tb][0] <= PARALLEL * one[0]:
                    break
            else:
                serial.append(f"t{threads} b{batch}")
    return lat, ratio, best, serial


def interleaved(models, sample, *, runs: int, threads: int, batch: int, warmup: int = 3):
    """(median ms, latency ratio, minimum ms) of each model, timed side by side
    (:func:`otoir.report.time_interleaved`).

    The ratio is the median over the turns of each model's time over the first model's in the
    same turn (:func:`otoir.report.turn_ratios`); the minimum (the least disturbed run) shows
    what load from other processes did to the figures.
    """
    from otoir.report import time_interleaved, turn_ratios

    times = time_interleaved(models, sample, runs=runs, warmup=warmup, threads=threads, batch=batch)
    return (np.median(times, axis=1).tolist(), np.median(turn_ratios(times), axis=1).tolist(),
            times.min(axis=1).tolist())


def _mix(model, groups, fraction: float, seed: int) -> dict[str, list[int]]:
    """``--mix``: ``inner``, a random ``fraction`` of the groups whose channels pass through a
    depthwise convolution (an inverted residual's expanded channels: element-wise and
    depthwise work besides the 1x1 convolutions), and ``outer``, the same fraction of the
    others (the blocks' inputs and outputs: 1x1 convolutions' work). No entries for a network
    without depthwise convolutions."""
    from otoir.analyses.validity import select_redundant

    dw = {n.name for n in model.graph if n.op_type == "Conv" and (a := n.attributes.get("group")) is not None
          and a.value > 1}
    weights = {n.inputs[1].name for n in model.graph if n.name in dw and len(n.inputs) > 1 and n.inputs[1] is not None}
    if not weights:
        return {}
    inner = np.array([any(s.tensor in weights for s in (*g.slices, *g.dependent)) for g in groups])
    rng = np.random.default_rng(seed)
    out = {}
    for label, mask in (("inner", inner), ("outer", ~inner)):
        scores = np.where(mask, rng.random(len(groups)), -np.inf)
        out[label] = select_redundant(groups, scores.tolist(), int(round(fraction * mask.sum())))
    return out


def bench(name: str, args) -> list[dict]:
    """Runs one network; returns one row per model (full first)."""
    import otoir
    from otoir.analyses.latency import (
        channel_multiple,
        flops_cost_model,
        latency_select,
        measured_cost_model,
        runtime_aligned,
    )
    from otoir.analyses.validity import controlled_groups
    from otoir.api import clone_model
    from otoir.frontends import export_torch
    from otoir.infra import PassManager
    from otoir.optim.from_groups import groups_for
    from otoir.report import random_inputs
    from otoir.runtime import output_agreement

    t0 = time.perf_counter()
    module, x = MODELS[name].build(args.size)
    model = export_torch(module, x)
    full = clone_model(model)
    PassManager.from_text("to-deployment").run(full)
    groups = groups_for(model, "zig")
    rng = np.random.default_rng(args.seed)
    scores = rng.random(len(groups)).tolist()
    variants: dict[str, list[int]] = {"r1": _flops_count(groups, scores, args.flops,
                                                         flops_cost_model(model, groups))}
    by_variant = {"r1": groups, "lat": groups}
    # runtime: the runtime's channel block (16 with AVX-512) and whole work units
    for v, n in ROUNDED.items():
        rounded = controlled_groups(groups, model, round_to=n)
        by_variant[v] = rounded = rounded.subset(g for g in rounded if g.prunable)
        variants[v] = _flops_count(rounded, scores, args.flops, flops_cost_model(model, rounded))
    rt, rtr = by_variant["rt8"], by_variant["runtime"]
    by_variant["lat+rt8"] = rt
    block = channel_multiple(args.latency_threads)
    if args.mix:
        for v, chosen in _mix(model, rtr, args.mix, args.seed).items():
            variants[v], by_variant[v] = chosen, rtr
    t1 = time.perf_counter()
    # the library's target-latency path: ranked by the table, counted on the measured
    # constructed sub-networks (--latency-threads, --latency-batch, as the table)
    costs = measured_cost_model(model, groups, threads=args.latency_threads, batch=args.latency_batch)
    t_table = time.perf_counter() - t1 - (costs.counter.seconds if costs.counter else 0.0)
    aligned, _ = runtime_aligned(model, groups, costs)
    variants["lat"] = latency_select(aligned, scores, costs, target_latency=args.latency)
    predicted = {"lat": costs.predict(variants["lat"]) / costs.full}
    layer = {"lat": costs.layer_predict(variants["lat"]) / costs.layer_full}
    counters = [costs.counter]
    if math.lcm(8, block) != block:  # else lat's own alignment is already a multiple of 8
        rt_costs = measured_cost_model(model, rt, table=costs.table, threads=args.latency_threads,
                                       batch=args.latency_batch)
        rt_aligned, _ = runtime_aligned(model, rt, rt_costs)  # round-to 8 and the runtime's block: the lcm
        variants["lat+rt8"] = latency_select(rt_aligned, scores, rt_costs, target_latency=args.latency)
        predicted["lat+rt8"] = rt_costs.predict(variants["lat+rt8"]) / rt_costs.full
        layer["lat+rt8"] = rt_costs.layer_predict(variants["lat+rt8"]) / rt_costs.layer_full
        counters.append(rt_costs.counter)
    t_select = time.perf_counter() - t1 - t_table
    counters = [c for c in counters if c is not None]
    if args.variants:
        variants = {k: v for k, v in variants.items() if k in args.variants}
    models = {"full": full}
    worst = 0.0
    for v, chosen in variants.items():
        zeroed, sub = _construct(model, by_variant[v], chosen)
        worst = max(worst, output_agreement(zeroed, sub, random_inputs(zeroed, rows=4)))
        models[v] = sub
    sample = random_inputs(full, rows=16, seed=1)
    if not isinstance(x, np.ndarray) and str(getattr(x, "dtype", "")) == "torch.int64":
        sample = {k: np.minimum(v, 999) for k, v in sample.items()}
    lat, ratio, best, serial = time_settings(list(models.values()), sample, args.threads, args.batches, args.runs)
    kern: dict[str, float] = {}
    work: dict[str, float] = {}
    by_kind: dict[str, dict[str, tuple[float, float, float]]] = {}
    if args.kernels or args.by_kind:  # ORT's per-node profile, 1 thread, batch 1: is each kept kernel as efficient as in full?
        from otoir.report import kernel_efficiency, kernel_profile, work_scaled_us

        prof = dict(zip(models, kernel_profile(list(models.values()), sample, runs=args.runs, threads=1, batch=1),
                        strict=True))
        kern = {k: kernel_efficiency(prof["full"], p) for k, p in prof.items()}
        full_us = sum(t.us for t in prof["full"].values()) or 1.0
        work = {k: work_scaled_us(prof["full"], p) / full_us for k, p in prof.items()}
        if args.by_kind:
            by_kind = _by_kind(full, prof)
    st = {k: otoir.stats(m) for k, m in models.items()}
    rows = []
    for i, k in enumerate(models):
        rows.append({
            "model": name, "variant": k, "groups": len(variants.get(k, ())), "of": len(groups),
            "flops": st[k].flops / st["full"].flops, "params": st[k].params / st["full"].params,
            "predicted": predicted.get(k), "table": layer.get(k),
            "lat": {tb: r[i] for tb, r in ratio.items()}, "ms": {tb: ms[i] for tb, ms in lat.items()},
            "best": {tb: ms[i] / ms[0] for tb, ms in best.items()}, "kern": kern.get(k), "work": work.get(k),
            "kinds": by_kind.get(k),
        })
    rows[0]["note"] = (f"{len(groups)} groups, table {t_table:.1f} s ({costs.table.timings if costs.table else 0} "
                       f"timings, channel multiple {costs.table.align if costs.table else '-'}), measured selection "
                       f"{t_select:.1f} s ({sum(c.constructions for c in counters)} constructions, "
                       f"{sum(c.seconds for c in counters):.1f} s timing), oracle max diff "
                       f"{worst:.1e}, {time.perf_counter() - t0:.0f} s"
                       + (f"; NOT PARALLEL at {', '.join(serial)}: the full model took more than {PARALLEL} of its "
                          f"1-thread time in three tries (another process or the hypervisor held a core)"
                          if serial else ""))
    return rows


def _by_kind(full, prof: dict) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Per model and kind of kernel: (share of the full model's kernel time, time kept, work kept).

    Kinds: ``conv`` (dense), ``dwconv`` (grouped), ``matmul`` (Gemm, MatMul), ``reorder``
    (ORT's layout reorders, not nodes of the model) and ``other`` (element-wise ops, pooling,
    normalisation: memory-bound kernels whose work is output elements, linear in the channels
    kept, where a convolution's is multiply-accumulates, often bilinear).
    """
    kind_of: dict[str, str] = {}
    for n in full.graph:
        if n.op_type == "Conv":
            g = n.attributes.get("group")
            kind_of[n.name] = "dwconv" if g is not None and g.value > 1 else "conv"
        elif n.op_type in ("Gemm", "MatMul", "FusedMatMul"):
            kind_of[n.name] = "matmul"

    def kind(name: str, op_type: str) -> str:
        if name in kind_of:
            return kind_of[name]
        return "reorder" if op_type.startswith("Reorder") else "other"

    sums: dict[str, dict[str, list[float]]] = {}
    for model, p in prof.items():
        for name, k in p.items():
            acc = sums.setdefault(model, {}).setdefault(kind(name, k.op_type), [0.0, 0.0])
            acc[0] += k.us
            acc[1] += k.work
    full_sums = sums["full"]
    total = sum(us for us, _ in full_sums.values()) or 1.0
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
    for model, kinds in sums.items():
        out[model] = {}
        for kd, (fus, fwork) in sorted(full_sums.items(), key=lambda t: -t[1][0]):
            us, work = kinds.get(kd, [0.0, 0.0])
            out[model][kd] = (fus / total, us / fus if fus else 0.0, work / fwork if fwork else 0.0)
    return out


def _print(rows: list[dict], args) -> None:
    keys = [(t, b) for t in args.threads for b in args.batches]
    head = f"{'model':<13}{'variant':<9}{'groups':>11}{'FLOPs':>7}{'params':>7}{'pred':>6}{'table':>6}"
    head += "".join(f"{f't{t} b{b}':>9}" for t, b in keys) + (f"{'kern':>6}{'work':>6}" if args.kernels else "") + "  ok"
    print(head)
    for r in rows:
        if r["variant"] == "full":
            ms = "".join(f"{r['ms'][k]:>7.2f}ms" for k in keys)
            print(f"{r['model']:<13}{'full':<9}{'':>11}{1:>7.2f}{1:>7.2f}{'':>12}{ms}  ({r['note']})")
            continue
        worst = max(r["lat"].values())
        ok = "yes" if worst <= 1.1 * r["flops"] and worst < 1.0 else ("<1" if worst < 1.0 else "SLOWER")
        pred = f"{r['predicted']:>6.2f}" if r["predicted"] is not None else f"{'':>6}"
        pred += f"{r['table']:>6.2f}" if r.get("table") is not None else f"{'':>6}"
        lat = "".join(f"{r['lat'][k]:>9.2f}" for k in keys)
        if args.kernels:
            lat += f"{r['kern']:>6.2f}{r['work']:>6.2f}" if r.get("kern") is not None else f"{'':>12}"
        print(f"{'':<13}{r['variant']:<9}{r['groups']:>5}/{r['of']:<5}{r['flops']:>7.2f}{r['params']:>7.2f}{pred}{lat}"
              f"  {ok}", flush=True)
        if args.show_min:
            low = "".join(f"{'(' + format(r['best'][k], '.2f') + ')':>9}" for k in keys)
            print(f"{'':<13}{'  min':<9}{'':>11}{'':>7}{'':>7}{'':>12}{low}", flush=True)
        if r.get("kinds"):
            print(f"{'':<13}{'  kinds':<9}" + "; ".join(f"{kind} {share:.2f}: time {t:.2f} work {w:.2f}"
                                                    for kind, (share, t, w) in r["kinds"].items()), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    ap.add_argument("--size", choices=SIZES[:2], default="full",
                    help="full (default): the networks at their own sizes, 224x224 images, 128 tokens; cifar: "
                         "32x32/64x64 images at reduced widths (the figures of earlier stops)")
    ap.add_argument("--quick", action="store_true", help="cifar at about half width, batch 1 and 4, 1 thread, 10 runs")
    ap.add_argument("--runs", type=int, default=None,
                    help="timed runs per model and setting, three times as many at batch 1 (default 20; quick 10)")
    ap.add_argument("--threads", default=None, help="intra-op thread counts (default 1,2; quick 1)")
    ap.add_argument("--batches", default=None, help="batch sizes (default 1,16; quick 1,4)")
    ap.add_argument("--flops", type=float, default=0.5, help="FLOPs fraction of the r1, auto, rt8 and runtime rows")
    ap.add_argument("--latency", type=float, default=0.5, help="target-latency of the lat columns")
    ap.add_argument("--latency-threads", type=int, default=1,
                    help="intra-op threads the lat columns' target-latency is measured at (latency-threads=; default 1)")
    ap.add_argument("--latency-batch", type=int, default=1,
                    help="batch size the lat columns' target-latency is measured at (latency-batch=; default 1)")
    ap.add_argument("--by-kind", action="store_true",
                    help="with the profile of --kernels, print per kind of kernel (dense conv, depthwise conv, "
                         "gemm/matmul, layout reorders, other ops) its share of the full model's time and the time "
                         "and work each model kept of it")
    ap.add_argument("--mix", type=float, default=0.0,
                    help="also remove this fraction of the groups whose channels pass through a depthwise "
                         "convolution (inner) and, apart, of the other groups (outer), with round-to=runtime: "
                         "which channels a selection removes decides what its FLOPs buy")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random redundancy scores")
    ap.add_argument("--variants", default="",
                    help="comma-separated rows to construct and time (default: all), e.g. runtime,lat")
    ap.add_argument("--list", action="store_true", help="list the networks and exit")
    ap.add_argument("--show-min", action="store_true", help="also print the ratios of the fastest runs")
    ap.add_argument("--kernels", action="store_true",
                    help="profile every model (ORT, 1 thread, batch 1) and print kern: the kept kernels' time over "
                         "their full-model time scaled by the work each kept (1.0: FLOPs turn into time kernel by "
                         "kernel; the rest of latency/FLOPs is which layers kept their work)")
    args = ap.parse_args(argv)
    if args.quick:
        args.size = "quick"
    if args.list:
        for k, n in MODELS.items():
            print(f"{k:<13}{n.description[args.size]}")
        return 0
    args.runs = args.runs or (10 if args.quick else 20)
    args.threads = [int(t) for t in (args.threads or ("1" if args.quick else "1,2")).split(",")]
    args.batches = [int(b) for b in (args.batches or ("1,4" if args.quick else "1,16")).split(",")]
    args.variants = {v.strip() for v in args.variants.split(",") if v.strip()}
    known = set(VARIANTS)
    if args.variants - known:
        print(f"bench_latency: unknown variant(s) {', '.join(sorted(args.variants - known))} "
              f"(known: {', '.join(sorted(known))})", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(f"bench_latency: unknown model(s) {', '.join(unknown)} (known: {', '.join(MODELS)})", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from otoir.runtime import version as runtime_version

    print(f"# ONNX Runtime {runtime_version()} CPU; FLOPs/params/latency as fractions of the full model; pred = the latency "
          "fraction the selection believed (lat columns: measured on the constructed deployment-form network, "
          f"interleaved with the full model, {args.latency_threads} thread(s), batch {args.latency_batch}); table = the latency table's prediction of it; latency columns t<threads> b<batch> (the models take turns in blocks of runs; the median over the turns of each model's time over the full model's in the same turn); ok = every latency ratio <= "
          "1.1 x FLOPs ratio and < 1 (<1: faster than full only); "
          + ("kern = the kept kernels' time / their full-model time scaled by the multiply-accumulates (other "
             "kernels: output elements) each kept (ORT profile, 1 thread, batch 1); work = the latency ratio kernels whose "
             "time followed their work would give (that scaled time over the full model's kernel time); "
             if args.kernels else "")
          + f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    rows: list[dict] = []
    for n in names:
        r = bench(n, args)
        if rows:
            _print_rows(r, args)
        else:
            _print(r, args)
        rows += r
    print(f"# load average at end {os.getloadavg()[0]:.1f}")
    return 0


def _print_rows(rows: list[dict], args) -> None:
    """Rows without the header (the header was printed with the first network)."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        _print(rows, args)
    print("\n".join(buf.getvalue().splitlines()[1:]), flush=True)


if __name__ == "__main__":
    sys.exit(main())
