"""``normalize-export``: brings an ordinary ONNX export into the form otoir trains and prunes.

An ordinary export (``torch.onnx.export(model.eval(), x, f, do_constant_folding=True)``, the
default way people export) differs from otoir's own training-form export in three ways that
lose groups or make a compressed model disagree with the trained one. The pass fixes them:

1. **Identity feeding initializers.** The exporter keeps one initializer per distinct value and
   feeds the other parameters through ``Identity`` (``conv2.bias = Identity(conv1.bias)``). Each
   such Identity is removed and its consumers read the initializer directly (then step 2 gives
   them their own copy where the sharing is an artefact).
2. **Folded shared initializers.** An initializer used as a *parameter* (an input the rule
   table's :class:`~otoir.ops.rules.ParamSpec` of the consumer names) more than once gets one
   copy per use (a node reading it in two parameter slots, e.g. a BatchNorm's bias and running
   mean both all-zero, counts twice) when the sharing is an artefact of export. The rule: a
   shared parameter is un-shared when it is **not declared** as one trainable parameter
   (declared: listed in the model's ``otoir.parameters`` metadata, which the vertex analysis
   reads, or the target of an alias in ``model.meta["otoir.parameter_aliases"]``, which
   ``otoir.load(module)`` records for tied parameters) **and** it either reached a consumer
   through an ``Identity`` (step 1) or holds one repeated value (all zeros, all ones: the
   tensors constant folding and the exporter's value dedup merge). A shared, non-uniform
   initializer that came in directly is taken as true weight tying and left shared
   (``partition-zig`` handles shared weights).
3. **Eval-form BatchNormalization** (inference ``BatchNormalization``, one output). With
   ``bn-training=true`` (the default) it is restored to the training form otoir's exporter
   writes: ``training_mode=1`` and the running mean/var as two more outputs, so training uses
   batch statistics and updates the running ones. Where that is not possible (opset < 14) a
   warning says the BatchNorm trains as a fixed affine and how to avoid it (export with
   ``model.train()`` or use ``otoir.load(module)``). With ``bn-training=false`` the graph is
   left as is and the same warning is given.

4. **Initializers listed as graph inputs** (``keep_initializers_as_inputs=True``, the form of
   older exporters and of other frameworks' converters). ONNX lets a caller override such an
   input, so its value is not a constant: shape constants (``Reshape`` targets) are unknown
   and ONNX Runtime training refuses the model ("Duplicate definition-site"). Nobody feeds a
   model its weights: the pass removes them from the graph inputs (they stay initializers).

5. **Einsum that is a (batched) matrix product** (``"bghid,bghjd->bghij"`` as torchvision's
   MaxViT writes its attention, ``"btp,pd->btd"``, ``"...pd,...qd->...pq"``: one contracted
   letter, batch letters broadcast as numpy's matmul does, either operand possibly transposed
   in its last two axes) becomes
   ``MatMul`` (with a ``Transpose`` of the last two axes where needed), which the channel
   analysis follows; other equations stay ``Einsum`` (a barrier naming it).

``otoir-erase`` and ``otoir-prune`` run this pass first. It changes no value a node computes
(copies hold the same numbers), except that restored BatchNorms normalise with batch statistics
when run in training form, which is what the original module did in training.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from otoir.infra.passes import Pass, option
from otoir.infra.registry import register_pass
from otoir.surgery.common import take_over

__all__ = ["NormalizeExport"]

_ALIASES_KEY = "otoir.parameter_aliases"  # otoir.frontends.torch_export.ALIASES_KEY (no torch import)
_FIXED_AFFINE_ADVICE = ("export with model.train() (torch.onnx.export(..., training=torch.onnx.TrainingMode.TRAINING)) "
                        "or use otoir.load(module) to train its statistics")


def _default(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def _declared(model: ir.Model) -> set[str]:
    from otoir.analyses.vertices import PARAMETERS_METADATA_KEY

    names = {n for n in (model.metadata_props.get(PARAMETERS_METADATA_KEY) or "").split(",") if n}
    aliases = model.meta.get(_ALIASES_KEY) or {}
    return names | set(aliases.values())


def _uniform(value: ir.Value) -> bool:
    arr = value.const_value.numpy()
    return arr.size <= 1 or bool(np.all(arr == arr.reshape(-1)[0]))


def _fresh_name(graph: ir.Graph, base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


@register_pass
@dataclass(frozen=True)
class NormalizeExport(Pass):
    """See through Identity initializers, un-share folded parameters, restore BN's training form."""

    name = "normalize-export"
    summary = ("Normalise an ordinary export: Identity-fed initializers, per-consumer copies of folded "
               "shared parameters, eval BatchNorm -> training form")
    statistics = {
        "identities-removed": "Identity nodes feeding initializers removed",
        "initializers-unshared": "copies made of shared parameter initializers",
        "batchnorms-restored": "eval-form BatchNormalization restored to training form",
        "initializer-inputs-removed": "initializers removed from the graph inputs",
        "einsums-lowered": "Einsum nodes (batched matrix products) written as MatMul",
    }

    bn_training: bool = option(True, "restore eval-form BatchNormalization to training form "
                                     "(false: leave it and warn that it trains as a fixed affine)")

    def run(self, model, ctx) -> bool:
        graph = model.graph
        as_inputs = [v for v in graph.inputs if v.name in graph.initializers]
        for v in as_inputs:
            graph.inputs.remove(v)
        ctx.stat("initializer-inputs-removed", len(as_inputs))
        if as_inputs:
            ctx.remark(f"{len(as_inputs)} initializer(s) listed as graph inputs are constants now (e.g. "
                       f"'{as_inputs[0].name}')")
        taken = {v.name for v in graph.initializers.values()} | {v.name for v in graph.inputs}
        taken |= {o.name for n in graph for o in n.outputs if o.name}
        via_identity = self._see_through_identity(graph, ctx)
        copies = self._unshare(model, via_identity, taken)
        ctx.stat("identities-removed", len(via_identity))
        ctx.stat("initializers-unshared", copies)
        restored = self._batchnorm(model, ctx, taken)
        ctx.stat("batchnorms-restored", restored)
        lowered = _lower_einsums(graph)
        ctx.stat("einsums-lowered", lowered)
        if lowered:
            ctx.remark(f"{lowered} Einsum node(s) that are batched matrix products written as MatMul")
        return bool(via_identity or copies or restored or as_inputs or lowered)

    @staticmethod
    def _see_through_identity(graph: ir.Graph, ctx) -> set[str]:
        """Removes every Identity whose input is an initializer; returns those initializers' names."""
        inits = graph.initializers
        removed = []
        seen: set[str] = set()
        for node in list(graph):
            if node.op_type != "Identity" or not _default(node) or len(node.inputs) != 1:
                continue
            src, out = node.inputs[0], node.outputs[0]
            if src is None or src.name not in inits or src.const_value is None or out.is_graph_output():
                continue
            out.replace_all_uses_with(src)
            graph.remove(node, safe=True)
            removed.append(src.name)
            seen.add(src.name)
        if removed:
            ctx.remark(f"{len(removed)} Identity node(s) feeding initializers removed")
        return seen

    @staticmethod
    def _unshare(model: ir.Model, via_identity: set[str], taken: set[str]) -> int:
        from otoir.analyses.vertices import node_version, param_specs
        from otoir.ops import lookup_rule

        graph = model.graph
        uses: dict[str, list[tuple[ir.Node, int]]] = defaultdict(list)
        for node in graph:
            r = lookup_rule(node.op_type, node.domain, node_version(node, model))
            if r is None:
                continue
            for spec in param_specs(node, r):
                if spec.input < len(node.inputs):
                    v = node.inputs[spec.input]
                    if v is not None and v.name in graph.initializers and v.const_value is not None:
                        uses[v.name].append((node, spec.input))
        declared = _declared(model)
        copies = 0
        for name, where in uses.items():
            if len(where) < 2 or name in declared:
                continue
            src = graph.initializers[name]
            if name not in via_identity and not _uniform(src):
                continue  # true weight tying: left shared
            arr = src.const_value.numpy()
            for node, idx in where[1:]:  # the first use keeps the original
                base = f"{name}__{node.name or node.op_type}" if node.name else f"{name}__copy"
                new_name = _fresh_name(graph, base.replace("/", "_").strip("_"), taken)
                v = ir.Value(name=new_name, shape=src.shape, type=src.type,
                             const_value=ir.tensor(arr.copy(), name=new_name))
                graph.register_initializer(v)
                node.replace_input_with(idx, v)
                copies += 1
        return copies

    def _batchnorm(self, model: ir.Model, ctx, taken: set[str]) -> int:
        from otoir.analyses.vertices import node_version

        graph = model.graph
        restored = 0
        fixed: list[ir.Node] = []
        for node in list(graph):
            if node.op_type != "BatchNormalization" or not _default(node) or len(node.outputs) != 1:
                continue
            attr = node.attributes.get("training_mode")
            if attr is not None and attr.as_int() != 0:
                continue
            version = node_version(node, model) or 0
            mean_var = node.inputs[3:5]
            if (not self.bn_training or version < 14 or len(mean_var) != 2
                    or any(v is None or v.name not in graph.initializers for v in mean_var)):
                fixed.append(node)
                continue
            node.attributes["training_mode"] = ir.AttrInt64("training_mode", 1)
            node.resize_outputs(3)
            for out, stat, src in zip(node.outputs[1:], ("running_mean", "running_var"), mean_var):
                out.name = _fresh_name(graph, f"{node.name or src.name}_{stat}".replace("/", "_").strip("_"), taken)
                out.shape, out.type = src.shape, src.type
            restored += 1
        if fixed:
            why = "bn-training=false" if not self.bn_training else "its form cannot be restored (opset < 14 or " \
                "running statistics that are not initializers)"
            ctx.warning(f"{len(fixed)} eval-form BatchNormalization node(s) ({why}) train as a fixed affine "
                        f"(running statistics, not batch statistics); to avoid it, {_FIXED_AFFINE_ADVICE}",
                        fixed[0])
        if restored:
            ctx.remark(f"{restored} eval-form BatchNormalization node(s) restored to training form")
        return restored


