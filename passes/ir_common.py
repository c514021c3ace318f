"""The onnx-ir common passes under kebab-case names, plus ``cleanup``."""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir.passes.common as common

from otoir.infra.passes import Pass, option
from otoir.infra.registry import register_pass

__all__ = [
    "CommonSubexpressionElimination",
    "RemoveUnusedNodes",
    "TopologicalSort",
    "ShapeInference",
    "Check",
    "IdentityElimination",
    "DeduplicateInitializers",
    "LiftConstantsToInitializers",
    "Inline",
    "NameFix",
    "RemoveUnusedFunctions",
    "RemoveUnusedOpsets",
    "Cleanup",
]


def _apply(ir_pass, model) -> bool:
    result = ir_pass(model)
    if result.model is not model:  # functional pass: copy the result back
        raise RuntimeError(f"{type(ir_pass).__name__} returned a new model; only in-place passes are wrapped")
    return bool(result.modified)


@register_pass
@dataclass(frozen=True)
class CommonSubexpressionElimination(Pass):
    """onnx-ir CommonSubexpressionEliminationPass."""

    name = "cse"
    summary = "Merge identical nodes with identical inputs (onnx-ir)"
    size_limit: int = option(10, "do not compare constant tensors larger than this")

    def run(self, model, ctx) -> bool:
        return _apply(common.CommonSubexpressionEliminationPass(size_limit=self.size_limit), model)


@register_pass
@dataclass(frozen=True)
class RemoveUnusedNodes(Pass):
    """onnx-ir RemoveUnusedNodesPass."""

    name = "remove-unused-nodes"
    summary = "Remove nodes and initializers that do not contribute to a graph output (onnx-ir)"

    def run(self, model, ctx) -> bool:
        return _apply(common.RemoveUnusedNodesPass(), model)


@register_pass
@dataclass(frozen=True)
class TopologicalSort(Pass):
    """onnx-ir TopologicalSortPass."""

    name = "topological-sort"
    summary = "Sort nodes topologically (onnx-ir)"

    def run(self, model, ctx) -> bool:
        before = [id(n) for n in model.graph]
        _apply(common.TopologicalSortPass(), model)
        return before != [id(n) for n in model.graph]


@register_pass
@dataclass(frozen=True)
class ShapeInference(Pass):
    """onnx-ir ShapeInferencePass (ONNX shape inference)."""

    name = "shape-inference"
    summary = "Infer value shapes and types with ONNX shape inference (onnx-ir)"
    strict: bool = option(True, "fail on inference errors (false: leave the model unchanged instead)")
    data_prop: bool = option(True, "propagate constant shape data")

    def run(self, model, ctx) -> bool:
        if self.strict:  # onnx-ir's pass logs a failure and leaves the model as it is
            import onnx

            from otoir.analyses.shapes import weight_free_proto

            try:
                onnx.shape_inference.infer_shapes(weight_free_proto(model, symbolic=True), check_type=True,
                                                  strict_mode=True, data_prop=self.data_prop)
            except Exception as exc:  # InferenceError and friends
                ctx.error("shape inference failed: " + (" ".join(str(exc).split()) or type(exc).__name__))
                return False
        return _apply(common.ShapeInferencePass(strict_mode=self.strict, data_prop=self.data_prop), model)


@register_pass
@dataclass(frozen=True)
class Check(Pass):
    """onnx-ir CheckerPass (onnx.checker)."""

    name = "check"
    summary = "Run onnx.checker on the model (fails the pipeline on an invalid model)"
    full: bool = option(False, "full check, including shape inference")

    def run(self, model, ctx) -> bool:
        try:
            common.CheckerPass(full_check=self.full)(model)
        except Exception as exc:  # onnx.checker.ValidationError and friends
            cause = exc.__cause__ or exc
            ctx.error(" ".join(str(cause).split()) or type(cause).__name__)
        return False


