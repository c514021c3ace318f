"""Channel surgery: remove the channels of chosen ZIGs from a model.

Slices every initializer entry attached to the removed channel atoms (producer rows, biases,
normalisation entries, consumer columns, running statistics) and rewrites what depends on
channel counts: Conv ``group``, GroupNormalization ``num_groups``, Reshape targets (including
head counts of attention reshapes), Slice bounds, Split sizes and Expand shapes. Shape
sub-graphs feeding rewritten inputs are replaced by constants computed from the static shapes.

Means over a pruned channel axis (RMSNorm's ``ReduceMean(x²)``, ONNX ``RMSNormalization``)
are compensated exactly (:func:`compensate_reductions`): removing k zero positions of n
scales the mean by r = n/(n-k), so ``epsilon`` is multiplied by r and the gain by √r (or,
where no such RMSNorm is recognised, the mean is multiplied back by (n-k)/n).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from otoir.analyses.groups import set_tensor_array, tensor_array
from otoir.analyses.shapes import SENTINEL
from otoir.analyses.zig.handlers.movement import slice_bounds, split_sizes
from otoir.ops.fold import constant_array
from otoir.ops.rules import ChannelMap
from otoir.surgery.common import new_initializer, remove_dead_nodes, remove_dead_upstream

if TYPE_CHECKING:
    from otoir.analyses.zig import ChannelGroups
    from otoir.ops.rules import OpRule

__all__ = ["PruneError", "PruneResult", "prune_channel_groups", "compensate_reductions", "fold_weight_transforms"]


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune_channel_groups` did.

    Attributes:
        groups_removed: Number of groups removed.
        params_removed: Initializer entries removed.
        tensors_sliced: Number of initializers sliced.
        nodes_rewritten: Number of nodes whose attributes or shape inputs changed.
        removed: Labels of the groups removed.
        kept_last: ``{label: tensor}`` of groups asked for but kept so that ``tensor`` keeps
            one channel (a tensor is never emptied).
    """

    groups_removed: int
    params_removed: int
    tensors_sliced: int
    nodes_rewritten: int
    removed: tuple[int, ...] = ()
    kept_last: dict[int, str] = field(default_factory=dict)


class PruneError(ValueError):
    """The pruning cannot be expressed exactly (the analysis should have prevented it)."""


def _mask_along(mask: np.ndarray, k: int) -> np.ndarray:
    other = tuple(i for i in range(mask.ndim) if i != k)
    return np.any(mask, axis=other) if other else mask


def _const_input(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, tag: str) -> None:
    v = new_initializer(graph, f"{node.name or node.op_type}__{tag}", np.asarray(array, dtype=np.int64))
    if index < len(node.inputs):
        node.replace_input_with(index, v)
    else:
        node.resize_inputs(index + 1)
        node.replace_input_with(index, v)


def _shape_target(new_out: list[int], new_in: list[int], allowzero: bool) -> np.ndarray:
    tgt: list[int] = []
    minus = 0
    for i, d in enumerate(new_out):
        if d % SENTINEL == 0 and d > 0:
            if not allowzero and i < len(new_in) and new_in[i] == d:
                tgt.append(0)
            else:
                tgt.append(-1)
                minus += 1
        else:
            tgt.append(int(d))
    if minus > 1:
        raise PruneError("reshape target with several symbolic dimensions")
    return np.array(tgt, dtype=np.int64)


