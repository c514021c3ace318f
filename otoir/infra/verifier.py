"""The structural verifier, run after every pass by default.

It checks what every later pass relies on: the graph is in topological order, every node
input is defined before use (graph input, initializer or an earlier node's output), value
names are unique, graph outputs are defined, initializers carry data, every node's domain is
imported, and subgraphs obey the same rules (with access to outer-scope values).

It also checks the attributes the ONNX spec constrains where a bad value would reach
arithmetic (a division by zero, in otoir's analyses or in ONNX Runtime): convolutions and
pools (strides, dilations, kernel_shape > 0, pads >= 0, group > 0 dividing the channels,
ranks consistent with the weight) and DepthToSpace/SpaceToDepth (blocksize > 0). ``otoir-opt``
runs it on the input before any analysis, so such a model is an input error with one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from otoir.infra.diagnostics import Diagnostic, Severity

if TYPE_CHECKING:
    import onnx_ir as ir

__all__ = ["verify_model", "check_node_attributes", "recursive_function"]


def verify_model(model: ir.Model, limit: int = 20, *, structure: bool = True, shapes: bool = False) -> list[Diagnostic]:
    """Returns the errors of ``model`` (empty when it is well-formed).

    Args:
        model: The model to check.
        limit: Stop after this many errors.
        structure: Check the graph structure too; with False only the node attributes
            (cheap, and what must hold before any analysis runs).
        shapes: Also check attributes against the declared shapes of values (e.g. a Conv's
            input channels against its weight and group). For an input model: after a pass
            the declared shapes may be stale until shape inference runs again.
    """
    diags: list[Diagnostic] = []
    if not structure:
        for graph in [model.graph, *model.graph.subgraphs()]:
            for node in graph:
                diags.extend(check_node_attributes(node, shapes=shapes))
        return diags[:limit]
    opsets = dict(model.opset_imports)
    _verify_graph(model.graph, set(), opsets, diags, limit, shapes)
    cycle = recursive_function(model)
    if cycle is not None:
        diags.append(Diagnostic(Severity.ERROR, f"model-local function {' -> '.join(cycle)} calls itself; ONNX functions "
                                "must not be recursive (ONNX Runtime crashes on such a model)"))
    return diags[:limit]


def recursive_function(model: ir.Model) -> list[str] | None:
    """A cycle of model-local functions calling each other (``["d::F", "d::G", "d::F"]``), or None."""
    functions = model.functions
    if not functions:
        return None
    calls = {key: {(n.domain, n.op_type, n.overload) for n in f} & set(functions) for key, f in functions.items()}

    def label(key) -> str:
        return f"{key[0]}::{key[1]}" if key[0] else key[1]

    state: dict = {}
    for start in calls:
        stack = [(start, iter(sorted(calls[start])))]
        path = [start]
        state[start] = 1
        while stack:
            key, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[key] = 2
                stack.pop()
                path.pop()
                continue
            if state.get(nxt) == 1:
                return [label(k) for k in path[path.index(nxt):]] + [label(nxt)]
            if nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, iter(sorted(calls[nxt]))))
    return None


def _verify_graph(graph, outer: set, opsets: dict, diags: list[Diagnostic], limit: int, shapes: bool = False) -> None:
    import onnx_ir as ir

    defined: set = set(outer)
    names: dict[str, object] = {}

    def define(value, where) -> None:
        if value is None:
            return
        defined.add(value)
        if value.name:
            prev = names.get(value.name)
            if prev is not None and prev is not value:
                diags.append(Diagnostic.at(where if isinstance(where, ir.Node) else None, Severity.ERROR,
                                           f"value name '{value.name}' is defined twice"))
            names[value.name] = value

    for v in graph.inputs:
        define(v, None)
    for name, v in graph.initializers.items():
        define(v, None)
        if v.const_value is None:
            diags.append(Diagnostic(Severity.ERROR, f"initializer '{name}' has no data"))
    for node in graph:
        if len(diags) >= limit:
            return
        texts = (node.op_type, node.domain, node.name or "", *(v.name or "" for v in node.outputs if v is not None))
        if not all(isinstance(t, str) for t in texts):  # onnx-ir keeps invalid UTF-8 as bytes
            diags.append(Diagnostic(Severity.ERROR, f"node {node.op_type!r} has a name, op type or domain that is "
                                    "not valid UTF-8 text"))
            continue
        diags.extend(check_node_attributes(node, shapes=shapes))
        domain = "" if node.domain == "ai.onnx" else node.domain
        if domain not in opsets and not (domain == "" and "ai.onnx" in opsets):
            diags.append(Diagnostic.at(node, Severity.ERROR, f"domain '{domain or 'ai.onnx'}' is not imported by the model"))
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if v not in defined:
                producer = v.producer()
                why = "is used before it is defined (graph not in topological order)" if producer is not None and producer.graph is graph else "is not defined"
                diags.append(Diagnostic.at(node, Severity.ERROR, f"input {i} '{v.name}' {why}"))
        for attr in node.attributes.values():
            for g in _subgraphs(attr):
                _verify_graph(g, defined, opsets, diags, limit, shapes)
        for v in node.outputs:
            define(v, node)
    for i, v in enumerate(graph.outputs):
        if v not in defined:
            diags.append(Diagnostic(Severity.ERROR, f"graph output {i} '{v.name}' is not defined"))


def _subgraphs(attr) -> list:
    import onnx_ir as ir

    if attr.type == ir.AttributeType.GRAPH:
        return [attr.value]
    if attr.type == ir.AttributeType.GRAPHS:
        return list(attr.value)
    return []


_CONVS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "ConvTranspose": 1}  # op -> index of the weight
_POOLS = {"MaxPool", "AveragePool", "LpPool", "MaxUnpool"}
_BLOCKS = {"DepthToSpace", "SpaceToDepth"}


def check_node_attributes(node: ir.Node, *, shapes: bool = False) -> list[Diagnostic]:
    """Checks the attributes the ONNX spec constrains for convolutions, pools and block ops.

    Args:
        node: The node.
        shapes: Also use the declared shape of the data input (its rank and channels); the
            weight's shape (an initializer's tensor) is always used.

    Returns:
        One error diagnostic per violated constraint (empty for other ops).
    """
    if node.domain not in ("", "ai.onnx"):
        return []
    op = node.op_type
    if op not in _CONVS and op not in _POOLS and op not in _BLOCKS:
        return []
    out: list[Diagnostic] = []

    def bad(message: str) -> None:
        out.append(Diagnostic.at(node, Severity.ERROR, message))

    def ints(name: str) -> list[int] | None:
        attr = node.attributes.get(name)
        if attr is None:
            return None
        value = attr.value
        if isinstance(value, int):
            return [value]
        try:
            return [int(v) for v in value]
        except (TypeError, ValueError):
            bad(f"attribute '{name}' must be a list of integers")
            return None

    if op in _BLOCKS:
        block = ints("blocksize")
        if block is None:
            bad("attribute 'blocksize' is required")
        elif block[0] <= 0:
            bad(f"attribute 'blocksize' must be positive, got {block[0]}")
        return out

    for name in ("strides", "dilations", "kernel_shape"):
        values = ints(name)
        if values is not None and any(v <= 0 for v in values):
            bad(f"attribute '{name}' must be positive, got {values}")
    for name in ("pads", "output_padding"):
        values = ints(name)
        if values is not None and any(v < 0 for v in values):
            bad(f"attribute '{name}' must not be negative, got {values}")
    if op in _POOLS and ints("kernel_shape") is None:
        bad("attribute 'kernel_shape' is required")
    group = ints("group") if op in _CONVS else None
    if group is not None and group[0] <= 0:
        bad(f"attribute 'group' must be positive, got {group[0]}")
        group = None

    # Ranks and channel counts against the weight's shape, where it is known.
    spatial = None
    weight_shape = None
    if op in _CONVS:
        w = node.inputs[_CONVS[op]] if len(node.inputs) > _CONVS[op] else None
        weight_shape = _static_shape(w, declared=shapes)
        if weight_shape is not None:
            spatial = len(weight_shape) - 2
    if spatial is None and shapes and node.inputs and node.inputs[0] is not None:
        x_shape = node.inputs[0].shape
        if x_shape is not None and len(x_shape) >= 2:
            spatial = len(x_shape) - 2
    if spatial is not None and spatial >= 0:
        for name, factor in (("strides", 1), ("dilations", 1), ("kernel_shape", 1), ("pads", 2), ("output_padding", 1)):
            values = ints(name)
            if values is not None and len(values) != factor * spatial:
                bad(f"attribute '{name}' has {len(values)} values, expected {factor * spatial} "
                    f"for {spatial} spatial dimension{'s' if spatial != 1 else ''}")
    if weight_shape is not None and len(weight_shape) >= 2:
        kernel = ints("kernel_shape")
        if kernel is not None and len(kernel) == len(weight_shape) - 2 and list(kernel) != list(weight_shape[2:]):
            bad(f"attribute 'kernel_shape' {kernel} does not match the weight's shape {list(weight_shape)}")
        g = group[0] if group is not None else 1
        x = node.inputs[0] if node.inputs and shapes else None
        x_shape = x.shape if x is not None else None
        channels = x_shape[1] if x_shape is not None and len(x_shape) >= 2 and isinstance(x_shape[1], int) else None
        if op == "ConvTranspose":
            if weight_shape[0] % g:
                bad(f"group={g} does not divide the {weight_shape[0]} input channels of the weight {list(weight_shape)}")
            elif channels is not None and channels != weight_shape[0]:
                bad(f"input has {channels} channels, the weight {list(weight_shape)} expects {weight_shape[0]}")
        else:
            if weight_shape[0] % g:
                bad(f"group={g} does not divide the {weight_shape[0]} output channels of the weight {list(weight_shape)}")
            elif channels is not None and channels != weight_shape[1] * g:
                bad(f"input has {channels} channels, the weight {list(weight_shape)} with group={g} "
                    f"expects {weight_shape[1] * g}")
    return out


def _static_shape(value, *, declared: bool) -> list[int] | None:
    """The value's shape when every dimension is a known integer (else None): its tensor's,
    or (with ``declared``) its declared shape."""
    if value is None:
        return None
    shape = value.const_value.shape if value.const_value is not None else (value.shape if declared else None)
    if shape is None:
        return None
    dims = []
    for d in shape:
        if not isinstance(d, int):
            return None
        dims.append(d)
    return dims
