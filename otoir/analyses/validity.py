"""Validity of a sub-network and H2SPG's greedy selection of redundant groups (OTOv3 Figure 2).

Given a set of GeZIGs assumed zero, the sub-network is *valid* when

* every graph output is still computed from a graph input (no output loses its producers),
* no joint is left without inputs (all of its inputs erased), and
* no graph output becomes identically zero.

:class:`ValidityChecker` answers this by propagating a state over the segment graph in
topological order (``O(|V_d| + |E_d|)``): a segment is ``live``, ``zero`` (an erased GeZIG) or
``broken`` (it lost an input it cannot do without). :func:`select_redundant` walks groups in
score order and accepts a group only if the set stays valid; for GeZIGs it uses an equivalent
local test (each joint the group feeds keeps a live input), ``O(deg)`` per candidate.

*Collateral.* Zeroing a GeZIG can leave other GeZIGs without any path to a graph output (a
convolution that is the only reader of a Concat: every branch into that Concat then feeds
nothing; :meth:`ValidityChecker.dead`). Erasing removes them too (eliminate-dead-branches), so
:func:`select_redundant` counts them: a candidate is accepted together with its collateral, the
pair counts ``1 + |collateral|`` toward K (a candidate whose collateral would overshoot K, or kill
a non-prunable group, is skipped) and the collateral joins the returned set. The optimizer's
redundant set therefore holds every group that erasing removes, training drives all of them to
zero, and "K groups zeroed" stays exact. A joint on such a dead branch left without inputs (the
Concat) does not make a set invalid.

The checker travels explicitly with the groups: a :class:`GroupSet` is a tuple of groups with a
``checker`` attribute (the GeZIG partition's ``groups``; :func:`otoir.optim.groups_for`), and
:func:`select_redundant` / :func:`is_valid` take it from there or from their ``checker``
argument. GeZIGs without a checker are refused (ValueError) rather than judged without one.

The user's controls travel the same way (:func:`controlled_groups`): ``layer_caps``
(``max-layer-ratio``) and ``round_to`` (``round-to=N``: the kept channel count of every pruned
tensor is a multiple of N, or the full count). Round-to acts in the selection itself: the
per-tensor zero counts it allows are not intervals, so :func:`select_redundant` then chooses the
counts by an exact dynamic programme (:func:`reachable_counts`, :func:`reachable_count`) instead of
the greedy walk, and still returns exactly K groups whenever K is reachable.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from otoir.analyses.groups import Group
from otoir.analyses.segments import INPUT, OUTPUT, SegmentGraph
from otoir.analyses.vertices import VertexClasses
from otoir.ops.rules import DropInput, lookup_rule

__all__ = ["AUTO", "AUTO_TIERS", "ROUND_TO_DEFAULT", "RUNTIME", "GroupSet", "ValidityChecker", "ValidityReport",
           "check_round_to", "controlled_groups", "is_valid", "reachable_count", "reachable_counts", "round_label",
           "round_multiple", "round_to_kept", "select_redundant", "tensor_channels"]

_LIVE, _ZERO, _BROKEN = 0, 1, 2


@dataclass(frozen=True)
class ValidityReport:
    """Outcome of a validity check.

    Attributes:
        valid: Whether the sub-network is valid.
        reasons: Why not (one line each).
    """

    valid: bool
    reasons: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.valid


class ValidityChecker:
    """Checks sets of zero groups against one segment graph.

    A joint segment's behaviour comes from its rule's ``drop_input``: ``SUM`` and ``STACK``
    joints lose zero inputs (the GeZIG analysis only forms groups whose zero output a joint can
    really drop, e.g. a Concat along the channel axis), ``SUBTRAHEND`` joints lose all but the
    first, ``NEVER`` joints need every input.

    A ``SUM`` joint that loses every input is zero itself; when it is in ``droppable`` (its own
    consumers can drop it: the GeZIG analysis's exits) it is erased in turn instead of breaking
    the network (parallel attention + MLP: ``(attn + mlp) + x`` with both zero is ``x``).

    Args:
        segments: The segment graph.
        groups: The GeZIGs (their ``meta["segment"]`` names their segment).
        vc: Vertex classification (for the nodes' rules); the rule table is looked up when None.
        droppable: Segments whose (zero) output every consumer can drop.
    """

    def __init__(self, segments: SegmentGraph, groups: Iterable[Group] = (), vc: VertexClasses | None = None,
                 droppable: Iterable[int] = ()) -> None:
        segs = segments.segments
        self.segments = segments
        groups = [g for g in groups if "segment" in g.meta]
        self.group_segment: dict[str, int] = {g.id: g.meta["segment"] for g in groups}
        # A GeZIG may end several segments (meta "exits": one group over every use of shared
        # parameters) and remove a region of segments with them (meta "region": segments that
        # only feed its exits, nested GeZIGs included); those are gone when it is zero.
        self.group_exits: dict[str, tuple[int, ...]] = {
            g.id: tuple(g.meta.get("exits", (g.meta["segment"],))) for g in groups}
        self._interior: dict[int, frozenset[int]] = {}
        for g in groups:
            exits = self.group_exits[g.id]
            inner = frozenset(g.meta.get("region", ())) - set(exits)
            for e in exits:
                self._interior[e] = inner
        self._order = list(segments.topological_order())
        self._kind: list[str] = []
        for s in segs:
            mode = _drop_mode(s.first, vc)
            if not s.is_joint:
                self._kind.append("chain")
            elif mode in (DropInput.SUM, DropInput.STACK):
                self._kind.append("drop")
            elif mode is DropInput.SUBTRAHEND:
                self._kind.append("sub")
            else:
                self._kind.append("strict")
        droppable = set(droppable)
        self._droppable: frozenset[int] = frozenset(
            s.id for s in segs if s.id in droppable and s.is_joint and _drop_mode(s.first, vc) is DropInput.SUM)
        # Segments that reach no graph output even with nothing zero (dangling branches of the
        # model itself): never counted as a group's collateral.
        self.dead_before: frozenset[int] = frozenset(self.dead(()))
        # Producer segment of Sub's minuend.
        self._minuend: dict[int, int | None] = {}
        for s in segs:
            if self._kind[s.id] == "sub":
                v = s.first.inputs[0]
                p = v.producer() if v is not None else None
                self._minuend[s.id] = segments.segment_of.get(p) if p is not None else None

    def segments_of(self, zero: Iterable[Group | str | int]) -> set[int]:
        """Segment ids of groups (objects, ids, or segment ids)."""
        out: set[int] = set()
        for z in zero:
            if isinstance(z, int):
                out.add(z)
            elif isinstance(z, Group):
                if "segment" in z.meta:
                    out.update(z.meta.get("exits", (z.meta["segment"],)))
                elif z.id in self.group_exits:
                    out.update(self.group_exits[z.id])
            elif z in self.group_exits:
                out.update(self.group_exits[z])
            else:
                raise KeyError(f"unknown group {z!r}")
        return out

    def interior(self, exits: Iterable[int]) -> set[int]:
        """Segments removed with the zero GeZIGs ending at ``exits``, other than those exits."""
        out: set[int] = set()
        for e in exits:
            out.update(self._interior.get(e, ()))
        return out

    def check(self, zero: Iterable[Group | str | int]) -> ValidityReport:
        """Full check of a set of zero groups, ``O(|V_d| + |E_d|)``."""
        _, reasons = self._states(zero)
        return ValidityReport(not reasons, tuple(dict.fromkeys(reasons)))

    def erased(self, zero: Iterable[Group | str | int]) -> tuple[list[int], set[int]]:
        """What erasing the zero groups removes: ``(cut, gone)``.

        ``cut``: zero segments whose outputs the joints they feed drop (zero exits, and ``SUM``
        joints left without inputs), in topological order; ``gone``: every segment that
        disappears (those, the regions they end, zero segments that only feed zero ones, and
        the segments left without a path to a graph output: :meth:`dead`).
        """
        state, _ = self._states(zero)
        z = self.segments_of(zero)
        inner = self.interior(z)
        segs = self.segments.segments
        gone = {i for i in range(len(segs)) if state[i] == _ZERO}
        gone |= self.dead(gone)
        cut = [i for i in self._order if i in gone and i not in inner
               and any(t < 0 or t not in gone for t in segs[i].succs)]
        return cut, gone

    def dead(self, zero_segs: Iterable[int]) -> set[int]:
        """Segments outside ``zero_segs`` whose output no longer reaches a graph output.

        A segment reaches an output when it feeds one directly or feeds a segment that does and
        is not zero; ``O(|V_d| + |E_d|)``. Erasing the zero segments leaves these dead
        (eliminate-dead-branches removes them): the *collateral* of the zero set.
        """
        zero = set(zero_segs)
        segs = self.segments.segments
        alive: set[int] = set()
        for i in reversed(self._order):
            if i not in zero and any(t == OUTPUT or (t >= 0 and t in alive) for t in segs[i].succs):
                alive.add(i)
        return {i for i in range(len(segs)) if i not in zero and i not in alive}

    def _states(self, zero: Iterable[Group | str | int]) -> tuple[list[int], list[str]]:
        z = self.segments_of(zero)
        gone = self.interior(z)
        segs = self.segments.segments
        state = [_LIVE] * len(segs)
        reasons: list[str] = []
        joint_reasons: list[tuple[int, str]] = []  # kept only for joints that still reach an output
        for i in self._order:
            s = segs[i]
            if i in z or i in gone:  # erased (the region's inside only feeds the region)
                state[i] = _ZERO
                continue
            ins = [state[p] for p in s.preds if p >= 0]
            has_input = INPUT in s.preds
            kind = self._kind[i]
            if kind == "chain":
                st = _LIVE if has_input or all(x == _LIVE for x in ins) else _BROKEN
            elif kind == "drop" or kind == "sub":
                if any(x == _BROKEN for x in ins):
                    st = _BROKEN
                elif not has_input and ins and all(x == _ZERO for x in ins):
                    if i in self._droppable:
                        st = _ZERO  # a sum of zeros, dropped by its consumers in turn
                    else:
                        joint_reasons.append((i, f"joint {s.first.name or s.first.op_type} is left without inputs"))
                        st = _BROKEN
                elif kind == "sub" and self._minuend.get(i) is not None and state[self._minuend[i]] != _LIVE:
                    joint_reasons.append((i, f"Sub {s.first.name} loses its minuend"))
                    st = _BROKEN
                else:
                    st = _LIVE
            else:
                st = _LIVE if all(x == _LIVE for x in ins) else _BROKEN
                if st != _LIVE:
                    joint_reasons.append((i, f"{s.first.op_type} joint {s.first.name} loses an input"))
            state[i] = st
        if joint_reasons:  # a joint on a dead branch (its output reaches no graph output) is harmless
            dead = self.dead(j for j in range(len(segs)) if state[j] == _ZERO)
            reasons += [r for j, r in joint_reasons if j not in dead]
        for s in segs:
            if OUTPUT in s.succs and state[s.id] != _LIVE:
                what = "becomes identically zero" if state[s.id] == _ZERO else "is no longer computed from the inputs"
                names = ",".join(o.name for o in s.last.outputs if o.is_graph_output())
                reasons.append(f"graph output {names} {what}")
        return state, reasons

    def can_add(self, current: set[int], segment: int, live_inputs: dict[int, int],
                _pending: dict[int, int] | None = None) -> bool:
        """Local test used by :func:`select_redundant` (``live_inputs``: joint -> live producers).

        A joint left without live inputs is acceptable when it is droppable and its own
        consumers can lose it (checked recursively).
        """
        pending = {} if _pending is None else _pending
        s = self.segments.segments[segment]
        for t in s.succs:
            if t < 0:
                return False
            if self._kind[t] == "chain" or self._kind[t] == "strict":
                return False
            if self._kind[t] == "sub" and self._minuend.get(t) == segment:
                return False
            pending[t] = pending.get(t, 0) + 1
            if live_inputs[t] - pending[t] <= 0:
                if t not in self._droppable or not self.can_add(current, t, live_inputs, pending):
                    return False
        return True

    def apply_zero(self, segment: int, live_inputs: dict[int, int], zero: set[int]) -> None:
        """Records ``segment`` as zero for :meth:`can_add`: its joints lose a live input (a
        droppable joint left without any becomes zero in turn)."""
        zero.add(segment)
        for t in self.segments.segments[segment].succs:
            if t >= 0:
                live_inputs[t] -= 1
                if live_inputs[t] == 0 and t in self._droppable:
                    self.apply_zero(t, live_inputs, zero)


def _drop_mode(node, vc: VertexClasses | None) -> DropInput:
    if vc is not None and node in vc.info:
        r = vc.info[node].rule
    else:
        r = lookup_rule(node.op_type, node.domain, node.version)
    return r.drop_input if r is not None else DropInput.NEVER


class GroupSet(tuple):
    """A tuple of groups that carries the validity checker they are selected with.

    Behaves as a tuple (``list(gs)``, slicing and filtering give plain sequences without a
    checker); :meth:`subset` keeps the checker and the controls.

    Attributes:
        checker: The :class:`ValidityChecker` of the groups' partition (GeZIGs), or None for
            groups judged on their own (channel ZIGs).
        layer_caps: Most channel groups that may be chosen per tensor (``max-layer-ratio``).
        round_to: ``round-to=N``: the kept channel count of every pruned tensor is a multiple of
            N (or the full count); 1: no rounding. Channel groups only.
        channels: Channels of each tensor along its groups' axis (the first slice's tensor), for
            ``round_to``; counted from the groups when absent.
        units: With ``round_to``: per tensor, a unit of its channels — a kept count above one
            unit must be a whole number of units (or the full count). ``round-to=runtime``: the
            runtime's work unit (ONNX Runtime's blocked convolutions hand each thread output
            channels in sets of four blocks, so a partial set takes a thread as long as a whole
            one: :func:`otoir.analyses.latency.runtime_aligned`). None: no units.
        tiers: With ``round_to``: the multiple by tensor width, ``((min channels, multiple),
            ...)`` ascending — a tensor of ``C`` channels rounds to the multiple of the last tier
            it reaches, and not at all below the first (``round-to=auto``: :data:`AUTO_TIERS`);
            None: every tensor rounds to ``round_to``.
        min_channels: The first tier's width (0 without tiers): narrower tensors are not rounded.
    """

    checker: ValidityChecker | None
    layer_caps: dict[str, int] | None
    round_to: int
    channels: dict[str, int] | None
    units: dict[str, int] | None
    tiers: tuple[tuple[int, int], ...] | None

    def __new__(cls, groups: Iterable[Group] = (), checker: ValidityChecker | None = None,
                layer_caps: Mapping[str, int] | None = None, *, round_to: int = 1,
                channels: Mapping[str, int] | None = None, units: Mapping[str, int] | None = None,
                tiers: Iterable[tuple[int, int]] | None = None) -> GroupSet:
        self = super().__new__(cls, groups)
        self.checker = checker
        self.layer_caps = dict(layer_caps) if layer_caps else None
        self.round_to = check_round_to(round_to)
        self.channels = dict(channels) if channels else None
        self.units = {t: int(u) for t, u in (units or {}).items() if int(u) > 1} or None
        self.tiers = tuple(sorted((int(c), int(m)) for c, m in tiers)) if tiers else None
        return self

    @property
    def min_channels(self) -> int:
        return self.tiers[0][0] if self.tiers else 0

    def subset(self, groups: Iterable[Group]) -> GroupSet:
        """Other groups (e.g. the prunable ones) with the same checker and controls."""
        return GroupSet(groups, self.checker, self.layer_caps, round_to=self.round_to, channels=self.channels,
                        units=self.units, tiers=self.tiers)

    def selector(self):
        """The H2SPG selector over these groups: ``(scores, k) -> indices`` (:func:`select_redundant`)."""
        groups = self

        def select(scores, k: int) -> list[int]:
            return select_redundant(groups, scores, k)

        return select


#: ``round-to=runtime``: the runtime's channel multiple, and whole work units (:func:`controlled_groups`).
RUNTIME = "runtime"
#: ``round-to=auto``: ``(min channels, multiple)`` by tensor width — multiples of 16 (the widest x86
#: channel block) for tensors of at least 32 channels, of 8 for 16 to 31, smaller tensors not
#: rounded (:func:`controlled_groups`).
AUTO = "auto"
AUTO_TIERS = ((16, 8), (32, 16))
def _tiers_text(tiers: Sequence[tuple[int, int]]) -> str:
    """``a multiple of 16 (tensors of at least 32 channels; 8 from 16)`` (widest tier first)."""
    (c0, m0), *rest = sorted(tiers, key=lambda t: -t[0])
    return f"a multiple of {m0} (tensors of at least {c0} channels" + "".join(f"; {m} from {c}" for c, m in rest) + ")"


#: The default of ``round-to`` wherever the selection takes it (``train``, ``zero-groups``, ``otoir.compress``).
ROUND_TO_DEFAULT = AUTO

#: Option help of the selection controls that ``train`` (``TrainConfig``) and ``zero-groups`` share.
ROUND_TO_HELP = ("kept channels of every pruned tensor a multiple of N, or all of them (1: no rounding; channel "
                 f"groups; auto: {_tiers_text(AUTO_TIERS)}, smaller ones not rounded; runtime: ONNX Runtime's "
                 "channel block here, and a dense convolution's outputs in whole work units of its threads)")
LATENCY_THREADS_HELP = "ONNX Runtime intra-op threads target-latency is measured with (the deployment's)"
LATENCY_BATCH_HELP = "batch size target-latency is measured at (a fixed batch in the model wins)"


def check_round_to(value, option: str = "round-to", *, runtime: bool = False) -> int | str:
    """``value`` as a round-to count: a positive integer (1 means no rounding), or with
    ``runtime`` the words ``auto`` and ``runtime`` (:data:`AUTO`, :data:`RUNTIME`, resolved by
    :func:`controlled_groups`).

    Raises:
        ValueError: Not an integer (booleans and fractional numbers included), or below 1.
    """
    if runtime and isinstance(value, str) and value.strip().lower() in (AUTO, RUNTIME):
        return value.strip().lower()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
        word = f", '{AUTO}' or '{RUNTIME}'" if runtime else ""
        raise ValueError(f"{option} must be a positive integer{word}, got {value!r}")
    if int(value) < 1:
        raise ValueError(f"{option} must be a positive integer (1: no rounding), got {int(value)}")
    return int(value)


def check_cost_target(target_latency: float, target_flops: float,
                      name: Callable[[str], str] = str) -> tuple[str, float] | None:
    """The cost target that chooses the group count: ``("target-flops" | "target-latency",
    fraction)``, or None when both are 0 (``target-sparsity`` counts groups).

    Args:
        target_latency: Fraction of the full model's latency, in (0, 1); 0: off.
        target_flops: Fraction of the full model's FLOPs, in (0, 1); 0: off.
        name: How an option is named in the messages (e.g. ``lambda o: f"option '{o}'"``).

    Raises:
        ValueError: A fraction outside [0, 1) (NaN included), or both given.
    """
    for option, value in (("target-latency", target_latency), ("target-flops", target_flops)):
        if not (math.isfinite(value) and 0.0 <= value < 1.0):
            raise ValueError(f"{name(option)} must be in (0, 1) (0: off), got {value!r}")
    if target_flops and target_latency:
        raise ValueError(f"give {name('target-flops')} or {name('target-latency')}, not both (each chooses the number "
                         f"of groups)")
    if target_flops:
        return "target-flops", target_flops
    if target_latency:
        return "target-latency", target_latency
    return None


def check_latency_point(threads: int, batch: int, name: Callable[[str], str] = str) -> None:
    """Checks ``latency-threads`` and ``latency-batch`` (where ``target-latency`` is measured).

    Raises:
        ValueError: Either is not a positive integer.
    """
    for option, value in (("latency-threads", threads), ("latency-batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name(option)} must be a positive integer, got {value!r}")


def _checker_of(groups: Iterable[Group], checker: ValidityChecker | None) -> ValidityChecker | None:
    """The explicit checker, else the groups' own (:class:`GroupSet`); GeZIGs need one."""
    if checker is None:
        checker = getattr(groups, "checker", None)
    if checker is None and any("segment" in g.meta for g in groups if isinstance(g, Group)):
        raise ValueError("GeZIG groups need their partition's validity checker: pass checker= (the "
                         "partition's .checker) or the partition's groups (a GroupSet)")
    return checker