def prune_channel_groups(model: ir.Model, cg: ChannelGroups, labels: Iterable[int]) -> PruneResult:
    """Removes the channels of the groups with the given labels.

    Args:
        model: The model the analysis describes (modified in place).
        cg: The channel-group analysis of ``model``.
        labels: Group labels (``group.meta["label"]``) to remove; must be prunable.

    Returns:
        A :class:`PruneResult`.

    Raises:
        PruneError: A layout cannot be pruned exactly (a bug in the analysis).
    """
    remove = np.array(sorted(set(int(x) for x in labels)), dtype=np.int64)
    if remove.size == 0:
        return PruneResult(0, 0, 0, 0)
    lab = cg.labels
    st = cg.state
    graph = model.graph
    removed_label = np.zeros(lab.size, dtype=bool)
    removed_label[remove] = True

    def keep(ids: np.ndarray) -> np.ndarray:
        return ~removed_label[lab[ids]]

    # Never empty a tensor: keep one group of any channel axis that would lose every channel.
    kept_last: dict[int, str] = {}
    changed = True
    while changed:
        changed = False
        for t in st.tracks.values():
            m = keep(t.ids)
            if m.all():
                continue
            for k in range(m.ndim):
                if not _mask_along(m, k).any():
                    first = int(lab[t.ids.ravel()[0]])
                    removed_label[first] = False
                    kept_last[first] = _track_name(st, t)
                    changed = True
                    break
    remove = np.flatnonzero(removed_label).astype(np.int64)
    if remove.size == 0:
        return PruneResult(0, 0, 0, 0, kept_last=kept_last)

    shapes = st.shapes
    # 1. new static shapes of tracked values
    new_shape: dict[ir.Value, list[int]] = {}
    masks: dict[ir.Value, np.ndarray] = {}
    for v, t in st.tracks.items():
        m = keep(t.ids)
        if m.all():
            continue
        old = shapes.shape(v)
        if old is None:
            raise PruneError(f"no static shape for '{v.name}'")
        s = list(old)
        per_axis = []
        for k, a in enumerate(t.axes):
            mk = _mask_along(m, k)
            per_axis.append(mk)
            s[a] = int(mk.sum())
        prod = per_axis[0]
        for mk in per_axis[1:]:
            prod = np.multiply.outer(prod, mk)
        if not np.array_equal(prod.reshape(m.shape), m):
            raise PruneError(f"pruned channels of '{v.name}' do not form a box")
        new_shape[v] = s
        masks[v] = m

    def axis_mask(v: ir.Value, axis: int) -> np.ndarray | None:
        t = st.tracks.get(v)
        if t is None or axis not in t.axes or v not in masks:
            return None
        return _mask_along(masks[v], t.axes.index(axis))

    def shape_now(v: ir.Value) -> list[int]:
        return list(new_shape.get(v, shapes.shape(v) or ()))

    # 2. slice initializers
    per_tensor: dict[str, dict[int, np.ndarray]] = {}
    via_nodes: set[ir.Node] = set()
    for pu in st.params:
        m = keep(pu.ids)
        if m.all():
            continue
        per_tensor.setdefault(pu.tensor, {})[pu.axis] = m
    for pu in st.params:  # Transpose/Squeeze/Exp... between a sliced initializer and its user
        if pu.tensor in per_tensor:
            via_nodes.update(pu.via)
    params_removed = 0
    for name, axes in per_tensor.items():
        arr = np.asarray(tensor_array(model, name))
        before = arr.size
        for axis, m in axes.items():
            arr = np.compress(m, arr, axis=axis)
        params_removed += before - arr.size
        set_tensor_array(model, name, arr)

    # 3. rewrite attributes and shape inputs (what to rewrite is the node's channel rule)
    rewritten = compensate_reductions(model, st, keep)
    for node in list(graph):
        op = _rewrite_kind(st.vc.info[node].rule if node in st.vc.info else None)
        if node in st.conv_groups and any(o in masks for o in node.outputs[:1]):
            g, ids = st.conv_groups[node]
            kept = keep(ids).reshape(g, -1)
            new_g = int(np.all(kept, axis=1).sum())
            if not np.all(np.any(kept, axis=1) == np.all(kept, axis=1)):
                raise PruneError(f"partial conv group removed in '{node.name}'")
            attr = "num_groups" if op == "group-norm" else "group"
            node.attributes[attr] = ir.AttrInt64(attr, new_g)
            rewritten += 1
            continue
        if node in st.row_norms and node.inputs[0] in masks:
            _slice_row_norm(model, node, keep(st.row_norms[node]))
            rewritten += 1
            continue
        if op == "reshape-target" and (node.outputs[0] in masks or node.inputs[0] in masks):
            out = node.outputs[0]
            allowzero = bool(node.attributes.get("allowzero").value) if node.attributes.get("allowzero") else False
            tgt = _shape_target(shape_now(out), shape_now(node.inputs[0]), allowzero)
            _const_input(graph, node, 1, tgt, "shape")
            rewritten += 1
        elif op == "expand" and node.outputs[0] in masks:
            old_t = shapes.const(node.inputs[1])
            if old_t is None:
                raise PruneError(f"Expand '{node.name}' with a computed shape")
            tgt = np.array(old_t, dtype=np.int64).copy()
            new_out = shape_now(node.outputs[0])
            new_in = shape_now(node.inputs[0])
            off = len(new_out) - len(tgt)
            xoff = len(new_out) - len(new_in)
            for i in range(len(tgt)):
                j = i + off
                if tgt[i] > 0 and tgt[i] % SENTINEL == 0:
                    # a symbolic size folded from a computed shape: only "keep the input's" is exact
                    if j - xoff < 0 or new_in[j - xoff] != new_out[j]:
                        raise PruneError(f"Expand '{node.name}' broadcasts to a symbolic size from a computed shape")
                    tgt[i] = 1
                elif tgt[i] not in (1, -1) and new_out[j] != shapes.shape(node.outputs[0])[j]:
                    tgt[i] = new_out[j]
            _const_input(graph, node, 1, tgt, "shape")
            rewritten += 1
        elif op == "slice" and node.inputs[0] in masks and any(
                axis_mask(node.inputs[0], a) is not None
                for a in (slice_bounds(node, shapes, shapes.shape(node.inputs[0])) or {})):
            # (a Slice on other axes only needs no change: its bounds do not depend on channels)
            x = node.inputs[0]
            xs = shapes.shape(x)
            b = slice_bounds(node, shapes, xs)
            t = st.tracks.get(x)
            axes = sorted(b)
            if any(xs[a] % SENTINEL == 0 and axis_mask(x, a) is None for a in axes):
                raise PruneError(f"Slice '{node.name}' slices a channel axis and a symbolic axis at once")
            starts, ends, steps = [], [], []
            for a in axes:
                s, e, k = b[a]
                m = axis_mask(x, a)
                if m is not None and a in t.axes:
                    ns = int(m[:s].sum())
                    ne = ns + int(m[s:e].sum())
                    s, e = ns, ne
                if k < 0 and e < 0:
                    e = -(1 << 62)
                starts.append(s)
                ends.append(e)
                steps.append(k)
            _const_input(graph, node, 1, np.array(starts), "starts")
            _const_input(graph, node, 2, np.array(ends), "ends")
            _const_input(graph, node, 3, np.array(axes), "axes")
            _const_input(graph, node, 4, np.array(steps), "steps")
            rewritten += 1
        elif op == "split" and node.inputs[0] in masks:
            x = node.inputs[0]
            xs = shapes.shape(x)
            axis = int(node.attributes["axis"].value) if "axis" in node.attributes else 0
            axis %= len(xs)
            sizes = split_sizes(node, shapes, xs)
            m = axis_mask(x, axis)
            if m is not None:
                new_sizes, start = [], 0
                for s in sizes:
                    new_sizes.append(int(m[start:start + s].sum()))
                    start += s
                if "num_outputs" in node.attributes:
                    del node.attributes["num_outputs"]
                if "split" in node.attributes:
                    node.attributes["split"] = ir.AttrInt64s("split", new_sizes)
                else:
                    _const_input(graph, node, 1, np.array(new_sizes), "split")
                rewritten += 1
    # 4. value shapes (stale ones dropped; shape inference recomputes them)
    for v in [*new_shape, *(o for n in via_nodes for o in n.outputs)]:
        if v.shape is not None and not v.is_graph_output():
            v.shape = None
    remove_dead_nodes(model)
    _drop_helper_initializers(model)
    return PruneResult(int(remove.size), int(params_removed), len(per_tensor), rewritten,
                       removed=tuple(int(x) for x in remove), kept_last=kept_last)


