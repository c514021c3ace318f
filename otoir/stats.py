"""Parameter and FLOP accounting (``otoir.stats(model)``, ``otoir-opt --report``).

FLOPs are counted per forward pass per sample (symbolic dimensions count as 1), with multiply
and add counted separately (FLOPs = 2 x multiply-accumulates). The per-op formulas are the rule
table's (``OpRule.flops``, see :mod:`otoir.ops.table`): Conv ``2·Cout·Cin/g·k·Hout·Wout``,
ConvTranspose ``2·Cin·Cout/g·k·Hin·Win``, Gemm/MatMul ``2·M·K·N``, normalisations 5 per element
(BatchNorm 4), pooling one per input element, element-wise ops one per output element. Shapes
come from the :class:`~otoir.analyses.shapes.StaticShapes` analysis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx_ir as ir

    from otoir.analyses.groups import Group
    from otoir.infra.analysis import AnalysisManager

__all__ = ["Stats", "stats", "format_report"]

@dataclass(frozen=True)
class Stats:
    """Parameters and FLOPs of a model.

    Attributes:
        params: Elements of all initializers.
        flops: Forward FLOPs per sample (see the module docstring).
        per_op: Op type -> (parameters, FLOPs).
        per_node: Node name -> (parameters, FLOPs).
        uncounted: Nodes with a FLOP formula whose output shape is unknown (counted as 0, so
            ``flops`` is a lower bound when this is not empty).
    """

    params: int
    flops: int
    per_op: dict[str, tuple[int, int]] = field(default_factory=dict)
    per_node: dict[str, tuple[int, int]] = field(default_factory=dict)
    uncounted: tuple[str, ...] = ()


def stats(model: ir.Model, analyses: AnalysisManager | None = None) -> Stats:
    """Counts parameters and FLOPs of ``model``.

    Args:
        model: The model.
        analyses: An analysis manager of ``model`` to take the static shapes from (a fresh one
            when None).
    """
    from otoir.analyses.shapes import StaticShapes
    from otoir.infra.analysis import AnalysisManager
    from otoir.ops.rules import lookup_rule, node_flops

    shp = (analyses or AnalysisManager(model)).get(StaticShapes).sample_shape

    graph = model.graph
    params = sum(int(v.const_value.size) for v in graph.initializers.values() if v.const_value is not None)
    per_op: dict[str, list[int]] = {}
    per_node: dict[str, tuple[int, int]] = {}
    total = 0
    uncounted: list[str] = []
    for node in graph:
        p = sum(int(v.const_value.size) for v in node.inputs
                if v is not None and v.is_initializer() and v.const_value is not None)
        f = node_flops(node, shp)
        total += f
        acc = per_op.setdefault(node.op_type, [0, 0])
        acc[0] += p
        acc[1] += f
        key = node.name or f"{node.op_type}#{len(per_node)}"
        per_node[key] = (p, f)
        if not f and node.outputs and shp(node.outputs[0]) is None:
            r = lookup_rule(node.op_type, node.domain, node.version)
            if r is not None and r.flops is not None:
                uncounted.append(key)
    return Stats(params, total, {k: (v[0], v[1]) for k, v in per_op.items()}, per_node, tuple(uncounted))


def _fmt(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}"


def format_report(before: Stats, after: Stats, groups: Sequence[Group] | None = None) -> str:
    """A plain-text table of parameters and FLOPs before and after, per op type and total.

    Args:
        before: Statistics of the original model.
        after: Statistics of the transformed model.
        groups: Optionally the groups removed; adds one line per group (params, FLOPs).
    """
    lines = [f"{'op':<24}{'params before':>15}{'params after':>15}{'FLOPs before':>15}{'FLOPs after':>15}"]
    ops = sorted(set(before.per_op) | set(after.per_op))
    for op in ops:
        pb, fb = before.per_op.get(op, (0, 0))
        pa, fa = after.per_op.get(op, (0, 0))
        if pb == pa == fb == fa == 0:
            continue
        lines.append(f"{op:<24}{_fmt(pb):>15}{_fmt(pa):>15}{_fmt(fb):>15}{_fmt(fa):>15}")

    def pct(a: int, b: int) -> str:
        return f"{100.0 * (1 - a / b):.1f}%" if b else "-"

    lines.append(f"{'total':<24}{_fmt(before.params):>15}{_fmt(after.params):>15}{_fmt(before.flops):>15}"
                 f"{_fmt(after.flops):>15}")
    lines.append(f"removed: {pct(after.params, before.params)} of parameters, {pct(after.flops, before.flops)} of FLOPs")
    if groups:
        lines.append(f"groups ({len(groups)}):")
        for g in groups:
            lines.append(f"  {g.id:<48}{_fmt(g.num_params):>10} params{_fmt(g.flops):>10} FLOPs")
    return "\n".join(lines)