def is_valid(zero_groups: Iterable[Group | str], checker: ValidityChecker | None = None) -> bool:
    """Whether the sub-network with ``zero_groups`` erased is valid.

    Args:
        zero_groups: Groups assumed zero (GeZIG objects, or their ids when ``checker`` is given).
        checker: The checker; taken from ``zero_groups`` when it is a :class:`GroupSet`.

    Raises:
        ValueError: GeZIGs without a checker.
    """
    if checker is None:
        checker = getattr(zero_groups, "checker", None)
    zero_groups = list(zero_groups)
    c = _checker_of(zero_groups, checker)
    if c is None:
        return _zig_valid([g for g in zero_groups if isinstance(g, Group)], [])
    return c.check(zero_groups).valid


def select_redundant(groups: Sequence[Group], scores: Sequence[float] | Mapping[str, float], K: int,
                     checker: ValidityChecker | None = None, *,
                     layer_caps: Mapping[str, int] | None = None, round_to: int | None = None) -> list[int]:
    """H2SPG's hierarchical selection: the K most redundant groups that keep the network valid.

    Groups are visited by decreasing score (ties: list order); a group is accepted only if the
    accepted set plus it stays valid, otherwise the next one is tried. Non-prunable groups are
    skipped. A GeZIG that leaves other GeZIGs dead (no path to a graph output: its collateral,
    :meth:`ValidityChecker.dead`) is accepted with them, the collateral following it in the
    result, only when the accepted count plus ``1 + |collateral|`` stays within K and every
    collateral group is prunable; otherwise it is skipped, so the result is exactly what
    erasing removes. For GeZIGs the test is local (each joint fed keeps a live input), so the walk costs
    ``O(|groups| log |groups| + |E_d|)`` overall (the sort); other groups (channel ZIGs) are
    refused when they would zero every channel group of one tensor (counted incrementally), or
    more of one tensor's channel groups than its cap in ``layer_caps`` (``max-layer-ratio``).

    With ``round_to`` N > 1 (channel groups; no checker), a tensor's zero count must leave a
    kept channel count that is a multiple of N (or zero nothing). The greedy walk cannot meet
    such counts exactly, so the counts per tensor are chosen by an exact dynamic programme that
    maximises the total score of the chosen groups (each tensor gives its highest-scored groups)
    under ``sum = K``; when no valid set has exactly K groups, the largest reachable count below K
    is returned (:func:`reachable_count` gives the nearest one, which the optimizers ask for).

    Args:
        groups: Candidate groups.
        scores: Redundancy score per group (same order), or a mapping id -> score.
        K: Number of groups wanted.
        checker: Validity checker (default: ``groups.checker`` of a :class:`GroupSet`).
        layer_caps: Most channel groups that may be chosen per tensor (first slice's tensor);
            default: ``groups.layer_caps`` of a :class:`GroupSet` (see :func:`controlled_groups`).
        round_to: Kept channels per tensor a multiple of this (or all); default:
            ``groups.round_to`` of a :class:`GroupSet`, else 1.

    Returns:
        Indices into ``groups`` of the accepted groups, in acceptance order (at most K; with
        round-to, by decreasing score).

    Raises:
        ValueError: GeZIGs without a checker, or a score list of the wrong length.
    """
    if isinstance(scores, Mapping):
        sc = [float(scores.get(g.id, float("-inf"))) for g in groups]
    else:
        sc = [float(x) for x in scores]
        if len(sc) != len(groups):
            raise ValueError(f"{len(sc)} scores for {len(groups)} groups")
    c = _checker_of(groups, checker)
    caps = layer_caps if layer_caps is not None else (getattr(groups, "layer_caps", None) or {})
    n_round = check_round_to(round_to if round_to is not None else getattr(groups, "round_to", 1))
    if K <= 0:
        return []
    if n_round > 1 and c is None:
        return _select_rounded(groups, sc, K, caps, n_round, getattr(groups, "channels", None))
    order = sorted(range(len(groups)), key=lambda i: (-sc[i], i))
    accepted: list[int] = []
    live: dict[int, int] = {}
    if c is not None:
        for s in c.segments.segments:
            live[s.id] = sum(1 for p in s.preds if p >= 0) + (1 if INPUT in s.preds else 0)
    zero_segs: set[int] = set()
    accepted_set: set[int] = set()
    collateral: set[int] = set()
    gezig_exits: dict[int, tuple[int, ...]] = {}
    if c is not None:
        for j, g in enumerate(groups):
            ex = _exits_of(g, c)
            if ex:
                gezig_exits[j] = ex
    # Channel groups: groups per tensor (first slice) in the universe, and chosen so far; a
    # tensor may not lose all of them. Counted once, updated per acceptance: O(|groups|).
    zig_total = _groups_per_tensor(groups)
    zig_used: dict[str, int] = {}
    for i in order:
        if len(accepted) >= K:
            break
        g = groups[i]
        if not g.prunable:
            continue
        exits = gezig_exits.get(i)
        if exits:
            if i in collateral or any(e in zero_segs or not c.can_add(zero_segs, e, live) for e in exits):
                continue
            trial_live, trial_zero = dict(live), set(zero_segs)
            for e in exits:
                c.apply_zero(e, trial_live, trial_zero)
            # Collateral: the other groups this one leaves dead (no path to a graph output) are
            # removed with it, so they count toward K and join the zero set (the optimizer drives
            # them to zero too). A candidate that would kill a non-prunable group, or overshoot K
            # with its collateral, is skipped.
            dead = c.dead(trial_zero) - c.dead_before
            coll = [j for j, ex in gezig_exits.items()
                    if j != i and j not in collateral and j not in accepted_set
                    and all(e in dead or e in trial_zero for e in ex)
                    and any(e in dead for e in ex)]
            if len(accepted) + 1 + len(coll) > K or any(not groups[j].prunable for j in coll):
                continue
            for j in coll:
                for e in gezig_exits[j]:
                    if e not in trial_zero:
                        c.apply_zero(e, trial_live, trial_zero)
            live, zero_segs = trial_live, trial_zero
            accepted.append(i)
            accepted_set.add(i)
            accepted += coll
            accepted_set.update(coll)
            collateral.update(coll)
        else:
            if g.slices:
                t = g.slices[0].tensor
                if zig_used.get(t, 0) + 1 >= zig_total[t] or zig_used.get(t, 0) + 1 > caps.get(t, 1 << 60):
                    continue
                zig_used[t] = zig_used.get(t, 0) + 1
            accepted.append(i)
    return accepted