def compensate_reductions(model: ir.Model, st, keep) -> int:
    """Makes every mean over a pruned channel axis give the unpruned value; returns nodes rewritten.

    ``st.channel_reductions`` (from the ZIG analysis) holds, per node, the atoms it averages
    over (all exactly zero when removed). With k of n removed the pruned mean is r = n/(n-k)
    times the full one. An RMSNorm ``x / sqrt(mean + eps) * g`` (decomposed:
    ``ReduceMean -> Add eps -> Sqrt -> Div/Reciprocal -> Mul... -> Mul g``, or ONNX
    ``RMSNormalization``) gets ``eps·r`` and ``g·√r``: ``sqrt(r·m + r·eps) = √r·sqrt(m + eps)``.
    Any other mean is multiplied by (n-k)/n by a new ``Mul``. Sums need nothing.

    Args:
        model: The model being pruned (initializers already sliced).
        st: The analysis's :class:`~otoir.analyses.zig.state.ChannelState`.
        keep: ``keep(ids) -> bool array``: which atoms stay.
    """
    graph = model.graph
    done = 0
    for node, (ids, kind) in st.channel_reductions.items():
        n = int(ids.size)
        k = n - int(np.count_nonzero(keep(ids)))
        if k == 0 or kind == "sum" or node.graph is None:
            continue
        if k == n:
            raise PruneError(f"{node.op_type} '{node.name}' would average over no channel")
        r = n / (n - k)
        if kind == "rms-norm":
            eps = node.attributes.get("epsilon")
            node.attributes["epsilon"] = ir.AttrFloat32("epsilon", float(eps.value if eps is not None else 1e-5) * r)
            if len(node.inputs) > 1 and node.inputs[1] is not None:
                _scale_input(model, node, 1, float(np.sqrt(r)))
            done += 1
        elif not _fold_rms(model, node, r):
            out = node.outputs[0]
            c = _constant(graph, node, f"{node.name or node.op_type}__mean_rescale",
                          np.array((n - k) / n, dtype=_np_dtype(out)), after=True)
            mul = ir.node("Mul", inputs=[out, c], name=f"{node.name or node.op_type}__mean_rescale")
            graph.insert_after(c.producer(), mul)
            new = mul.outputs[0]
            new.name = f"{out.name}__rescaled"
            new.type, new.shape = out.type, out.shape
            for user, i in list(out.uses()):
                if user is not mul:
                    user.replace_input_with(i, new)
            if out.is_graph_output():
                raise PruneError(f"mean '{out.name}' over pruned channels is a graph output")
            done += 1
        else:
            done += 1
    return done


