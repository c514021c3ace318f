"""IR clean-up shared by the surgeries (erasing and channel pruning)."""

from __future__ import annotations

import onnx_ir as ir

__all__ = ["remove_dead_nodes"]


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
