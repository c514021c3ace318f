"""Vertex classification: the role of every node (stem, accessory, joint, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx_ir as ir

from otoir.infra.analysis import Analysis
from otoir.ops.rules import OpRule, ParamSpec, VertexKind, lookup_rule, normalize_domain

if TYPE_CHECKING:
    from otoir.infra.analysis import AnalysisManager

__all__ = ["VertexInfo", "VertexClasses", "PARAMETERS_METADATA_KEY", "node_version", "param_specs"]

#: Model metadata key listing trainable parameter names (comma-separated), written by the
#: torch exporter; when absent, trainable parameters are inferred from the rule table.
PARAMETERS_METADATA_KEY = "otoir.parameters"

_FLOAT_TYPES = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}


@dataclass(frozen=True)
class VertexInfo:
    """Classification of one node.

    Attributes:
        kind: The vertex kind.
        reason: Why (one line).
        rule: The rule used, or None for an unknown op.
    """

    kind: VertexKind
    reason: str
    rule: OpRule | None


def node_version(node: ir.Node, model: ir.Model) -> int | None:
    """The opset version that applies to ``node``."""
    if node.version is not None:
        return node.version
    domain = normalize_domain(node.domain)
    ops = model.opset_imports
    return ops.get(domain, ops.get("ai.onnx") if domain == "" else None)


def param_specs(node: ir.Node, r: OpRule) -> tuple[ParamSpec, ...]:
    """The parameter specs of ``node`` (some depend on attributes, e.g. Gemm's transB)."""
    fn = r.extra.get("params_of")
    return tuple(fn(node)) if fn is not None else r.params


class VertexClasses(Analysis):
    """Classifies every node of the main graph.

    Attributes:
        info: Node -> :class:`VertexInfo`.
        data_values: Values that depend on the values of graph inputs.
        trainable: Trainable parameter name -> initializer value.
        buffers: Non-trainable parameter name -> value (BatchNorm running statistics).
    """

    name = "vertex"

    def __init__(self, model: ir.Model, am: AnalysisManager | None = None) -> None:
        graph = model.graph
        inits = set(graph.initializers.values())
        data: set[ir.Value] = {v for v in graph.inputs if v not in inits}
        info: dict[ir.Node, VertexInfo] = {}
        trainable: dict[str, ir.Value] = {}
        buffers: dict[str, ir.Value] = {}

        def is_data(v: ir.Value | None) -> bool:
            return v is not None and v in data

        for node in graph:
            r = lookup_rule(node.op_type, node.domain, node_version(node, model))
            vi = self._classify(node, r, is_data)
            info[node] = vi
            if r is None:
                produces_data = any(is_data(v) for v in node.inputs)
            elif r.data_inputs == ():
                produces_data = False
            elif vi.kind is VertexKind.CONSTANT:
                produces_data = False
            else:
                produces_data = any(is_data(v) for i, v in enumerate(node.inputs) if i not in r.type_only_inputs)
            if produces_data:
                data.update(v for v in node.outputs)
        for name, v in graph.initializers.items():
            if v.const_value is None or v.const_value.dtype not in _FLOAT_TYPES:
                continue
            role = self._param_role(v, info)
            if role == "buffer":
                buffers[name] = v
            elif role == "trainable":
                trainable[name] = v
        declared = model.metadata_props.get(PARAMETERS_METADATA_KEY)
        if declared is not None:
            names = [n for n in declared.split(",") if n]
            trainable = {n: graph.initializers[n] for n in names if n in graph.initializers}
            for n in trainable:
                buffers.pop(n, None)
        self.info = info
        self.data_values = frozenset(data)
        self.trainable = trainable
        self.buffers = {k: v for k, v in buffers.items() if k not in trainable}

    @staticmethod
    def _param_role(value: ir.Value, info: dict[ir.Node, VertexInfo]) -> str | None:
        """``trainable``, ``buffer`` or None for a float initializer.

        A parameter is trainable when it reaches a data-flow node (directly, or through
        constant nodes such as the Transpose of a Linear weight) at a position that is not a
        buffer (BatchNorm running statistics).
        """
        seen: set[ir.Value] = set()
        stack = [value]
        buffer_only = False
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            for node, index in v.uses():
                vi = info.get(node)
                if vi is None:
                    continue
                if vi.kind is VertexKind.CONSTANT:
                    stack.extend(node.outputs)
                    continue
                spec = None
                if vi.rule is not None:
                    spec = next((p for p in param_specs(node, vi.rule) if p.input == index), None)
                if spec is not None and not spec.trainable:
                    buffer_only = True
                    continue
                return "trainable"
        return "buffer" if buffer_only else None

    @staticmethod
    def _classify(node: ir.Node, r: OpRule | None, is_data) -> VertexInfo:
        skip = r.type_only_inputs if r is not None else ()
        data_in = [v for i, v in enumerate(node.inputs) if is_data(v) and i not in skip]
        if r is None:
            if not data_in:
                return VertexInfo(VertexKind.CONSTANT, "computes from constants only (op has no rule)", None)
            dom = normalize_domain(node.domain) or "ai.onnx"
            return VertexInfo(VertexKind.UNKNOWN, f"no rule for op '{node.op_type}' (domain {dom}); barrier", None)
        if r.data_inputs == ():
            return VertexInfo(r.kind, r.reason, r)
        if not data_in:
            return VertexInfo(VertexKind.CONSTANT, "computes from constants only", r)
        if r.data_inputs is not None and r.classify is None:
            for spec in r.params:
                if spec.input < len(node.inputs) and is_data(node.inputs[spec.input]):
                    return VertexInfo(VertexKind.UNKNOWN, f"parameter input {spec.input} ({spec.role}) is computed from data; barrier", r)
        if r.classify is not None:
            kind, reason = r.classify(node, is_data)
            return VertexInfo(kind, reason or r.reason, r)
        return VertexInfo(r.kind, r.reason, r)

    def kind(self, node: ir.Node) -> VertexKind:
        """The kind of ``node``."""
        return self.info[node].kind

    def reason(self, node: ir.Node) -> str:
        """Why ``node`` has its kind."""
        return self.info[node].reason

    def is_data(self, value: ir.Value | None) -> bool:
        """Whether ``value`` depends on the values of graph inputs."""
        return value is not None and value in self.data_values

    def barriers(self) -> list[ir.Node]:
        """Nodes of unknown kind, in graph order."""
        return [n for n, vi in self.info.items() if vi.kind is VertexKind.UNKNOWN]

    def counts(self) -> dict[VertexKind, int]:
        """Number of nodes of each kind."""
        out = {k: 0 for k in VertexKind}
        for vi in self.info.values():
            out[vi.kind] += 1
        return out

    def annotations(self) -> dict:
        return {n: {"vertex": vi.kind.value, "reason": vi.reason} for n, vi in self.info.items()}