def _exits_of(g: Group, c: ValidityChecker) -> tuple[int, ...] | None:
    """The segments a GeZIG ends (None: not a GeZIG of the checker)."""
    if "exits" in g.meta:
        return tuple(g.meta["exits"])
    if "segment" in g.meta:
        return (g.meta["segment"],)
    return c.group_exits.get(g.id)


def _groups_per_tensor(groups: Iterable[Group]) -> dict[str, int]:
    total: dict[str, int] = {}
    for g in groups:
        if g.slices:
            total[g.slices[0].tensor] = total.get(g.slices[0].tensor, 0) + 1
    return total


# -- round-to: per-tensor zero counts chosen exactly ------------------------------------------------
@dataclass
class _Quota:
    """The candidates of one tensor (or the free groups) and the zero counts allowed for it."""

    members: list[int]          # indices into the groups, best first
    allowed: np.ndarray         # sorted allowed zero counts, starting with 0


def _round_plan(groups: Sequence[Group], caps: Mapping[str, int], n_round: int,
                channels: Mapping[str, int] | None, sc: Sequence[float] | None = None,
                units: Mapping[str, int] | None = None,
                tiers: Sequence[tuple[int, int]] | None = None) -> tuple[list[_Quota], dict[str, str]]:
    """The quotas of the prunable groups under round-to, and ``{tensor: why all its groups are kept}``.

    A tensor with ``C`` channels whose groups are ``c`` channels wide may zero ``z`` of its
    prunable groups when ``C - z*c`` is a positive multiple of ``n_round`` (or ``z = 0``), ``z`` at
    most its cap and fewer than all of its groups; with a work unit ``u`` for the tensor
    (``units``), a kept count above ``u`` must also be a multiple of ``u``. With ``tiers``
    (:attr:`GroupSet.tiers`) the multiple depends on ``C``. Groups without slices are free (any count).
    """
    total = _groups_per_tensor(groups)
    by_t: dict[str, list[int]] = {}
    free: list[int] = []
    for i, g in enumerate(groups):
        if not g.prunable:
            continue
        if g.slices:
            by_t.setdefault(g.slices[0].tensor, []).append(i)
        else:
            free.append(i)
    key = (lambda i: (-sc[i], i)) if sc is not None else (lambda i: i)
    quotas: list[_Quota] = []
    kept: dict[str, str] = {}
    for t, members in by_t.items():
        widths = {len(groups[i].slices[0].indices or ()) for i in members}
        if groups[members[0]].slices[0].axis is None or len(widths) != 1:
            kept[t] = f"round-to={n_round}: the groups of '{t}' are not of one width"
            continue
        c = widths.pop()
        C = (channels or {}).get(t)
        if C is None:
            C = sum(len(g.slices[0].indices or ()) for g in groups if g.slices and g.slices[0].tensor == t)
        zmax = min(len(members), caps.get(t, 1 << 60), total[t] - 1)
        z = np.arange(1, max(zmax, 0) + 1, dtype=np.int64)
        keep = C - z * c
        u = (units or {}).get(t, 0)
        n = _tier_multiple(C, tiers) if tiers else n_round
        z = z[(keep > 0) & (keep % n == 0) & ((keep <= u) | (keep % max(u, 1) == 0))]
        if z.size == 0:
            unit = f", nor one of at most {u} or a multiple of {u}" if u > 1 else ""
            kept[t] = (f"round-to={n_round if not tiers else AUTO}: '{t}' keeps all {C} channels (no smaller "
                       f"multiple of {n} is reachable in groups of {c}{unit})")
            continue
        quotas.append(_Quota(sorted(members, key=key), np.r_[0, z]))
    if free:
        quotas.append(_Quota(sorted(free, key=key), np.arange(len(free) + 1, dtype=np.int64)))
    return quotas, kept


