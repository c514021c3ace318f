"""``print-groups``: a table of the zero-invariant groups (ZIGs and GeZIGs), and node metadata.

The pass prints nothing itself (library code never prints): it leaves the table text in
``ctx.results["print-groups"]`` (one text per run; ``PipelineResult.results_of("print-groups")``
has them all), and ``otoir-opt`` writes every such table to stderr after the pipeline ran.
With ``annotate-metadata=true`` it also writes the group ids into each node's
``metadata_props`` (``otoir.groups``, ``otoir.groups-not-prunable``), which ``otoir.save``
keeps and Netron shows in the node's properties.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx_ir as ir

from otoir.analyses.gezig import GeZIGPartition
from otoir.analyses.groups import Group
from otoir.analyses.zig import ChannelGroups
from otoir.infra.analysis import PRESERVE_ALL
from otoir.infra.passes import Pass, option
from otoir.infra.registry import register_pass
from otoir.stats import _fmt as _human

__all__ = ["PrintGroups", "format_groups", "annotate_group_metadata", "GROUPS_KEY", "NOT_PRUNABLE_KEY"]

#: Node metadata key: the ids of the groups whose trainable entries the node's initializers hold.
GROUPS_KEY = "otoir.groups"
#: Node metadata key: ``id (reason)`` of those groups that are not prunable.
NOT_PRUNABLE_KEY = "otoir.groups-not-prunable"

_KINDS = ("all", "zig", "gezig")
_TENSORS_SHOWN = 3  # tensor names listed per row before "(+N more)"
_TENSORS_WIDTH = 60  # characters of the tensors column at most
_ID_WIDTH = 40


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _tensors_cell(tensors: Sequence[str]) -> str:
    """As many whole names as fit the column (at least the first, clipped), then ``(+N more)``."""
    for k in range(len(tensors), 0, -1):
        more = f" (+{len(tensors) - k} more)" if k < len(tensors) else ""
        text = ", ".join(tensors[:k]) + more
        if len(text) <= _TENSORS_WIDTH or k == 1:
            return text if len(text) <= _TENSORS_WIDTH else _clip(tensors[0], _TENSORS_WIDTH - len(more)) + more
    return ""


def _collapse(groups: Sequence[Group]) -> list[Group]:
    """Consecutive channel groups of one tensor set with equal figures -> one row ``id:0-7 (x8)``."""
    from dataclasses import replace

    out: list[Group] = []
    run: list[Group] = []

    def flush() -> None:
        if len(run) > 1:
            ids = _compact_ids([g.id for g in run])
            out.append(replace(run[0], id=f"{','.join(ids)} (x{len(run)})"))
        else:
            out.extend(run)
        run.clear()

    for g in groups:
        head = g.id.rpartition(":")[0]
        if run and (head != run[0].id.rpartition(":")[0] or (g.kind, g.tensors, g.num_params, g.flops, g.prunable, g.reason)
                    != (run[0].kind, run[0].tensors, run[0].num_params, run[0].flops, run[0].prunable, run[0].reason)):
            flush()
        run.append(g)
    flush()
    return out


def format_groups(groups: Sequence[Group], title: str = "groups", *, collapse: bool = False) -> str:
    """An aligned table, one row per group: id, kind, tensors, parameters, FLOPs, prunable.

    Tensor lists show the first few names and how many more there are; long ids are clipped
    with ``...``; parameters and FLOPs are written with k/M/G suffixes.

    Args:
        groups: The groups, in the order to print.
        title: The first word of the heading line.
        collapse: One row for consecutive groups of one tensor set with equal figures (their
            ids as ranges and a count, ``zig:conv1.weight:0-7 (x8)``); the heading still counts
            groups.

    Returns:
        The table, ending in a line break (a heading line only when there are no groups).
    """
    kinds: dict[str, list[int]] = {}
    for g in groups:
        k = kinds.setdefault(g.kind, [0, 0])
        k[0] += 1
        k[1] += int(g.prunable)
    counts = ", ".join(f"{n} {kind} ({p} prunable)" for kind, (n, p) in kinds.items()) or "none"
    head = f"{title}: {counts}"
    if not groups:
        return head + "\n"
    rows = [("id", "kind", "tensors", "params", "FLOPs", "prunable")]
    for g in _collapse(groups) if collapse else groups:
        rows.append((_clip(g.id, _ID_WIDTH), g.kind, _tensors_cell(g.tensors), _human(g.num_params),
                     _human(g.flops), "yes" if g.prunable else f"no: {g.reason or 'no reason given'}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [head]
    for r in rows:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2]),
                 r[3].rjust(widths[3]), r[4].rjust(widths[4]), r[5]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _compact_ids(ids: Sequence[str]) -> list[str]:
    """``zig:w:0, zig:w:1, zig:w:2, zig:w:5`` -> ``zig:w:0-2, zig:w:5`` (order kept)."""
    out: list[str] = []
    runs: dict[str, list[list[int]]] = {}
    order: list[str] = []
    for i in ids:
        head, _, tail = i.rpartition(":")
        if not (head and tail.isdigit()):
            order.append(i)
            continue
        k = int(tail)
        if head not in runs:
            runs[head] = []
            order.append("\0" + head)
        if runs[head] and runs[head][-1][1] == k - 1:
            runs[head][-1][1] = k
        else:
            runs[head].append([k, k])
    for o in order:
        if not o.startswith("\0"):
            out.append(o)
            continue
        head = o[1:]
        out.extend(f"{head}:{a}" if a == b else f"{head}:{a}-{b}" for a, b in runs[head])
    return out


def annotate_group_metadata(model: ir.Model, groups: Sequence[Group]) -> int:
    """Writes each node's groups into its ``metadata_props``.

    A node belongs to a group when one of its initializer inputs holds trainable entries of the
    group. ``otoir.groups`` lists the group ids (consecutive channel ids of one tensor set as a
    range, ``zig:conv1.weight:0-63``); ``otoir.groups-not-prunable`` lists the non-prunable ones
    with their reasons. Earlier values of both keys are replaced.

    Returns:
        The number of nodes that hold at least one group.
    """
    by_tensor: dict[str, list[Group]] = {}
    for g in groups:
        for t in g.tensors:
            by_tensor.setdefault(t, []).append(g)
    n_nodes = 0
    for node in model.graph.all_nodes():
        node.metadata_props.pop(GROUPS_KEY, None)
        node.metadata_props.pop(NOT_PRUNABLE_KEY, None)
        mine = list({g.id: g for v in node.inputs if v is not None and v.is_initializer()
                     for g in by_tensor.get(v.name or "", ())}.values())
        if not mine:
            continue
        n_nodes += 1
        node.metadata_props[GROUPS_KEY] = ",".join(_compact_ids([g.id for g in mine]))
        bad: dict[str, list[str]] = {}
        for g in mine:
            if not g.prunable:
                bad.setdefault(g.reason or "no reason given", []).append(g.id)
        if bad:
            node.metadata_props[NOT_PRUNABLE_KEY] = "; ".join(
                f"{','.join(_compact_ids(ids))} ({reason})" for reason, ids in bad.items())
    return n_nodes


@register_pass
@dataclass(frozen=True)
class PrintGroups(Pass):
    """Tabulates the channel groups (``partition-zig``) and/or GeZIGs (``partition-gezig``).

    One row per group: id, kind, tensors, parameters, FLOPs, and "yes" or "no: <reason>" for
    prunable. The text is left in ``ctx.results["print-groups"]``; ``otoir-opt`` prints it to
    stderr. ``annotate-metadata=true`` also writes the groups into node ``metadata_props``
    (for Netron); otherwise the model is not changed.
    """

    name = "print-groups"
    summary = "Print a table of the groups (id, kind, tensors, parameters, FLOPs, prunable or why not)"
    statistics = {"rows": "groups printed", "nodes-annotated": "nodes given otoir.groups metadata"}
    preserves = PRESERVE_ALL

    kind: str = option("all", "zig (channel groups) | gezig (erasable segments) | all")
    only_prunable: bool = option(False, "print only the prunable groups")
    collapse: bool = option(False, "one row for consecutive channel groups of one tensor set with equal figures")
    annotate_metadata: bool = option(False, "write otoir.groups / otoir.groups-not-prunable into node metadata_props (Netron shows them)")

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown kind='{self.kind}' (zig, gezig or all)")

    def run(self, model, ctx) -> bool:
        groups: list[Group] = []
        if self.kind in ("all", "zig"):
            groups.extend(ctx.analyses.get(ChannelGroups).groups)
        if self.kind in ("all", "gezig"):
            groups.extend(ctx.analyses.get(GeZIGPartition).groups)
        changed = False
        if self.annotate_metadata:
            n = annotate_group_metadata(model, groups)
            ctx.stat("nodes-annotated", n)
            changed = n > 0
        shown = [g for g in groups if g.prunable] if self.only_prunable else groups
        ctx.stat("rows", len(shown))
        ctx.results[self.name] = format_groups(shown, f"print-groups{{{' '.join(f'{k}={v}' for k, v in self.option_text().items())}}}"
                                                if self.option_text() else "print-groups", collapse=self.collapse)
        return changed
