"""Lower: rewrite every op that has a lowering rule into ops TFLite has as builtins.

The rules live in :mod:`graph_passes.lowering` (one op type -> one rule), applied in one
sweep in graph order by the rule driver (:mod:`graph_passes.rewrite`). A node whose rule
declines it (its ``check`` returns a reason) is an error naming the node, the op and the
reason; a node the rule says needs no lowering (``applies`` is False: the converter has a
builtin for that configuration) and nodes of other op types are left alone. The replaced node's
outputs are redirected to the replacement and the node is deleted; dead producers are left to the
DCE pass.
"""
from __future__ import annotations

import collections

import tensorflow as tf

from graph_passes.ir import Graph
from graph_passes.lowering import RULES
from graph_passes.lowering.base import LoweringRule
from graph_passes.pass_base import Pass, PassResult
from graph_passes.rewrite import Declined, RuleTable, apply_rule


class LoweringError(ValueError):
    """A node has a lowering rule that declined it; the message says which and why."""

    def __init__(self, node: tf.compat.v1.NodeDef, reason: str):
        super().__init__(f"cannot lower {node.op} (node {node.name!r}): {reason}")
        self.node_name = node.name
        self.op_type = node.op


def lower_node(graph: Graph, node: tf.compat.v1.NodeDef, rule: LoweringRule) -> list[str]:
    """Replaces ``node`` by ``rule``'s rewrite; returns the replacement's output tensors."""
    reason = rule.check(graph, node)
    if reason is not None:
        raise LoweringError(node, reason)
    return rule.rewrite(graph, node)


class Lower(Pass):
    name = "lower"

    def __init__(self, rules: dict[str, LoweringRule] | None = None):
        self.rules = RULES if rules is None else rules
        self.table = RuleTable("lower", self.rules, anchors=lambda g, ops: g.nodes_of(ops),
                               key=lambda g, node: node.op)

    def run(self, graph: Graph) -> PassResult:
        try:
            outcome = apply_rule(graph, self.table, strict=True)
        except Declined as declined:
            raise LoweringError(declined.match.match, declined.reason) from None
        lowered = collections.Counter(m.match.op for m, _ in outcome.fired)
        left = collections.Counter(node.op for node in outcome.skipped)
        stats = {"lowered": dict(sorted(lowered.items()))}
        if left:
            stats["left_to_converter"] = dict(sorted(left.items()))
        return PassResult(bool(lowered), stats)

    def postcondition(self, graph: Graph) -> None:
        left = [f"{n.op} {n.name!r}" for n in graph.nodes_of(self.rules)
                if self.rules[n.op].applies(graph, n)]
        if left:
            raise AssertionError(f"ops TFLite lacks as builtins are left after lowering: {left}")