def _count_programme(quotas: list[_Quota], sc: np.ndarray | None, K: int, keep_choices: bool):
    """Best total score for every total count 0..K (-inf: unreachable) and the choices per quota."""
    best = np.full(K + 1, -np.inf)
    best[0] = 0.0
    choices: list[np.ndarray] = []
    for q in quotas:
        vals = np.r_[0.0, np.cumsum(sc[q.members])] if sc is not None else None
        new = best.copy()
        arg = np.zeros(K + 1, dtype=np.int16 if q.allowed.size < 32767 else np.int32) if keep_choices else None
        for j in range(1, q.allowed.size):
            z = int(q.allowed[j])
            if z > K:
                break
            cand = best[:K + 1 - z] + (vals[z] if vals is not None else 0.0)
            tail = new[z:]
            better = cand > tail
            tail[better] = cand[better]
            if arg is not None:
                arg[z:][better] = j
        best = new
        if arg is not None:
            choices.append(arg)
    return best, choices


def _finite_scores(sc: Sequence[float]) -> np.ndarray:
    """Scores with ±inf / nan replaced by values beyond every finite sum (same count sets compare right)."""
    a = np.asarray(sc, dtype=np.float64)
    ok = np.isfinite(a)
    lo, hi = (float(a[ok].min()), float(a[ok].max())) if ok.any() else (0.0, 0.0)
    span = (hi - lo + 1.0) * (a.size + 1)
    return np.where(ok, a, np.where(a == np.inf, hi + span, lo - span))


