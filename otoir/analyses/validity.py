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

The checker travels explicitly with the groups: a :class:`GroupSet` is a tuple of groups with a
``checker`` attribute (the GeZIG partition's ``groups``; :func:`otoir.optim.groups_for`), and
:func:`select_redundant` / :func:`is_valid` take it from there or from their ``checker``
argument. GeZIGs without a checker are refused (ValueError) rather than judged without one.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from otoir.analyses.groups import Group
from otoir.analyses.segments import INPUT, OUTPUT, SegmentGraph
from otoir.analyses.vertices import VertexClasses
from otoir.ops.rules import DropInput, lookup_rule

__all__ = ["GroupSet", "ValidityChecker", "ValidityReport", "controlled_groups", "is_valid", "select_redundant"]

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
        disappears (those, the regions they end, and zero segments that only feed zero ones).
        """
        state, _ = self._states(zero)
        z = self.segments_of(zero)
        inner = self.interior(z)
        segs = self.segments.segments
        gone = {i for i in range(len(segs)) if state[i] == _ZERO}
        cut = [i for i in self._order if i in gone and i not in inner
               and any(t < 0 or t not in gone for t in segs[i].succs)]
        return cut, gone

    def _states(self, zero: Iterable[Group | str | int]) -> tuple[list[int], list[str]]:
        z = self.segments_of(zero)
        gone = self.interior(z)
        segs = self.segments.segments
        state = [_LIVE] * len(segs)
        reasons: list[str] = []
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
                        reasons.append(f"joint {s.first.name or s.first.op_type} is left without inputs")
                        st = _BROKEN
                elif kind == "sub" and self._minuend.get(i) is not None and state[self._minuend[i]] != _LIVE:
                    reasons.append(f"Sub {s.first.name} loses its minuend")
                    st = _BROKEN
                else:
                    st = _LIVE
            else:
                st = _LIVE if all(x == _LIVE for x in ins) else _BROKEN
                if st != _LIVE:
                    reasons.append(f"{s.first.op_type} joint {s.first.name} loses an input")
            state[i] = st
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
    checker); :meth:`subset` keeps the checker.

    Attributes:
        checker: The :class:`ValidityChecker` of the groups' partition (GeZIGs), or None for
            groups judged on their own (channel ZIGs).
    """

    checker: ValidityChecker | None
    layer_caps: dict[str, int] | None

    def __new__(cls, groups: Iterable[Group] = (), checker: ValidityChecker | None = None,
                layer_caps: Mapping[str, int] | None = None) -> GroupSet:
        self = super().__new__(cls, groups)
        self.checker = checker
        self.layer_caps = dict(layer_caps) if layer_caps else None
        return self

    def subset(self, groups: Iterable[Group]) -> GroupSet:
        """Other groups (e.g. the prunable ones) with the same checker and per-tensor caps."""
        return GroupSet(groups, self.checker, self.layer_caps)

    def selector(self):
        """The H2SPG selector over these groups: ``(scores, k) -> indices`` (:func:`select_redundant`)."""
        groups, checker, caps = tuple(self), self.checker, self.layer_caps

        def select(scores, k: int) -> list[int]:
            return select_redundant(groups, scores, k, checker, layer_caps=caps)

        return select


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
                     layer_caps: Mapping[str, int] | None = None) -> list[int]:
    """H2SPG's hierarchical selection: the K most redundant groups that keep the network valid.

    Groups are visited by decreasing score (ties: list order); a group is accepted only if the
    accepted set plus it stays valid, otherwise the next one is tried. Non-prunable groups are
    skipped. For GeZIGs the test is local (each joint fed keeps a live input), so the walk costs
    ``O(|groups| log |groups| + |E_d|)`` overall (the sort); other groups (channel ZIGs) are
    refused when they would zero every channel group of one tensor (counted incrementally), or
    more of one tensor's channel groups than its cap in ``layer_caps`` (``max-layer-ratio``).

    Args:
        groups: Candidate groups.
        scores: Redundancy score per group (same order), or a mapping id -> score.
        K: Number of groups wanted.
        checker: Validity checker (default: ``groups.checker`` of a :class:`GroupSet`).
        layer_caps: Most channel groups that may be chosen per tensor (first slice's tensor);
            default: ``groups.layer_caps`` of a :class:`GroupSet` (see :func:`controlled_groups`).

    Returns:
        Indices into ``groups`` of the accepted groups, in acceptance order (at most K).

    Raises:
        ValueError: GeZIGs without a checker, or a score list of the wrong length.
    """
    if isinstance(scores, Mapping):
        sc = [float(scores.get(g.id, float("-inf"))) for g in groups]
    else:
        sc = [float(x) for x in scores]
        if len(sc) != len(groups):
            raise ValueError(f"{len(sc)} scores for {len(groups)} groups")
    order = sorted(range(len(groups)), key=lambda i: (-sc[i], i))
    c = _checker_of(groups, checker)
    accepted: list[int] = []
    if K <= 0:
        return accepted
    live: dict[int, int] = {}
    if c is not None:
        for s in c.segments.segments:
            live[s.id] = sum(1 for p in s.preds if p >= 0) + (1 if INPUT in s.preds else 0)
    zero_segs: set[int] = set()
    # Channel groups: groups per tensor (first slice) in the universe, and chosen so far; a
    # tensor may not lose all of them. Counted once, updated per acceptance: O(|groups|).
    zig_total = _groups_per_tensor(groups)
    zig_used: dict[str, int] = {}
    caps = layer_caps if layer_caps is not None else (getattr(groups, "layer_caps", None) or {})
    for i in order:
        if len(accepted) >= K:
            break
        g = groups[i]
        if not g.prunable:
            continue
        exits = None
        if c is not None:
            exits = tuple(g.meta["exits"]) if "exits" in g.meta else (
                (g.meta["segment"],) if "segment" in g.meta else c.group_exits.get(g.id))
        if exits:
            if any(e in zero_segs or not c.can_add(zero_segs, e, live) for e in exits):
                continue
            for e in exits:
                c.apply_zero(e, live, zero_segs)
            accepted.append(i)
        else:
            if g.slices:
                t = g.slices[0].tensor
                if zig_used.get(t, 0) + 1 >= zig_total[t] or zig_used.get(t, 0) + 1 > caps.get(t, 1 << 60):
                    continue
                zig_used[t] = zig_used.get(t, 0) + 1
            accepted.append(i)
    return accepted


