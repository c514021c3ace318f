"""The correctness oracle over generated networks, in both modes.

For each seed, :mod:`otoir.zoo.netgen` draws a network; then

* **erase**: ``classify-vertices,grow-segments,partition-gezig,zero-groups{random=F seed=S}``,
  then ``eliminate-dead-branches``;
* **prune**: ``partition-zig,zero-groups{kind=zig random=F seed=S}``, then ``prune-channels``;

and the constructed sub-network must compute the zeroed full network's outputs in ONNX Runtime
(``<= 1e-4`` of the output scale, :func:`otoir.runtime.max_rel_diff`) — or a pass must refuse
with a reason (a diagnostic). Each case ends in one outcome:

``exact``
    the sub-network loads (``onnx.checker`` full check, ONNX Runtime session and one run) and
    its outputs match;
``refused``
    a pass reported an error diagnostic with a reason (no model would be written);
``mismatch``
    the sub-network runs but its outputs differ (a silently wrong model);
``unloadable``
    the sub-network fails the checker or ONNX Runtime (an unloadable model);
``crash``
    an exception that is not a diagnostic (a bug), or the structural verifier rejected a pass's
    output.

Usage::

    python -m otoir.tools.oracle_sweep --count 1000 --seed 0
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from otoir.errors import OtoirError, PassFailure, VerifierError
from otoir.infra.pass_manager import PassManager
from otoir.runtime import max_rel_diff, random_feeds, run_model
from otoir.zoo.netgen import generate

__all__ = ["OUTCOMES", "MODES", "CaseResult", "run_case", "run_model_case", "sweep", "main"]

OUTCOMES = ("exact", "refused", "mismatch", "unloadable", "crash")
MODES = ("erase", "prune")
#: Largest accepted ``max|a-b| / max|a|``.
TOLERANCE = 1e-4

_ZERO = {
    "erase": "classify-vertices,grow-segments,partition-gezig,zero-groups{{random={f} seed={s}}}",
    "prune": "partition-zig,zero-groups{{kind=zig random={f} seed={s}}}",
}
_BUILD = {"erase": "eliminate-dead-branches", "prune": "prune-channels"}


def _run(model: ir.Model, feeds) -> list[np.ndarray]:
    """One thread, no graph optimisation: exact, reproducible numbers for the oracle."""
    return run_model(model, feeds, threads=1, inter_threads=1, optimization="disable")


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one (network, mode) case.

    Attributes:
        seed: Network seed (:func:`otoir.zoo.netgen.generate`).
        mode: ``erase`` or ``prune``.
        outcome: One of :data:`OUTCOMES`.
        detail: The reason (refusal message, difference, exception).
        zeroed: Number of groups zeroed.
        removed: Parameters removed by the construction.
        features: The network's feature tags.
        rejected: Why segments (erase) or channel groups (prune) were not made removable, one
            entry per segment/group; names and numbers are masked so that equal reasons compare
            equal. These refusals are part of an ``exact`` case.
        groups: Removable groups found (GeZIGs, or prunable channel groups), 0 if a pass refused.
        inexact: Of the channel groups, those flagged not exactly zero-invariant (prune mode).
        params: Parameters of the full model.
        diff: Max output difference relative to the output's own scale, ``max|y - y'| / max|y|``
            (:func:`otoir.runtime.max_rel_diff`; NaN unless the sub-network ran).
        scale: ``max|y|`` of the zeroed full model's outputs (NaN unless it ran).
    """

    seed: int
    mode: str
    outcome: str
    detail: str = ""
    zeroed: int = 0
    removed: int = 0
    features: frozenset[str] = frozenset()
    rejected: tuple[str, ...] = ()
    groups: int = 0
    inexact: int = 0
    params: int = 0
    diff: float = float("nan")
    scale: float = float("nan")

    @property
    def ok(self) -> bool:
        """Exact, or refused with a reason."""
        return self.outcome == "exact" or (self.outcome == "refused" and bool(self.detail))


def _nparams(m: ir.Model) -> int:
    return sum(int(np.prod(v.const_value.shape.dims)) for v in m.graph.initializers.values()
               if v.const_value is not None)


def _failure(exc: PassFailure) -> tuple[str, str]:
    if isinstance(exc, VerifierError):
        return "crash", str(exc)
    cause = exc.__cause__
    if cause is not None and not isinstance(cause, OtoirError):
        return "crash", str(exc)
    return "refused", str(exc)