def _matmul_form(equation: str) -> tuple[bool, bool] | None:
    """``(transpose_a, transpose_b)`` when a two-operand einsum ``equation`` is a (batched) matrix
    product ``[..., m, k] @ [..., k, n] -> [..., m, n]``, each operand possibly transposed in its
    last two axes; the batch letters of the operand with fewer is a suffix of the other's (numpy
    matmul broadcasting: ``"btp,pd->btd"``), the output has the longer, and a ``...`` prefix, when
    present, is on all three. Else None."""
    eq = equation.replace(" ", "")
    if "->" not in eq:
        return None
    lhs, out = eq.split("->")
    ops = lhs.split(",")
    if len(ops) != 2:
        return None
    a, b = ops
    if all(x.startswith("...") for x in (a, b, out)):
        a, b, out = a[3:], b[3:], out[3:]
    if "." in a + b + out or min(len(a), len(b), len(out)) < 2:
        return None
    if any(len(set(x)) != len(x) for x in (a, b, out)):
        return None
    ba, bb, bo = a[:-2], b[:-2], out[:-2]
    longer, shorter = (ba, bb) if len(ba) >= len(bb) else (bb, ba)
    if bo != longer or not longer.endswith(shorter):
        return None
    m, n = out[-2], out[-1]
    ks = set(a[-2:]) & set(b[-2:])
    if len(ks) != 1:
        return None
    k = ks.pop()
    if k in out or set(a[-2:]) != {m, k} or set(b[-2:]) != {k, n} or m == n or {m, n, k} & set(longer):
        return None
    return a[-2:] == k + m, b[-2:] == n + k


