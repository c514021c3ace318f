"""IR helpers shared by the rewrites (erasing, channel pruning, deployment form)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

__all__ = ["remove_dead_nodes", "remove_dead_upstream", "take_over", "new_initializer"]


def remove_dead_nodes(model: ir.Model) -> int:
    """Removes nodes none of whose outputs is used or a graph output.

    One pass in reverse topological order reaches the fixpoint on a DAG (a node's consumers
    are visited, and removed, before it). Returns the number of nodes removed.
    """
    graph = model.graph
    outputs = set(graph.outputs)
    removed = 0
    for node in reversed(list(graph)):
        if any(o in outputs or o.uses() for o in node.outputs):
            continue
        graph.remove(node, safe=True)
        removed += 1
    return removed


def remove_dead_upstream(graph: ir.Graph, values: list[ir.Value | None]) -> None:
    """Removes the nodes of ``graph`` that computed ``values`` and nothing else still used
    (a rewrite's leftovers, without scanning the whole graph as :func:`remove_dead_nodes` does)."""
    work = [v for v in values if v is not None]
    while work:
        v = work.pop()
        prod = v.producer()
        if prod is None or prod.graph is not graph:
            continue
        if any(o.uses() or o.is_graph_output() for o in prod.outputs):
            continue
        inputs = list(prod.inputs)
        graph.remove(prod, safe=True)
        work.extend(i for i in inputs if i is not None)


def take_over(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    """Makes ``new`` stand for ``old`` everywhere, keeping ``old``'s name (a graph output's name)."""
    name, typ, shape = old.name, old.type, old.shape
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    old.name = None
    new.name = name
    new.type = new.type or typ
    new.shape = new.shape or shape


def new_initializer(graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
    """Registers ``array`` as a new initializer named ``base`` (``base_1``, ``base_2``… when taken)."""
    name, k = base, 0
    while name in graph.initializers:
        k += 1
        name = f"{base}_{k}"
    v = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                 const_value=ir.tensor(array, name=name))
    graph.register_initializer(v)
    return v