def _select_rounded(groups: Sequence[Group], sc: Sequence[float], K: int, caps: Mapping[str, int],
                    n_round: int, channels: Mapping[str, int] | None) -> list[int]:
    fs = _finite_scores(sc)
    quotas, _ = _round_plan(groups, caps, n_round, channels, fs.tolist(), getattr(groups, "units", None),
                            getattr(groups, "tiers", None))
    K = min(K, sum(int(q.allowed[-1]) for q in quotas))
    best, choices = _count_programme(quotas, fs, K, keep_choices=True)
    k = int(np.flatnonzero(best > -np.inf).max())
    chosen: list[int] = []
    for q, arg in zip(reversed(quotas), reversed(choices), strict=True):
        z = int(q.allowed[arg[k]])
        chosen += q.members[:z]
        k -= z
    return sorted(chosen, key=lambda i: (-fs[i], i))


def reachable_counts(groups: Sequence[Group], checker: ValidityChecker | None = None) -> np.ndarray:
    """``r[k]``: whether a valid set of exactly ``k`` of ``groups`` exists (``k = 0..len(groups)``).

    Under the controls of a :class:`GroupSet` (validity, ``layer_caps``, ``round_to``). Without
    round-to the reachable counts are ``0..most``, ``most`` the larger of two greedy walks (list
    order, and groups by how much their zeroing removes, collateral included, first); with it, a subset sum over the allowed
    per-tensor zero counts.
    """
    c = _checker_of(groups, checker)
    n_round = check_round_to(getattr(groups, "round_to", 1))
    r = np.zeros(len(groups) + 1, dtype=bool)
    if n_round > 1 and c is None:
        quotas, _ = _round_plan(groups, getattr(groups, "layer_caps", None) or {}, n_round,
                                getattr(groups, "channels", None), units=getattr(groups, "units", None),
                                tiers=getattr(groups, "tiers", None))
        best, _ = _count_programme(quotas, None, sum(int(q.allowed[-1]) for q in quotas), keep_choices=False)
        r[:best.size] = best > -np.inf
    else:
        most = len(select_redundant(groups, [0.0] * len(groups), len(groups), c))
        if c is not None:  # groups that take others with them (collateral) first can reach more
            reach = [0.0] * len(groups)
            for j, g in enumerate(groups):
                ex = _exits_of(g, c)
                if ex:
                    z = set(ex) | c.interior(ex)
                    reach[j] = float(len(c.dead(z) - c.dead_before) + len(z))
            if any(reach):
                most = max(most, len(select_redundant(groups, reach, len(groups), c)))
        r[:most + 1] = True
    return r