def _groups_per_tensor(groups: Iterable[Group]) -> dict[str, int]:
    total: dict[str, int] = {}
    for g in groups:
        if g.slices:
            total[g.slices[0].tensor] = total.get(g.slices[0].tensor, 0) + 1
    return total


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


def controlled_groups(groups: Sequence[Group], model=None, *, ignore: Sequence[str] = (),
                      max_layer_ratio: float = 1.0) -> GroupSet:
    """The groups with the user's controls applied: the one place ``ignore=`` and
    ``max-layer-ratio=`` act (training, ``zero-groups`` and the optimizers all select through
    :func:`select_redundant` over the result).

    Args:
        groups: All groups of one kind (a :class:`GroupSet` keeps its checker).
        model: The model (its node names are matched by ``ignore``; without it only parameter
            names are).
        ignore: ``fnmatch`` globs; a group whose tensors (trainable or dependent) or whose
            nodes using them match one is made non-prunable, with the reason
            ``ignored by ignore=PATTERN``.
        max_layer_ratio: In (0, 1]: at most ``floor(F * n)`` of the ``n`` channel groups of one
            tensor may be chosen (``layer_caps`` of the result; 1 means no cap).

    Raises:
        ValueError: ``max_layer_ratio`` outside (0, 1].
    """
    if not (math.isfinite(max_layer_ratio) and 0.0 < max_layer_ratio <= 1.0):
        raise ValueError(f"max-layer-ratio must be in (0, 1], got {max_layer_ratio!r}")
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
    return GroupSet(out, getattr(groups, "checker", None), caps)
