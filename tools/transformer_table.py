"""The transformer set's table: groups per mode, parameters removed at a random 0.5, oracle difference.

For every model of :mod:`otoir.zoo.hf` (Hugging Face ``transformers`` architectures built from
tiny configs with random weights, nothing downloaded) and both modes, the oracle of
:func:`otoir.tools.oracle_sweep.run_model_case` runs: zero a random half of the removable
groups, construct the sub-network (``prune-channels`` / ``eliminate-dead-branches``), and
compare it with the zeroed full model in ONNX Runtime (fp32, ``<= 1e-4`` of the output scale).
One row per model: removable groups (channel groups, of which ``~N`` flagged inexact, which
``prune-channels`` keeps; GeZIGs), the share of parameters removed, and the max output
difference relative to the output's own size (``max|y - y'| / max|y|``, the oracle's
measure); then the median share removed per mode and of the better mode per model.

Usage::

    HF_HUB_OFFLINE=1 python -m otoir.tools.transformer_table [--models bert,llama] [--fraction 0.5] [--seed 0]
        [--prepare PIPELINE] [--plain]

Exits 1 when a case is not exact (the failing cases are listed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Row", "measure", "format_table", "relative_diff", "main"]


@dataclass(frozen=True)
class Row:
    """One model's results: ``cases[mode]`` is the :class:`~otoir.tools.oracle_sweep.CaseResult`."""

    name: str
    family: str
    cases: dict
    seconds: float
    fraction: float

    def share(self, mode: str) -> float:
        """Fraction of the full model's parameters removed in ``mode``."""
        c = self.cases[mode]
        return c.removed / c.params if c.params else 0.0


def measure(names: Sequence[str], *, fraction: float = 0.5, seed: int = 0, prepare: str = "") -> list[Row]:
    """Exports each model once and runs the oracle in both modes on copies of the export.

    ``prepare``: a pipeline run on each export first (e.g. a transform that makes hidden-size
    groups exact); the oracle's reference is the prepared model.
    """
    import onnx
    import onnx_ir as ir

    from otoir.infra.pass_manager import PassManager
    from otoir.tools.oracle_sweep import run_model_case
    from otoir.zoo.hf import HF_MODELS, export_case

    rows = []
    for name in names:
        t0 = time.perf_counter()
        model, feeds = export_case(name, seed)
        if prepare:
            PassManager.from_text(prepare).run(model)
        data = ir.to_proto(model).SerializeToString()
        cases = {mode: run_model_case(ir.from_proto(onnx.load_from_string(data)), mode, fraction=fraction, seed=seed,
                                      feeds=feeds)
                 for mode in ("prune", "erase")}
        rows.append(Row(name, HF_MODELS[name].family, cases, time.perf_counter() - t0, fraction))
    return rows


def relative_diff(c) -> float:
    """``max|y_full - y_sub| / max|y_full|`` of a case (the oracle's ``diff``; NaN if nothing ran)."""
    return c.diff


def _cell(c, share: float) -> list[str]:
    groups = f"{c.groups}" + (f" (~{c.inexact})" if c.inexact else "")
    d = relative_diff(c)
    diff = "-" if d != d else f"{d:.1e}"  # NaN: nothing ran
    status = "" if c.outcome == "exact" else f" {c.outcome.upper()}"
    return [groups, f"{share:.1%}", diff + status]


def format_table(rows: Sequence[Row], *, markdown: bool = True) -> str:
    """The table (Markdown by default) and the medians."""
    head = ["model", "params", "prune groups", "prune removed", "prune max rel diff", "erase groups",
            "erase removed", "erase max rel diff"]
    body = []
    for r in rows:
        p, e = r.cases["prune"], r.cases["erase"]
        body.append([r.name, f"{p.params:,}", *_cell(p, r.share("prune")), *_cell(e, r.share("erase"))])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
    else:
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in [head, *body]]
    if rows:
        med = {m: statistics.median(r.share(m) for r in rows) for m in ("prune", "erase")}
        best = statistics.median(max(r.share("prune"), r.share("erase")) for r in rows)
        lines.append("")
        lines.append(f"median parameters removed at random {rows[0].fraction:g} over {len(rows)} models: "
                     f"prune {med['prune']:.1%}, erase {med['erase']:.1%}, better mode per model {best:.1%}")
        lines.append("groups: removable groups (channel groups, ~N of them flagged inexact and kept by prune-channels; "
                     "GeZIGs); removed: share of the full model's parameters")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the table; returns 1 when a case is not exact."""
    from otoir.zoo.hf import names as all_names

    ap = argparse.ArgumentParser(prog="transformer_table", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="", help="comma-separated subset (default: the whole set)")
    ap.add_argument("--fraction", type=float, default=0.5, help="fraction of the groups zeroed (default 0.5)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the weights, the groups and the inputs")
    ap.add_argument("--plain", action="store_true", help="aligned text instead of Markdown")
    ap.add_argument("--prepare", default="", help="pipeline run on each export before the oracle (e.g. layernorm-invariance)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    chosen = [m for m in args.models.split(",") if m] or all_names()
    unknown = [m for m in chosen if m not in all_names()]
    if unknown:
        print(f"transformer_table: error: unknown model(s) {', '.join(unknown)} (known: {', '.join(all_names())})",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rows = measure(chosen, fraction=args.fraction, seed=args.seed, prepare=args.prepare)
    print(format_table(rows, markdown=not args.plain))
    print(f"({time.perf_counter() - t0:.0f} s for {len(rows)} models, both modes, export included)")
    bad = [(r.name, m, c.outcome, c.detail) for r in rows for m, c in r.cases.items()
           if c.outcome != "exact" or not relative_diff(c) <= 1e-4]
    for name, mode, outcome, detail in bad:
        print(f"NOT EXACT: {name} {mode}: {outcome}: {detail}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