def reachable_count(groups: Sequence[Group], k: int, checker: ValidityChecker | None = None) -> int:
    """The reachable zero count nearest ``k`` (ties: the smaller, which keeps more).

    ``k`` itself whenever a valid set of exactly ``k`` groups exists; otherwise (round-to allows
    only some counts per tensor, or ``k`` is beyond the most that can be zero) the nearest
    count :func:`reachable_counts` allows.
    """
    r = reachable_counts(groups, checker)
    if 0 <= k < r.size and r[k]:
        return int(k)
    ok = np.flatnonzero(r)
    return int(ok[np.argmin(np.abs(ok - k) * 2 + (ok > k))])


def round_to_kept(groups: Sequence[Group]) -> dict[str, str]:
    """``{tensor: reason}`` of the tensors whose prunable groups round-to keeps entirely.

    Empty without round-to (a :class:`GroupSet` with ``round_to`` > 1 over channel groups).
    """
    n_round = check_round_to(getattr(groups, "round_to", 1))
    if n_round <= 1 or getattr(groups, "checker", None) is not None:
        return {}
    return _round_plan(groups, getattr(groups, "layer_caps", None) or {}, n_round, getattr(groups, "channels", None),
                       units=getattr(groups, "units", None), tiers=getattr(groups, "tiers", None))[1]


