"""Dead-code elimination: delete every node no signature output depends on.

Signature inputs and weight parameters stay even when unread, so the graph's interface never
changes under this pass. Liveness follows data and control edges.
"""
from __future__ import annotations

from graph_passes.ir import Graph, parse_ref
from graph_passes.pass_base import Pass, PassResult


def live_nodes(graph: Graph) -> set[str]:
    """Names of the nodes the signature outputs need, plus the inputs and parameters."""
    roots = [parse_ref(r)[0] for r in graph.outputs.values()]
    roots += [parse_ref(r)[0] for r in list(graph.inputs.values()) + list(graph.params.values())]
    live, stack = set(), roots
    while stack:
        name = stack.pop()
        if name in live:
            continue
        live.add(name)
        stack.extend(parse_ref(ref)[0] for ref in graph.nodes[name].input)
    return live


def eliminate_dead(graph: Graph) -> set[str]:
    """Deletes dead nodes; returns their names."""
    dead = set(graph.nodes) - live_nodes(graph)
    graph.remove(dead)
    return dead


class DeadCodeElimination(Pass):
    name = "dce"

    def run(self, graph: Graph) -> PassResult:
        dead = eliminate_dead(graph)
        return PassResult(bool(dead), {"ops_removed": len(dead)})
