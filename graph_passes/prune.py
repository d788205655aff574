"""Prune: remove the backward ops that no update of a trained weight needs.

The trace derives gradients for every Keras-trainable weight; the signature outputs only the
updates the scheme keeps. After freezing, whatever part of the backward graph feeds no kept
update is dead: weight gradients of frozen layers, and back-propagation below the earliest
trained layer. This pass deletes it and reports how many of the removed ops were gradient
ops (the trace's ``backward`` set), which is the figure sparse training is about.

    prune(graph) -> graph restricted to what ``graph.outputs`` need
"""
from __future__ import annotations

import collections

from graph_passes.dce import live_nodes
from graph_passes.ir import Graph
from graph_passes.pass_base import Pass, PassResult


class Prune(Pass):
    name = "prune"

    def run(self, graph: Graph) -> PassResult:
        dead = set(graph.nodes) - live_nodes(graph)
        dead_gradients = {n: graph.nodes[n].op for n in dead & graph.backward}
        gradient_ops = collections.Counter(dead_gradients.values())
        gradients_before = len(graph.backward)
        graph.remove(dead)
        return PassResult(bool(dead), {
            "ops_removed": len(dead),
            "gradient_ops_before": gradients_before,
            "gradient_ops_removed": sum(gradient_ops.values()),
            "gradient_ops_removed_by_type": dict(gradient_ops.most_common()),
            # names, for per-layer accounting in reports (a list: reports show its length)
            "removed_gradient_nodes": sorted(n for n, op in dead_gradients.items()
                                             if op != "Const"),
        })