def round_label(groups: Sequence[Group]) -> str:
    """The round-to of ``groups`` as the option reads: ``auto``, or the multiple N."""
    if getattr(groups, "min_channels", 0):
        return AUTO
    return str(getattr(groups, "round_to", 1))


def round_multiple(groups: Sequence[Group]) -> str:
    """What round-to asks of a kept count, for messages: ``a multiple of 8``, or with tiers
    ``a multiple of 16 (tensors of at least 32 channels; 8 from 16)``."""
    tiers = getattr(groups, "tiers", None)
    return _tiers_text(tiers) if tiers else f"a multiple of {getattr(groups, 'round_to', 1)}"


def _tier_multiple(channels: int, tiers: Sequence[tuple[int, int]]) -> int:
    """The multiple ``tiers`` give a tensor of ``channels`` channels (1 below the first tier)."""
    n = 1
    for least, multiple in tiers:
        if channels >= least:
            n = multiple
    return n


def _zig_valid(chosen: Sequence[Group], universe: Sequence[Group]) -> bool:
    """Channel groups: refuse zeroing every group that covers one tensor (a stem with no output)."""
    if not universe:
        return True
    total = _groups_per_tensor(universe)
    used: dict[str, int] = {}
    for g in chosen:
        if g.slices:
            t = g.slices[0].tensor
            used[t] = used.get(t, 0) + 1
            if used[t] >= total.get(t, 1 << 30):
                return False
    return True


