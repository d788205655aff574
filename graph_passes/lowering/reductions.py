"""Sums of tensors of rank above 6 as reshape -> sum -> reshape, at the rank of their
non-unit dimensions.

The gradient of a broadcast (``tf.repeat``: KerasHub's grouped-query attention repeats each
key/value head for its query heads) sums over interleaved unit axes, e.g. a SUM of a
``[1, 2, 1, 8, 1, 1, 2, 1, 1, 16]`` tensor over axes 0, 2, 4, 6, 8. TFLite converts it, but
the XNNPACK delegate (ai-edge-litert's default) takes tensors of rank 6 at most, and the
interpreter then refuses to prepare the whole signature ("failed to delegate SUM node").
Dropping the unit dimensions changes no value (the same elements, in the same order, are
added):

    sum(x, axes) = reshape(sum(reshape(x, s'), axes'), out)

with ``s'`` the non-unit dimensions of ``x``, ``axes'`` the reduced ones among them and
``out`` the node's static output shape. Here: a SUM of ``[2, 8, 2, 16]`` over axis 2.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from graph_passes.constants import constant_value
from graph_passes.ir import parse_ref
from graph_passes.lowering.base import LoweringRule

MAX_RANK = 6   # XNNPACK's XNN_MAX_TENSOR_DIMS


def _axes(graph, ref: str) -> np.ndarray | None:
    """The reduction axes when static: a constant, or a Range of constants (the form the
    broadcast gradient writes them in)."""
    value = constant_value(graph, ref)
    if value is not None:
        return np.atleast_1d(value)
    node = graph.nodes[parse_ref(ref)[0]]
    if node.op == "Range":
        bounds = [constant_value(graph, r) for r in node.input[:3]]
        if all(b is not None for b in bounds):
            return np.arange(*[int(b) for b in bounds])
    return None


class HighRankSumRule(LoweringRule):
    """Sum of a tensor of rank > 6 -> the same sum over its non-unit dimensions."""

    op_type = "Sum"

    def applies(self, graph, node):
        shape = graph.spec(node.input[0]).shape
        return shape is not None and len(shape) > MAX_RANK

    def check(self, graph, node):
        shape, out = graph.spec(node.input[0]).shape, graph.spec(node.name).shape
        if None in shape or out is None or None in out:
            return f"a sum of rank {len(shape)} needs static shapes (XNNPACK takes rank 6)"
        if _axes(graph, node.input[1]) is None:
            return "a sum of rank > 6 needs static axes"
        if sum(d != 1 for d in shape) > MAX_RANK:
            return f"input {shape} has more than {MAX_RANK} dimensions that are not 1"
        return None

    def inputs(self, graph, node):
        return [node.input[0]]

    def build(self, graph, node, x):
        shape = graph.spec(node.input[0]).shape
        axes = {int(a) % len(shape) for a in _axes(graph, node.input[1])}
        kept = [i for i, d in enumerate(shape) if d != 1]
        reduced = [kept.index(i) for i in sorted(axes) if i in kept]
        squeezed = tf.reshape(x, [shape[i] for i in kept])
        total = tf.reduce_sum(squeezed, reduced) if reduced else squeezed
        return [tf.reshape(total, list(graph.spec(node.name).shape))]


RULES = [HighRankSumRule()]
