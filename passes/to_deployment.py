"""``to-deployment``: the form a deployed network has, checked by onnx.checker and ONNX Runtime.

The pass starts with ``to-inference`` (run here when the model is still in training form, so
``to-deployment`` alone turns a training export into a deployable model), then:

1. **BatchNormalization folding.** An inference ``BatchNormalization`` whose input is made by a
   ``Conv``, a ``ConvTranspose`` (``group=1``), a ``Gemm`` or a rank-2 ``MatMul`` with a constant
   weight, and read by nothing else, is folded into that node: with
   ``s = scale / sqrt(var + epsilon)`` the weight's output channels are multiplied by ``s`` and
   the bias becomes ``(bias - mean) * s + B`` (a ``MatMul`` gets an ``Add`` of that bias in place
   of the BatchNormalization). New weights are new initializers, so a weight shared with another
   node is never changed under it.
2. **Identity and Dropout removal** (``identity-elimination``; graph output names are kept).
3. **Shape sub-graphs made constant.** Every node of the main graph whose outputs
   :class:`~otoir.analyses.shapes.StaticShapes` folds to a constant (``Shape -> Gather ->
   Unsqueeze -> Concat`` chains over static shapes, arithmetic on small initializers) is
   replaced by initializers, but only when the folded value is the same whatever the symbolic
   input dimensions are: the folding is repeated with the symbolic dimensions bound to another
   size, and a value that changes (it depends on the batch) stays computed.
4. ``cse``, ``remove-unused-nodes`` (dead nodes and initializers), ``topological-sort``.
5. A warning for each random op left (``RandomNormalLike``...: a sampling layer; dropout and
   drop-path masks are gone with ``to-inference``): the deployment form's outputs are random.
6. **The check.** ``onnx.checker`` (full check) and an ONNX Runtime session run once on random
   inputs (:func:`otoir.infra.loadcheck.find_problem`); a failure fails the pass.

Outputs are unchanged up to floating-point rounding of the folded weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from otoir.infra.passes import Pass, option
from otoir.infra.registry import register_pass
from otoir.ops.rules import attr
from otoir.surgery.common import new_initializer, take_over

__all__ = ["ToDeployment", "fold_batchnorms", "fold_static_values"]

_DEFAULT = ("", "ai.onnx")

#: A size symbolic dimensions are bound to in the second folding (the first uses SENTINEL).
_ALT_SIZE = 17


def _const(v: ir.Value | None) -> np.ndarray | None:
    """The value of a constant initializer (not one a caller may override as a graph input)."""
    if v is None or v.const_value is None or v.is_graph_input():
        return None
    return v.const_value.numpy()


def _bn_factors(bn: ir.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """``(s, t)`` with ``BN(x) = s * x + t`` per channel, or None when not constant / not inference."""
    if bn.op_type != "BatchNormalization" or bn.domain not in _DEFAULT or len(bn.outputs) != 1:
        return None
    if int(attr(bn, "training_mode", 0)) != 0 or len(bn.inputs) != 5:
        return None
    vals = [_const(v) for v in bn.inputs[1:]]
    if any(v is None or v.ndim != 1 for v in vals):
        return None
    scale, bias, mean, var = (v.astype(np.float64) for v in vals)
    s = scale / np.sqrt(var + float(attr(bn, "epsilon", 1e-5)))
    return s, bias - mean * s


def _fold_one(graph: ir.Graph, bn: ir.Node, shapes: dict[str, tuple[int, ...]]) -> bool:
    x = bn.inputs[0]
    if x is None or x.is_graph_output() or len(x.uses()) != 1:
        return False
    prod = x.producer()
    if prod is None or prod.domain not in _DEFAULT or prod.graph is not graph or len(prod.outputs) != 1:
        return False
    factors = _bn_factors(bn)
    if factors is None:
        return False
    s, t = factors
    m = len(s)
    op = prod.op_type
    w = _const(prod.inputs[1]) if len(prod.inputs) > 1 else None
    if w is None or not np.issubdtype(w.dtype, np.floating):
        return False
    dt = w.dtype
    bias_in = 2
    if op == "Conv":
        if w.ndim < 3 or w.shape[0] != m:
            return False
        w2 = w * s.reshape((m,) + (1,) * (w.ndim - 1))
    elif op == "ConvTranspose":
        if w.ndim < 3 or int(attr(prod, "group", 1)) != 1 or w.shape[1] != m:
            return False
        w2 = w * s.reshape((1, m) + (1,) * (w.ndim - 2))
    elif op == "Gemm":
        trans_b = int(attr(prod, "transB", 0))
        if w.ndim != 2 or w.shape[0 if trans_b else 1] != m:
            return False
        w2 = w * (s[:, None] if trans_b else s[None, :])
    elif op == "MatMul":
        rank = len(x.shape) if x.shape is not None else len(shapes.get(x.name, ()))
        if w.ndim != 2 or w.shape[1] != m or rank != 2:
            return False  # BN normalises axis 1: the weight's axis only for a rank-2 product
        w2 = w * s[None, :]
        bias_in = -1
    else:
        return False
    if bias_in > 0:
        b_val = prod.inputs[bias_in] if len(prod.inputs) > bias_in else None
        if b_val is None:
            b = np.zeros(m, np.float64)
        else:
            b = _const(b_val)
            if b is None:
                return False
            if op == "Gemm":
                if b.size not in (1, m) or (b.ndim == 2 and b.shape[0] != 1) or b.ndim > 2:
                    return False  # a per-row bias cannot take a per-channel shift
                b = np.broadcast_to(b.reshape(-1), (m,)) * float(attr(prod, "beta", 1.0))
            elif b.shape != (m,):
                return False
        b2 = (b.astype(np.float64) * s + t).astype(dt)
    base = prod.name or op
    new_w = new_initializer(graph, f"{base}.folded_weight", np.ascontiguousarray(w2.astype(dt)))
    prod.replace_input_with(1, new_w)
    y = bn.outputs[0]
    if bias_in > 0:
        new_b = new_initializer(graph, f"{base}.folded_bias", b2)
        if len(prod.inputs) > bias_in:
            prod.replace_input_with(bias_in, new_b)
        else:
            prod.resize_inputs(bias_in + 1)
            prod.replace_input_with(bias_in, new_b)
        if op == "Gemm":
            prod.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
        take_over(graph, y, x)
        graph.remove(bn, safe=True)
    else:  # MatMul: the BN becomes an Add of the folded bias
        new_b = new_initializer(graph, f"{base}.folded_bias", (t.astype(dt)))
        add = ir.node("Add", [x, new_b], name=(bn.name or "bn") + ".bias", outputs=[ir.Value(name=(y.name or "") + ".add")])
        graph.insert_after(bn, add)
        take_over(graph, y, add.outputs[0])
        graph.remove(bn, safe=True)
    return True


def fold_batchnorms(model: ir.Model, shapes: dict[str, tuple[int, ...]] | None = None) -> int:
    """Folds inference BatchNormalizations into their producing Conv/ConvTranspose/Gemm/MatMul.

    Args:
        model: The model (changed in place).
        shapes: Static shapes by value name (a MatMul is folded only where its output has
            rank 2, read from the value's shape or from here).

    Returns:
        The number of BatchNormalizations folded.
    """
    n = 0
    for graph in [model.graph, *model.graph.subgraphs()]:
        for node in list(graph):
            if node.op_type == "BatchNormalization" and node.domain in _DEFAULT and _fold_one(graph, node, shapes or {}):
                n += 1
    return n


def _consts_rebound(model: ir.Model, size: int) -> dict[str, np.ndarray]:
    """Folded values of ``model`` with its symbolic input dimensions bound to ``size``.

    The input shapes are changed for the analysis only and restored (no copy of the weights).
    """
    from otoir.analyses.shapes import infer_static_shapes

    saved = [(v, v.shape) for v in model.graph.inputs]
    try:
        for v, shape in saved:
            if shape is not None and not all(isinstance(d, int) for d in shape.dims):
                v.shape = ir.Shape([d if isinstance(d, int) else size for d in shape.dims])
        return infer_static_shapes(model)[1]
    finally:
        for v, shape in saved:
            v.shape = shape


def fold_static_values(model: ir.Model, consts: dict[str, np.ndarray] | None = None) -> int:
    """Replaces main-graph nodes whose outputs are batch-independent constants by initializers.

    Args:
        model: The model (changed in place).
        consts: Its folded values (``infer_static_shapes(model)[1]``; computed when None).

    Returns:
        The number of nodes replaced (they are left dead; remove-unused-nodes removes them).
    """
    from otoir.analyses.shapes import infer_static_shapes

    if consts is None:
        consts = infer_static_shapes(model)[1]
    symbolic = any(v.shape is not None and not all(isinstance(d, int) for d in v.shape.dims) for v in model.graph.inputs)
    alt = _consts_rebound(model, _ALT_SIZE) if symbolic else consts
    graph = model.graph
    n = 0
    for node in list(graph):
        if node.op_type == "Constant" or not node.outputs or any(
                a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            continue
        outs = node.outputs
        if any(o.is_graph_output() or o.name not in consts for o in outs):
            continue
        vals = []
        for o in outs:
            a, b = np.asarray(consts[o.name]), alt.get(o.name)
            if b is None or np.asarray(b).shape != a.shape or not np.array_equal(a, np.asarray(b)):
                break  # depends on the symbolic dimensions (or unknown there)
            if o.dtype is not None:
                try:
                    a = a.astype(o.dtype.numpy())
                except Exception:  # noqa: BLE001 - a type numpy cannot hold: leave computed
                    break
            if o.shape is not None and all(isinstance(d, int) for d in o.shape.dims) and tuple(o.shape.dims) != a.shape:
                break
            vals.append(a)
        else:
            for o, a in zip(outs, vals, strict=True):
                init = new_initializer(graph, f"{o.name or 'folded'}.folded", np.asarray(a, order="C"))  # keeps a 0-d value 0-d
                o.replace_all_uses_with(init)
            n += 1
    return n


@register_pass
@dataclass(frozen=True)
class ToDeployment(Pass):
    """Inference form, BatchNorm folded, Identity/Dropout gone, static shape sub-graphs constant, checked."""

    name = "to-deployment"
    summary = ("Deployment form: to-inference, fold BatchNorm into Conv/Gemm/MatMul, drop Identity/Dropout, "
               "fold static shape sub-graphs; checked by onnx.checker and ONNX Runtime")
    statistics = {
        "bn-folded": "BatchNormalizations folded into the preceding node",
        "identities-removed": "Identity/Dropout nodes removed",
        "values-folded": "nodes replaced by initializers (constant shape sub-graphs)",
        "nodes-removed": "nodes removed in all",
    }
    check: bool = option(True, "check the result with onnx.checker (full) and an ONNX Runtime session")

    def run(self, model, ctx) -> bool:
        import onnx_ir.passes.common as common

        from otoir.analyses.shapes import infer_static_shapes
        from otoir.errors import LoadCheckError
        from otoir.infra.loadcheck import find_problem
        from otoir.passes.ir_common import _eliminate_identities
        from otoir.train.inference import InferenceFormError, is_inference_form, random_ops, to_inference

        before = sum(1 for _ in model.graph.all_nodes())
        changed = False
        if not is_inference_form(model):
            try:
                to_inference(model, copy=False)
            except InferenceFormError as exc:
                ctx.error(str(exc))
                return False
            changed = True
        ids = sum(1 for n in model.graph.all_nodes() if n.op_type == "Identity" and n.domain in _DEFAULT)
        for graph in [model.graph, *model.graph.subgraphs()]:
            changed |= _eliminate_identities(graph)
        ids -= sum(1 for n in model.graph.all_nodes() if n.op_type == "Identity" and n.domain in _DEFAULT)
        shapes, consts = infer_static_shapes(model)
        values = fold_static_values(model, consts)  # first: a folded Transpose(w) is a weight BN folds into
        folded = fold_batchnorms(model, shapes)
        for p in (common.CommonSubexpressionEliminationPass(), common.RemoveUnusedNodesPass(),
                  common.TopologicalSortPass()):
            changed |= bool(p(model).modified)
        after = sum(1 for _ in model.graph.all_nodes())
        ctx.stat("bn-folded", folded)
        ctx.stat("identities-removed", ids)
        ctx.stat("values-folded", values)
        ctx.stat("nodes-removed", before - after)
        for node in random_ops(model):
            ctx.warning(f"{node.op_type} '{node.name}' draws random values: the deployment form's outputs are random "
                        "(not a dropout or drop-path mask, which to-inference removes)", node)
        if self.check:
            problem: LoadCheckError | None = find_problem(model, subject="the deployment form")
            if problem is not None:
                ctx.error(" ".join(str(problem).split()))
        return changed or bool(folded or values)