def _mask(reason: str) -> str:
    reason = re.sub(r"'[^']*'|@?\b[A-Za-z_]+\d+(_out)?\b|\b\d+\b", "#", reason)
    return reason[:100]


def _rejected(mode: str, res) -> tuple[str, ...]:
    am = res.analyses
    if am is None:
        return ()
    if mode == "erase":
        from otoir.analyses.gezig import GeZIGPartition

        return tuple(_mask(v.reason) for v in am.get(GeZIGPartition).verdicts.values() if not v.gezig)
    from otoir.analyses.zig import ChannelGroups

    return tuple(_mask(g.reason) for g in am.get(ChannelGroups).groups if not g.prunable)


def _count_groups(mode: str, res) -> tuple[int, int]:
    """(removable groups, of them flagged inexact) found by the analysis ``res`` ran."""
    am = res.analyses
    if am is None:
        return 0, 0
    if mode == "erase":
        from otoir.analyses.gezig import GeZIGPartition

        return len(am.get(GeZIGPartition).groups), 0
    from otoir.analyses.zig import ChannelGroups

    prunable = [g for g in am.get(ChannelGroups).groups if g.prunable]
    return len(prunable), sum(1 for g in prunable if not g.meta.get("exact", True))


def fraction_of(seed: int) -> float:
    """The fraction of groups zeroed for a seed (varied so that all sizes of sets occur)."""
    return (0.3, 0.6, 1.0)[seed % 3]


def run_case(seed: int, mode: str, *, fraction: float | None = None, max_blocks: int = 5) -> CaseResult:
    """Runs the oracle on the network of ``seed`` in ``mode``.

    Args:
        seed: Network seed; also seeds the choice of groups and the inputs.
        mode: ``erase`` or ``prune``.
        fraction: Fraction of the prunable groups zeroed (default :func:`fraction_of`).
        max_blocks: Passed to :func:`otoir.zoo.netgen.generate`.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (expected one of {', '.join(MODES)})")
    net = generate(seed, max_blocks=max_blocks)
    f = fraction_of(seed) if fraction is None else fraction
    return run_model_case(net.model(), mode, fraction=f, seed=seed, features=net.features)


def run_model_case(model: ir.Model, mode: str, *, fraction: float, seed: int = 0,
                   features: frozenset[str] = frozenset(), feeds: dict[str, np.ndarray] | None = None) -> CaseResult:
    """Runs the oracle on ``model`` (changed in place) in ``mode``: zero, construct, compare.

    The same steps as :func:`run_case` for any model (e.g. the transformer set of
    :mod:`otoir.zoo.hf`): ``fraction`` of the prunable groups are zeroed (seeded by ``seed``,
    which also seeds the inputs), the sub-network is constructed, and its outputs are compared
    with the zeroed full model's in ONNX Runtime.

    Args:
        model: The full model; it becomes the constructed sub-network.
        mode: ``erase`` or ``prune``.
        fraction: Fraction of the prunable groups zeroed.
        seed: Seed of the choice of groups and of the inputs.
        features: Tags copied into the result.
        feeds: The inputs (default: :func:`otoir.runtime.random_feeds` of the model, ``seed``).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r} (expected one of {', '.join(MODES)})")
    feats = features
    f = fraction
    try:
        res = PassManager.from_text(_ZERO[mode].format(f=f, s=seed)).run(model)
    except PassFailure as exc:
        outcome, detail = _failure(exc)
        return CaseResult(seed, mode, outcome, detail, features=feats)
    except Exception as exc:  # noqa: BLE001 - a crash is an outcome here
        return CaseResult(seed, mode, "crash", f"{type(exc).__name__}: {exc}", features=feats)
    zeroed = len(res.results.get("zeroed", []))
    rejected = _rejected(mode, res)
    reference = ir.serde.deserialize_model(ir.to_proto(model))
    before = _nparams(model)
    n_groups, n_inexact = _count_groups(mode, res)

    def result(*args, **kwargs) -> CaseResult:  # the counts ride on every outcome from here on
        return CaseResult(*args, **kwargs, groups=n_groups, inexact=n_inexact, params=before)

    try:
        PassManager.from_text(_BUILD[mode]).run(model)
    except PassFailure as exc:
        outcome, detail = _failure(exc)
        return result(seed, mode, outcome, detail, zeroed, features=feats, rejected=rejected)
    except Exception as exc:  # noqa: BLE001
        return result(seed, mode, "crash", f"{type(exc).__name__}: {exc}", zeroed, features=feats, rejected=rejected)
    removed = before - _nparams(model)
    if feeds is None:
        feeds = random_feeds(reference, seed)
    try:
        expected = _run(reference, feeds)
    except Exception as exc:  # noqa: BLE001 - the generator's own network must run
        return result(seed, mode, "crash", f"zeroed full network does not run: {exc}", zeroed, removed, feats, rejected)
    try:
        onnx.checker.check_model(ir.to_proto(model), full_check=True)
        got = _run(model, feeds)
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return result(seed, mode, "unloadable", msg[:300], zeroed, removed, feats, rejected)
    if len(got) != len(expected):
        return result(seed, mode, "mismatch", f"{len(got)} outputs instead of {len(expected)}", zeroed, removed,
                      feats, rejected)
    diff = max_rel_diff(expected, got)
    scale = max((float(np.max(np.abs(e))) for e in expected if e.size), default=0.0)
    if not diff <= TOLERANCE:
        return result(seed, mode, "mismatch", f"max relative difference {diff:.3g}", zeroed, removed, feats, rejected,
                      diff=diff, scale=scale)
    return result(seed, mode, "exact", "", zeroed, removed, feats, rejected, diff=diff, scale=scale)