def _lower_einsums(graph: ir.Graph) -> int:
    """Rewrites each Einsum of :func:`_matmul_form` as MatMul (and Transposes); returns how many."""
    done = 0
    for node in list(graph):
        if node.op_type != "Einsum" or not _default(node) or len(node.inputs) != 2 or None in node.inputs:
            continue
        eq = node.attributes.get("equation")
        form = _matmul_form(eq.value) if eq is not None else None
        if form is None:
            continue
        terms = eq.value.replace(" ", "").split("->")[0].split(",")
        ranks = [len(term) if "." not in term else len(x.shape) if x.shape is not None else None
                 for x, term in zip(node.inputs, terms, strict=True)]
        if any(t and r is None for t, r in zip(form, ranks, strict=True)):
            continue  # an ellipsis operand of unknown rank to transpose: left as Einsum
        operands = []
        for x, t, rank in zip(node.inputs, form, ranks, strict=True):
            if t:
                perm = [*range(rank - 2), rank - 1, rank - 2]
                tr = ir.node("Transpose", inputs=[x], attributes={"perm": perm}, name=f"{node.name}_T")
                graph.insert_before(node, tr)
                x = tr.outputs[0]
            operands.append(x)
        mm = ir.node("MatMul", inputs=operands, name=node.name)
        graph.insert_before(node, mm)
        take_over(graph, node.outputs[0], mm.outputs[0])
        graph.remove(node, safe=True)
        done += 1
    return done