def tensor_channels(groups: Iterable[Group], model=None) -> dict[str, int]:
    """Channels of each channel group's tensor (its first slice) along the groups' axis.

    The tensor's own size in ``model`` (groups may not cover every channel), else the channels
    its groups cover. GeZIGs (whole segments) and groups without slices have no tensor here.
    """
    channels: dict[str, int] = {}
    axes: dict[str, int | None] = {}
    for g in groups:
        if "segment" in g.meta or not g.slices:
            continue
        s = g.slices[0]
        channels[s.tensor] = channels.get(s.tensor, 0) + len(s.indices or ())
        axes.setdefault(s.tensor, s.axis)
    for t, axis in axes.items():
        v = model.graph.initializers.get(t) if model is not None else None
        shape = v.shape if v is not None else None
        if shape is not None and axis is not None and isinstance(shape[axis], int):
            channels[t] = int(shape[axis])
    return channels


def controlled_groups(groups: Sequence[Group], model=None, *, ignore: Sequence[str] = (),
                      max_layer_ratio: float = 1.0, round_to: int | str = 1) -> GroupSet:
    """The groups with the user's controls applied: the one place ``ignore=``,
    ``max-layer-ratio=`` and ``round-to=`` act (training, ``zero-groups`` and the optimizers all
    select through :func:`select_redundant` over the result).

    Args:
        groups: All groups of one kind (a :class:`GroupSet` keeps its checker).
        model: The model (its node names are matched by ``ignore``; without it only parameter
            names are).
        ignore: ``fnmatch`` globs; a group whose tensors (trainable or dependent) or whose
            nodes using them match one is made non-prunable, with the reason
            ``ignored by ignore=PATTERN``.
        max_layer_ratio: In (0, 1]: at most ``floor(F * n)`` of the ``n`` channel groups of one
            tensor may be chosen (``layer_caps`` of the result; 1 means no cap).
        round_to: N >= 1: the kept channel count of every pruned tensor is a multiple of N
            (or the full count) — whole groups, so attention heads stay whole and round in
            heads (``round_to`` of the result; 1 means no rounding). The tensors' channel
            counts come from ``model`` (else from the groups). ``"runtime"``: N is ONNX
            Runtime's channel block here (:func:`otoir.analyses.latency.channel_multiple`: 16
            with AVX-512, 8 with AVX2), and a dense convolution keeping more output channels
            than one work unit of the runtime keeps whole units (``units`` of the result:
            :func:`otoir.analyses.latency.work_units`), as latency-aware selection does; 8
            without ONNX Runtime or a model. ``"auto"`` (the default of ``train``,
            ``zero-groups`` and :func:`otoir.compress`): multiples of 16 for tensors of at
            least 32 channels, of 8 for tensors of 16 to 31, smaller tensors not rounded
            (``tiers`` of the result: :data:`AUTO_TIERS`) — a fixed rule, the same on every
            machine, that keeps blocked kernels (ONNX Runtime's NCHWc blocks, 16 channels with
            AVX-512 and 8 with AVX2, its depthwise kernels, GPU tensor cores) on their fast
            paths where a layer is wide enough for it to matter, without freezing small layers.
            Multiples of 8 alone left AVX-512's blocks half full: MobileNetV2 pruned to half its
            FLOPs ran at 0.62 of the full time with them, 0.54 with ``auto`` and 0.50 with
            multiples of 16 everywhere (``tools/bench_latency.py``, 1 thread, batch 1, 2026-11-30).

    Raises:
        ValueError: ``max_layer_ratio`` outside (0, 1], ``round_to`` not a positive integer.
    """
    if not (math.isfinite(max_layer_ratio) and 0.0 < max_layer_ratio <= 1.0):
        raise ValueError(f"max-layer-ratio must be in (0, 1], got {max_layer_ratio!r}")
    round_to = check_round_to(round_to, runtime=True)
    runtime = round_to == RUNTIME
    tiers = None
    if runtime:
        from otoir.analyses.latency import channel_multiple

        round_to = channel_multiple() if model is not None else 8
    elif round_to == AUTO:
        round_to, tiers = max(m for _c, m in AUTO_TIERS), AUTO_TIERS
    patterns = tuple(p for p in ignore if p)
    users: dict[str, tuple[str, ...]] = {}
    if patterns and model is not None:
        for name, v in model.graph.initializers.items():
            users[name] = tuple(u.node.name or "" for u in v.uses())
    out: list[Group] = []
    for g in groups:
        if patterns and g.prunable:
            names = [s.tensor for s in (*g.slices, *g.dependent)]
            names += [n for t in list(names) for n in users.get(t, ())]
            hit = next((p for p in patterns if any(fnmatch.fnmatchcase(n, p) for n in names)), None)
            if hit is not None:
                g = dataclasses.replace(g, prunable=False, reason=f"ignored by ignore={hit}")
        out.append(g)
    caps = None
    if max_layer_ratio < 1.0:
        caps = {t: int(math.floor(max_layer_ratio * n + 1e-9)) for t, n in _groups_per_tensor(
            g for g in out if "segment" not in g.meta).items()}
    channels = tensor_channels(out, model) if round_to > 1 else None
    units = None
    if runtime and model is not None and getattr(groups, "checker", None) is None:
        from otoir.analyses.latency import work_units

        units = work_units(model, [g for g in out if "segment" not in g.meta], round_to, channels or {})
    return GroupSet(out, getattr(groups, "checker", None), caps, round_to=round_to, channels=channels, units=units,
                    tiers=tiers)