def _np_dtype(v: ir.Value):
    dt = v.dtype if v.dtype is not None else ir.DataType.FLOAT
    return dt.numpy()


def _constant(graph: ir.Graph, node: ir.Node, name: str, array: np.ndarray, *, after: bool = False) -> ir.Value:
    """A ``Constant`` node holding ``array``, inserted next to ``node`` (a literal, not a parameter).

    Its output gets ``name`` or, when a value already has it, ``name_1``, ``name_2``...
    """
    taken = {v.name for n in graph for v in n.outputs} | set(graph.initializers) | {v.name for v in graph.inputs}
    base, k = name, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    c = ir.node("Constant", inputs=[], attributes={"value": ir.tensor(array, name=name)}, name=name)
    (graph.insert_after if after else graph.insert_before)(node, c)
    out = c.outputs[0]
    out.name = name
    out.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
    out.shape = ir.Shape(array.shape)
    return out


def fold_weight_transforms(model: ir.Model) -> int:
    """Replaces each Conv weight computed from one initializer of its shape by a constant
    sub-graph (weight standardization, :meth:`~otoir.analyses.zig.state.ChannelState.weight_transform_source`)
    with its value: removing input channels is exact on the transformed weight, not on the raw
    one (the standardization's statistics run over them). The raw initializer takes the value
    where nothing else reads it (so groups keep their ids), else a new initializer does. Returns
    the number of weights folded; the transform's nodes, now unused, are removed.
    """
    from otoir.ops.fold import evaluate_constant, weight_transform

    n = 0
    for node in list(model.graph):
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            continue
        w = node.inputs[1]
        if w is None or w.is_initializer():
            continue
        found = weight_transform(w)
        if found is None:
            continue
        src, nodes = found
        try:
            value = evaluate_constant(nodes, w)
        except Exception:  # noqa: BLE001 - an op the reference evaluator lacks: the weight stays computed
            continue
        if src.shape is None or tuple(value.shape) != tuple(src.shape.dims):
            continue
        inside = {id(x) for x in nodes}
        if (src.is_graph_input() or src.is_graph_output() or any(id(u) not in inside for u, _ in src.uses())
                or value.dtype != src.dtype.numpy()):
            node.replace_input_with(1, new_initializer(model.graph, f"{src.name}.transformed", value))
        else:  # the raw weight serves only this transform: it takes the transformed values (groups keep their ids)
            set_tensor_array(model, src.name, value)
            node.replace_input_with(1, src)
        remove_dead_upstream(model.graph, [w])
        n += 1
    return n


def _slice_row_norm(model: ir.Model, node: ir.Node, kept: np.ndarray) -> None:
    """Keeps the per-row scale and bias of an InstanceNormalization over whole groups' rows
    (``kept``: the kept mask of its ``[G, L]`` row atoms)."""
    rows = np.all(kept, axis=1)
    if not np.array_equal(rows, np.any(kept, axis=1)):
        raise PruneError(f"part of a norm group removed in InstanceNormalization '{node.name}'")
    for i in (1, 2):
        v = node.inputs[i]
        arr = constant_array(v)
        if arr is None or arr.shape != rows.shape:
            raise PruneError(f"InstanceNormalization '{node.name}' input {i} is not a constant of one entry per row")
        new = np.compress(rows, arr)
        if v.is_initializer() and len(v.uses()) == 1 and not v.is_graph_output():
            set_tensor_array(model, v.name, new)
        else:
            node.replace_input_with(i, new_initializer(model.graph, f"{node.name or node.op_type}__{('scale', 'bias')[i - 1]}",
                                                       new))