@register_pass
@dataclass(frozen=True)
class IdentityElimination(Pass):
    """Removes ``Identity`` nodes, keeping every graph output's name.

    A graph output made by an Identity is renamed onto the Identity's input when that input is
    made by a node of the same graph and is not itself an output (the node then makes the
    output directly); otherwise the Identity stays, so two outputs that are copies of one value
    keep both their names. (onnx-ir's own pass renamed both onto one value and lost an output.)
    """

    name = "identity-elimination"
    summary = "Remove Identity nodes (graph output names are kept)"

    def run(self, model, ctx) -> bool:
        changed = False
        for graph in [model.graph, *model.graph.subgraphs()]:
            changed |= _eliminate_identities(graph)
        return changed


def _eliminate_identities(graph) -> bool:
    changed = False
    for node in list(graph):
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 1:
            continue
        x, y = node.inputs[0], node.outputs[0]
        if x is None:
            continue
        if not y.is_graph_output():
            y.replace_all_uses_with(x)
            graph.remove(node, safe=True)
            changed = True
            continue
        producer = x.producer()
        if producer is None or producer.graph is not graph or x.is_graph_output() or x.is_graph_input():
            continue  # the Identity is what gives this output its own name
        name = y.name
        y.replace_all_uses_with(x, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        x.name = name
        if x.type is None:  # the output keeps its declared type and shape
            x.type = y.type
        if x.shape is None:
            x.shape = y.shape
        changed = True
    return changed


@register_pass
@dataclass(frozen=True)
class DeduplicateInitializers(Pass):
    """onnx-ir DeduplicateInitializersPass."""

    name = "deduplicate-initializers"
    summary = "Merge initializers with identical contents (onnx-ir)"
    size_limit: int = option(1024, "skip initializers with more elements")

    def run(self, model, ctx) -> bool:
        return _apply(common.DeduplicateInitializersPass(size_limit=self.size_limit), model)


@register_pass
@dataclass(frozen=True)
class LiftConstantsToInitializers(Pass):
    """onnx-ir LiftConstantsToInitializersPass."""

    name = "lift-constants-to-initializers"
    summary = "Turn Constant nodes into initializers (onnx-ir)"
    all: bool = option(False, "lift every constant, whatever its size")
    size_limit: int = option(16, "lift constants with at least this many elements")

    def run(self, model, ctx) -> bool:
        return _apply(common.LiftConstantsToInitializersPass(lift_all_constants=self.all, size_limit=self.size_limit), model)


@register_pass
@dataclass(frozen=True)
class Inline(Pass):
    """onnx-ir InlinePass."""

    name = "inline"
    summary = "Inline model-local functions (onnx-ir)"

    def run(self, model, ctx) -> bool:
        return _apply(common.InlinePass(), model)


@register_pass
@dataclass(frozen=True)
class NameFix(Pass):
    """onnx-ir NameFixPass."""

    name = "name-fix"
    summary = "Give every node and value a unique name (onnx-ir)"

    def run(self, model, ctx) -> bool:
        return _apply(common.NameFixPass(), model)


@register_pass
@dataclass(frozen=True)
class RemoveUnusedFunctions(Pass):
    """onnx-ir RemoveUnusedFunctionsPass."""

    name = "remove-unused-functions"
    summary = "Remove functions no node calls (onnx-ir)"

    def run(self, model, ctx) -> bool:
        return _apply(common.RemoveUnusedFunctionsPass(), model)


@register_pass
@dataclass(frozen=True)
class RemoveUnusedOpsets(Pass):
    """onnx-ir RemoveUnusedOpsetsPass."""

    name = "remove-unused-opsets"
    summary = "Remove opset imports no node uses (onnx-ir)"

    def run(self, model, ctx) -> bool:
        return _apply(common.RemoveUnusedOpsetsPass(), model)


@register_pass
@dataclass(frozen=True)
class Cleanup(Pass):
    """The standard clean-up after surgery: cse, remove-unused-nodes, topological-sort."""

    name = "cleanup"
    summary = "cse, remove-unused-nodes and topological-sort in one pass"

    def run(self, model, ctx) -> bool:
        changed = _apply(common.CommonSubexpressionEliminationPass(), model)
        changed |= _apply(common.RemoveUnusedNodesPass(), model)
        before = [id(n) for n in model.graph]
        _apply(common.TopologicalSortPass(), model)
        return changed or before != [id(n) for n in model.graph]
