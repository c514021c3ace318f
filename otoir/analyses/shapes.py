"""Static shapes and constant folding of shape sub-graphs: the one shape analysis of otoir.

Channel tracking needs the static size of every axis and the value of every shape tensor
(Reshape targets, Slice bounds, Split sizes), which torch exports compute with
``Shape -> Gather -> Unsqueeze -> Concat`` sub-graphs. Symbolic dimensions of graph inputs
(the batch) are replaced by :data:`SENTINEL` so every shape is concrete; a dimension that is a
multiple of :data:`SENTINEL` is symbolic in the real model.

:class:`StaticShapes` (obtained with ``ctx.analyses.get(StaticShapes)``) serves every consumer:
channel groups and pruning surgery (:meth:`~StaticShapes.shape`, :meth:`~StaticShapes.const`),
FLOP counts (:meth:`~StaticShapes.sample_shape`) and erase planning
(:attr:`~StaticShapes.value_dims`: symbolic dimensions kept symbolic; when shape inference
leaves a node output unknown, e.g. a ``Resize`` whose scales come from a shape sub-graph, the
model is run once in ONNX Runtime on random inputs and every value gets its concrete shape).
The proto handed to ONNX shape inference carries no weights (:func:`weight_free_proto`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir

from otoir.analyses.vertices import node_version
from otoir.infra.analysis import Analysis
from otoir.ops.rules import lookup_rule

if TYPE_CHECKING:
    from otoir.infra.analysis import AnalysisManager

__all__ = ["SENTINEL", "Dims", "StaticShapes", "infer_static_shapes", "fold_constants"]

#: Dimensions of a value for erase planning: ints, strings for symbolic ones, None if unknown.
Dims = tuple

#: Concrete size substituted for symbolic input dimensions (a prime unlikely to occur).
SENTINEL = 9973

_MAX_FOLD = 1 << 16


def infer_static_shapes(model: ir.Model, max_rounds: int | None = None
                        ) -> tuple[dict[str, tuple[int, ...]], dict[str, np.ndarray]]:
    """Static shapes and folded constants, iterated to a fixed point.

    ONNX shape inference cannot always see through shape sub-graphs (``Div``/``Cast`` of
    ``Shape`` outputs); the values folded by :func:`fold_constants` are fed back as
    initializers until no new shape is found. A chain of such sub-graphs, each computed from
    the shape the one before it fixes (ShuffleNet's 16 channel shuffles, each a Reshape whose
    target comes from the previous block's output shape), resolves one link per round, so the
    rounds go on while they find new shapes (``max_rounds``: at most that many; None: as many
    as there are nodes). With a cap of 4, torchvision's ShuffleNetV2 kept 150 values without a
    shape, and the FLOPs of their convolutions were not counted.

    Returns:
        ``(shapes, consts)``: value name -> static shape; value name -> folded value.
    """
    proto = weight_free_proto(model)
    shapes = _infer(proto, {})
    consts = fold_constants(model, shapes)
    outputs = [o.name for n in model.graph for o in n.outputs if o.name]
    known = sum(1 for o in outputs if o in shapes)
    for _ in range(len(model.graph) if max_rounds is None else max_rounds):
        if known == len(outputs):
            break
        overrides = {k: v for k, v in consts.items() if k not in model.graph.initializers
                     and np.issubdtype(v.dtype, np.integer) and v.size <= 64}
        new = _infer(proto, overrides)
        new_known = sum(1 for o in outputs if o in new)
        if new_known < known:
            break
        new_consts = fold_constants(model, new)
        # progress: more shapes, or more folded values for the next round to feed in
        grew = new_known > known or len(new_consts) > len(consts)
        shapes, consts, known = new, new_consts, new_known
        if not grew:
            break
    return shapes, consts


def _infer(proto: onnx.ModelProto, overrides: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    if overrides:
        p = onnx.ModelProto()
        p.CopyFrom(proto)
        keep = [n for n in p.graph.node if not any(o in overrides for o in n.output)]
        del p.graph.node[:]
        p.graph.node.extend(keep)
        for name, arr in overrides.items():
            p.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(arr), name))
        proto = p
    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    out: dict[str, tuple[int, ...]] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = []
        for d in t.shape.dim:
            if not d.HasField("dim_value"):
                break
            dims.append(int(d.dim_value))
        else:
            out[vi.name] = tuple(dims)
    for i in inferred.graph.initializer:
        out[i.name] = tuple(int(d) for d in i.dims)
    return out


#: Initializers up to this many elements keep their data in the shape-inference proto (they
#: may be shape data: Reshape targets, Slice bounds); larger ones become typed graph inputs.
_SMALL_INIT = 64


def _typed_input(g: onnx.GraphProto, name: str, dtype, dims, symbolic: bool = False) -> None:
    vi = g.input.add()
    vi.name = name
    tt = vi.type.tensor_type
    if dtype is not None:
        tt.elem_type = int(dtype)
    shape = tt.shape
    for d in dims:
        dd = shape.dim.add()
        if isinstance(d, int):
            dd.dim_value = d
        elif symbolic:
            if d is not None and str(d):
                dd.dim_param = str(d)
        else:
            dd.dim_value = SENTINEL  # symbolic: a concrete stand-in (see SENTINEL)


def weight_free_proto(model: ir.Model, *, symbolic: bool = False) -> onnx.ModelProto:
    """A weight-free ModelProto for ONNX shape inference.

    Built directly from the IR (``ir.to_proto`` would copy every weight into protobuf, most of
    the analysis time on large models): large initializers become graph inputs typed with
    their shape, small ones (possible shape data) are serialized; symbolic dimensions of graph
    inputs become :data:`SENTINEL` (``symbolic=True`` keeps them symbolic, to check the model
    as it is rather than infer concrete sizes); graph outputs carry no shape and there is no
    value_info.
    """
    from onnx_ir import serde

    mp = onnx.ModelProto()
    mp.ir_version = model.ir_version
    for domain, version in model.opset_imports.items():
        op = mp.opset_import.add()
        op.domain = domain
        op.version = version
    for fn in model.functions.values():
        serde.serialize_function_into(mp.functions.add(), fn)
    graph = model.graph
    g = mp.graph
    g.name = graph.name or "graph"
    seen = set()
    for v in graph.inputs:
        seen.add(v.name)
        dims = list(v.shape.dims) if v.shape is not None else []
        if v.shape is None:
            serde.serialize_value_into(g.input.add(), v)
        else:
            _typed_input(g, v.name, v.dtype, dims, symbolic)
    for name, v in graph.initializers.items():
        if name in seen:
            continue
        cv = v.const_value
        shape = v.shape if v.shape is not None else (cv.shape if cv is not None else None)
        dtype = v.dtype if v.dtype is not None else (cv.dtype if cv is not None else None)
        dims = list(shape.dims) if shape is not None else None
        concrete = dims is not None and all(isinstance(d, int) for d in dims)
        if cv is not None and (not concrete or int(np.prod(dims)) <= _SMALL_INIT):
            t = g.initializer.add()
            serde.serialize_tensor_into(t, cv)
            t.name = name
        elif dims is not None:
            _typed_input(g, name, dtype, dims, symbolic)
    for node in graph:
        serde.serialize_node_into(g.node.add(), from_=node, model_ir_version=model.ir_version)
    for v in graph.outputs:
        vi = g.output.add()
        vi.name = v.name
        if v.dtype is not None:
            vi.type.tensor_type.elem_type = int(v.dtype)
    return mp


def _probe_shapes(model: ir.Model) -> dict[str, Dims] | None:
    """Concrete shapes of every value from one ONNX Runtime run on random inputs (batch 3).

    Every node output becomes a graph output of a copy of the model. None when ONNX Runtime is
    not installed or cannot run the model (the caller keeps the inferred shapes).
    """
    from otoir import runtime
    from otoir.errors import RuntimeModelError, RuntimeUnavailableError

    try:  # element types of the values (the IR often has none for intermediate values)
        inferred = onnx.shape_inference.infer_shapes(weight_free_proto(model))
    except Exception:  # noqa: BLE001 - onnx raises several types; then there is nothing to probe with
        return None
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    proto = runtime.model_proto(model)
    have = {o.name for o in proto.graph.output}
    for node in model.graph:
        for o in node.outputs:
            elem = int(o.dtype) if o.dtype is not None else types.get(o.name, 0)
            if o.name and o.name not in have and elem:
                vi = proto.graph.output.add()
                vi.name = o.name
                vi.type.tensor_type.elem_type = elem
                have.add(o.name)
    try:
        sess = runtime.session(proto, optimization="disable")
        feeds = runtime.random_feeds(model, 0, batch=3)
        names = [o.name for o in sess.get_outputs()]
        arrays = runtime.run(sess, feeds, names)
    except (RuntimeModelError, RuntimeUnavailableError):
        return None
    out: dict[str, Dims] = {}
    for v in (*model.graph.inputs, *model.graph.initializers.values()):
        if v.name in feeds:
            out[v.name] = tuple(feeds[v.name].shape)
        elif v.const_value is not None:
            out[v.name] = tuple(v.const_value.shape.dims)
    for name, arr in zip(names, arrays, strict=True):
        out[name] = tuple(np.shape(arr))
    return out


def fold_constants(model: ir.Model, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Evaluates shape sub-graphs and small constants with the ``fold`` of each node's rule.

    A node folds when its rule (:func:`~otoir.ops.rules.lookup_rule`, user rules first) has a
    ``fold`` (:data:`otoir.ops.rules.Fold`) and that gives its outputs; inputs larger than
    ``_MAX_FOLD`` elements are not read.

    Args:
        model: The model.
        shapes: Static shapes (from :func:`infer_static_shapes`).

    Returns:
        Value name -> numpy value, for initializers and every foldable node output.
    """
    def shape_of(v: ir.Value | None) -> tuple[int, ...] | None:
        return None if v is None else shapes.get(v.name)

    known: dict[str, np.ndarray] = {}
    for name, v in model.graph.initializers.items():
        if v.const_value is not None and v.const_value.size <= _MAX_FOLD:
            known[name] = v.const_value.numpy()
    for node in model.graph:
        r = lookup_rule(node.op_type, node.domain, node_version(node, model))
        if r is None or r.fold is None:
            continue
        args = [None if v is None else known.get(v.name) for v in node.inputs]
        if any(a is not None and a.size > _MAX_FOLD for a in args):
            continue
        try:
            res = r.fold(node, args, shape_of)
        except Exception:  # noqa: BLE001 - unfoldable: leave unknown
            res = None
        if res is None:
            continue
        for out, value in zip(node.outputs, res):
            known[out.name] = np.asarray(value)
    return known


class StaticShapes(Analysis):
    """Static shapes of all values and folded values of shape sub-graphs.

    Attributes:
        shapes: Value name -> static shape (symbolic dims are :data:`SENTINEL`).
        consts: Value name -> folded value (initializers, Constant nodes, shape sub-graphs).
    """

    name = "shapes"

    def __init__(self, model: ir.Model, am: AnalysisManager | None = None) -> None:
        self.shapes, self.consts = infer_static_shapes(model)
        self._model = model
        self._dims: dict[str, Dims] | None = None

    def shape(self, value: ir.Value | None) -> tuple[int, ...] | None:
        """The static shape of ``value`` (None when unknown)."""
        if value is None:
            return None
        return self.shapes.get(value.name)

    def const(self, value: ir.Value | None) -> np.ndarray | None:
        """The folded value of ``value`` (None when it is not a constant)."""
        if value is None:
            return None
        return self.consts.get(value.name)

    def sample_shape(self, value: ir.Value | None) -> tuple[int, ...] | None:
        """The static shape of ``value`` per sample: symbolic dimensions count as 1 (FLOP counts)."""
        s = self.shape(value)
        if s is None:
            return None
        return tuple(1 if d % SENTINEL == 0 else int(d) for d in s)

    @property
    def value_dims(self) -> dict[str, Dims]:
        """Value name -> dims for erase planning: ints, a string where the dimension is symbolic.

        From shape inference; when it leaves a node output unknown, from one ONNX Runtime run on
        random inputs (symbolic dimensions bound to 3: every shape is then concrete and the
        shapes are mutually consistent). Computed on first use.
        """
        if self._dims is None:
            self._dims = self._value_dims()
        return self._dims

    def _value_dims(self) -> dict[str, Dims]:
        model = self._model
        out: dict[str, Dims] = {}
        for name, dims in self.shapes.items():
            out[name] = tuple(f"s{d // SENTINEL}" if d % SENTINEL == 0 and d else int(d) for d in dims)
        for v in (*model.graph.inputs, *model.graph.outputs):
            if v.name not in out and v.shape is not None:
                out[v.name] = tuple(d if isinstance(d, int) else (str(d) if d is not None else None)
                                    for d in v.shape.dims)
        if any(o.name and o.name not in self.shapes for n in model.graph for o in n.outputs):
            probed = _probe_shapes(model)
            if probed is not None:
                return probed
        return out