def _single_user(v: ir.Value) -> tuple[ir.Node, int] | None:
    uses = list(v.uses())
    if len(uses) != 1 or v.is_graph_output():
        return None
    return uses[0][0], uses[0][1]


def _scale_input(model: ir.Model, node: ir.Node, i: int, factor: float) -> None:
    """Multiplies constant input ``i`` of ``node`` by ``factor`` (a private copy when shared)."""
    v = node.inputs[i]
    arr = constant_array(v)
    new = (arr * factor).astype(arr.dtype)
    if v.is_initializer() and len(v.uses()) == 1 and not v.is_graph_output():
        set_tensor_array(model, v.name, new)
    else:
        node.replace_input_with(i, new_initializer(model.graph, f"{node.name or node.op_type}__folded", new))


def _fold_rms(model: ir.Model, node: ir.Node, r: float) -> bool:
    """Folds r into a decomposed RMSNorm after ``node`` (a ReduceMean); False when not recognised.

    ``ReduceMean -> [Add eps] -> Sqrt -> {Div(a, ·) | Reciprocal} -> {Mul by data | Cast}* ->
    Mul by a constant gain``, each value used once; exactly one inversion. Nothing changes
    unless the whole chain is recognised.
    """
    v = node.outputs[0]
    u = _single_user(v)
    eps_at = None
    if u is not None and u[0].op_type == "Add":
        add, i = u
        other = add.inputs[1 - i]
        if constant_array(other) is None:
            return False
        eps_at = (add, 1 - i)
        v = add.outputs[0]
        u = _single_user(v)
    if u is None or u[0].op_type != "Sqrt":
        return False
    v = u[0].outputs[0]
    inversions = 0
    gain = None
    for _ in range(8):
        u = _single_user(v)
        if u is None:
            return False
        user, i = u
        op = user.op_type
        if op == "Reciprocal" or (op == "Div" and i == 1):
            inversions += 1
        elif op == "Cast":
            pass
        elif op == "Mul":
            other = user.inputs[1 - i]
            if constant_array(other) is not None:
                gain = (user, 1 - i)
                break
        else:
            return False
        v = user.outputs[0]
    if gain is None or inversions != 1:
        return False
    if eps_at is not None:
        add, j = eps_at
        eps = constant_array(add.inputs[j])
        add.replace_input_with(j, _constant(model.graph, add, f"{add.name or 'Add'}__eps", (eps * r).astype(eps.dtype)))
    _scale_input(model, gain[0], gain[1], float(np.sqrt(r)))
    return True


def _track_name(st, track) -> str:
    """The name of the value a channel track follows (for messages)."""
    for v, t in st.tracks.items():
        if t is track:
            return getattr(v, "name", None) or "?"
    return "?"


def _rewrite_kind(rule: OpRule | None) -> str | None:
    """Which channel-count rewrite a node's rule calls for (None: no attribute or shape input to change).

    ``group-norm`` (``num_groups``), ``reshape-target`` (input 1 is the target shape),
    ``expand`` (input 1 is the broadcast shape), ``slice`` and ``split`` (ONNX Slice/Split
    bounds and sizes); a grouped convolution's ``group`` is rewritten for any node the analysis
    records in ``conv_groups``.
    """
    if rule is None:
        return None
    return _REWRITES.get((ChannelMap(rule.channel_map), rule.channel_variant))


_REWRITES = {
    (ChannelMap.IDENTITY, "group-norm"): "group-norm",
    (ChannelMap.RESHAPE, "target"): "reshape-target",
    (ChannelMap.BROADCAST, "expand"): "expand",
    (ChannelMap.SLICE, ""): "slice",
    (ChannelMap.SPLIT, ""): "split",
}


def _drop_helper_initializers(model: ir.Model) -> None:
    """Drops the shape constants this surgery created that are no longer used."""
    graph = model.graph
    for name in [n for n, v in graph.initializers.items() if not v.uses() and not v.is_graph_output()
                 and n.endswith(("__shape", "__starts", "__ends", "__axes", "__steps", "__split"))]:
        del graph.initializers[name]