def sweep(seeds: Sequence[int], modes: Sequence[str] = MODES, *, max_blocks: int = 5) -> list[CaseResult]:
    """Runs :func:`run_case` for every seed and mode."""
    return [run_case(s, m, max_blocks=max_blocks) for s in seeds for m in modes]


def summarize(results: Sequence[CaseResult]) -> str:
    """A table of outcome counts per mode, then one line per case that is not ``ok``."""
    lines = [f"{'mode':<6} {'cases':>6} " + " ".join(f"{o:>10}" for o in OUTCOMES) + f" {'removed>0':>10}"]
    for mode in MODES:
        rs = [r for r in results if r.mode == mode]
        if not rs:
            continue
        c = Counter(r.outcome for r in rs)
        nontrivial = sum(1 for r in rs if r.outcome == "exact" and r.removed > 0)
        lines.append(f"{mode:<6} {len(rs):>6} " + " ".join(f"{c.get(o, 0):>10}" for o in OUTCOMES)
                     + f" {nontrivial:>10}")
    feats = Counter(f for r in results if r.mode == results[0].mode for f in r.features) if results else Counter()
    if feats:
        lines.append("networks with: " + ", ".join(f"{k}={v}" for k, v in sorted(feats.items())))
    for mode in MODES:
        why = Counter(x for r in results if r.mode == mode for x in r.rejected)
        if why:
            lines.append(f"{mode}: {sum(why.values())} segments/groups kept with a reason; most frequent:")
            lines += [f"  {n:>6} x {w}" for w, n in why.most_common(6)]
    reasons = Counter(r.detail.split(": ", 2)[-1][:90] for r in results if r.outcome == "refused")
    for why, n in reasons.most_common(8):
        lines.append(f"refused x{n}: {why}")
    for r in results:
        if not r.ok:
            lines.append(f"{r.outcome.upper()} seed={r.seed} mode={r.mode} features={','.join(sorted(r.features))}: "
                         f"{r.detail}")
    return "\n".join(lines)


def _run(model, feeds):
    """One thread, no graph optimisation: exact, reproducible numbers for the oracle."""
    return run_model(model, feeds, threads=1, inter_threads=1, optimization="disable")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--count N --seed S [--mode erase|prune]``; exit 1 if any case is not ok."""
    ap = argparse.ArgumentParser(prog="oracle_sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100, help="number of networks (default 100)")
    ap.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--mode", choices=MODES, action="append", help="mode (default: both)")
    ap.add_argument("--max-blocks", type=int, default=5, help="most blocks per network (default 5)")
    args = ap.parse_args(argv)
    if args.count < 1:
        ap.error("--count must be >= 1")
    t0 = time.perf_counter()
    results = sweep(range(args.seed, args.seed + args.count), args.mode or MODES, max_blocks=args.max_blocks)
    print(summarize(results))
    print(f"{len(results)} cases in {time.perf_counter() - t0:.1f} s (seeds {args.seed}..{args.seed + args.count - 1})")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
