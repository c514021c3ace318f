"""Benchmark: how long the selection of the redundant groups takes, with and without round-to.

Without rounding, :func:`~otoir.analyses.validity.select_redundant` is a greedy walk over the
groups by score; under ``round-to`` (``auto``, the default, or ``N``) the allowed zero counts
per tensor are not intervals and the counts are chosen by an exact dynamic programme, and
:func:`~otoir.analyses.validity.reachable_counts` (the check that the target count can be met,
run once per training) is a second one. This times both on channel groups shaped like
transformer decoders (no model is built: the groups alone, one per MLP channel, one per
attention head, one per hidden channel), asking for half of them, with the same random scores
for every column; the ratio divides the two selection times of one shape measured in this run.

Usage: ``python tools/bench_select.py [--shapes bert-base,llama-1b,llama-7b] [--round-to auto]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

__all__ = ["SHAPES", "main", "synthetic_groups"]

#: name: (layers, MLP channels, heads, head width, hidden channels)
SHAPES = {
    "bert-base": (12, 3072, 12, 64, 768),
    "llama-1b": (16, 8192, 32, 64, 2048),
    "llama-7b": (32, 11008, 32, 128, 4096),
}


def synthetic_groups(layers: int, mlp: int, heads: int, head_width: int, hidden: int) -> list:
    """Channel groups of a decoder stack: one per MLP channel and per head in every layer, one per hidden channel."""
    from otoir.analyses.groups import Group, TensorSlice

    out = []
    for i in range(layers):
        t = f"mlp{i}"
        out += [Group(f"zig:{t}:{j}", "zig", (TensorSlice(t, 0, (j,)),)) for j in range(mlp)]
        t = f"attn{i}"
        out += [Group(f"zig:{t}:{j}", "zig", (TensorSlice(t, 0, tuple(range(j * head_width, (j + 1) * head_width))),))
                for j in range(heads)]
    out += [Group(f"zig:hidden:{j}", "zig", (TensorSlice("hidden", 0, (j,)),)) for j in range(hidden)]
    return out


def main(argv: list[str] | None = None) -> int:
    from otoir.analyses.validity import controlled_groups, reachable_counts, select_redundant

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated: {', '.join(SHAPES)}")
    ap.add_argument("--round-to", default="auto", help="the rounded column's round-to (default auto)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random scores")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.shapes.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        print(f"bench_select: unknown shape(s) {', '.join(unknown)} (known: {', '.join(SHAPES)})", file=sys.stderr)
        return 2
    rounded = int(args.round_to) if args.round_to.isdigit() else args.round_to
    print(f"# select_redundant of half the groups; load average at start {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    print(f"{'shape':<11}{'groups':>9}{'round-to=1 s':>14}{f'round-to={rounded} s':>17}{'ratio':>7}"
          f"{'reachable s':>13}")
    for name in names:
        groups = synthetic_groups(*SHAPES[name])
        scores = np.random.default_rng(args.seed).random(len(groups)).tolist()
        k = len(groups) // 2
        secs = []
        for rt in (1, rounded):
            gs = controlled_groups(groups, round_to=rt)
            t0 = time.perf_counter()
            chosen = select_redundant(gs, scores, k)
            secs.append(time.perf_counter() - t0)
            if len(chosen) != k:
                print(f"bench_select: {name} round-to={rt} chose {len(chosen)} of {k}", file=sys.stderr)
                return 1
        t0 = time.perf_counter()
        reachable_counts(gs)
        reach = time.perf_counter() - t0
        print(f"{name:<11}{len(groups):>9}{secs[0]:>14.2f}{secs[1]:>17.2f}{secs[1] / secs[0]:>7.1f}{reach:>13.2f}",
              flush=True)
    print(f"# load average at end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
