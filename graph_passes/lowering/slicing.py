"""Slices and stacks: a strided slice's gradient, and a concatenation of an unstack.

**StridedSliceGrad** as a RESHAPE and a PAD.

``y = x[spec]`` reads a set of input positions; its gradient puts ``dy`` at those positions
and zeros elsewhere. TFLite has no ``StridedSliceGrad``; BERT's pooler reads the first token
(``x[:, 0, :]``, a slice that drops its middle axis). When the positions read form a box of
the input (every axis read in a run of consecutive indices ``[lo_k, hi_k]``, in order: unit
strides, any begin/end/shrink/new-axis/ellipsis masks), the gradient is

    dx = PAD(RESHAPE(dy, [hi_k - lo_k + 1]_k), [[lo_k, dim_k - 1 - hi_k]]_k)

which copies every value of ``dy`` to its place exactly (no arithmetic). The box is found
without re-implementing the masks: TF's own ``StridedSlice`` runs, with the node's
attributes, on ``arange`` over the input's static shape, and returns the flat position each
element of ``y`` reads. Other slices (steps other than 1, reversed) are declined by name.

**Concatenating the pieces of one unstack**, ``concat(unstack(x, axis=a), axis=c)`` with every
piece once, in order: the gradient of ``stack(split(x, 2, axis=-1), axis=-1)``, the layout
change Gemma's rotary embedding makes. TF 2.21's converter folds the pair into one RESHAPE,
which is right only when no axis moves: on a ``[2, 8, 2, 8, 2]`` gradient (a = 4, c = 3) the
converted op was off by up to 5.1 (``python -m bench.studies.tensor_diff --model gemma``
led there; a Gemma step's query and key gradients were wrong, the loss right). What the pair
computes is a transpose that puts axis ``a`` just before axis ``c`` of the others, then a
reshape that merges the two:

    out = RESHAPE(TRANSPOSE(x, rest[:c] + [a] + rest[c:]), out_shape),   rest = axes != a

which the converter keeps as TRANSPOSE + RESHAPE (the transpose is dropped when it is the
identity). The same numbers: only copies.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from graph_passes.constants import constant_value
from graph_passes.ir import parse_ref
from graph_passes.lowering.base import LoweringRule

_MASKS = ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask")


def read_positions(graph, node) -> np.ndarray | None:
    """Flat input positions the slice reads, in the order of its output (None if the shape,
    begin, end or strides are not static)."""
    shape = graph.spec(node.name).shape
    spec = [constant_value(graph, ref) for ref in node.input[1:4]]
    if shape is None or None in shape or any(v is None for v in spec):
        return None
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        positions = tf.raw_ops.StridedSlice(
            input=np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape),
            begin=spec[0], end=spec[1], strides=spec[2],
            **{mask: graph.attr(node, mask, 0) for mask in _MASKS})
        return session.run(positions).ravel()


def box(shape, positions: np.ndarray) -> list[tuple[int, int]] | None:
    """Per axis ``(lo, hi)`` when ``positions`` are exactly the box they span, row-major;
    else None."""
    if positions.size == 0:
        return None
    coords = np.unravel_index(positions, shape)
    bounds = [(int(c.min()), int(c.max())) for c in coords]
    grid = np.arange(int(np.prod(shape))).reshape(shape)
    expected = grid[tuple(slice(lo, hi + 1) for lo, hi in bounds)].ravel()
    return bounds if np.array_equal(positions, expected) else None


class StridedSliceGradRule(LoweringRule):
    """StridedSliceGrad of a box-shaped slice -> RESHAPE + PAD (the module docstring)."""

    op_type = "StridedSliceGrad"

    def check(self, graph, node):
        positions = read_positions(graph, node)
        if positions is None:
            return "the gradient of a slice needs static shapes, begins, ends and strides"
        if box(graph.spec(node.name).shape, positions) is None:
            return ("only the gradient of a slice with unit strides (a box of the input) is "
                    "lowered")
        return None

    def inputs(self, graph, node):
        return [node.input[4]]

    def build(self, graph, node, dy):
        shape = graph.spec(node.name).shape
        bounds = box(shape, read_positions(graph, node))
        inside = tf.reshape(dy, [hi - lo + 1 for lo, hi in bounds])
        return [tf.pad(inside, [[lo, dim - 1 - hi] for (lo, hi), dim in zip(bounds, shape)])]


def unstacked_source(graph, node) -> tf.compat.v1.NodeDef | None:
    """The Unpack node whose outputs 0..n-1 are exactly ``node``'s data inputs, in order."""
    pieces = [parse_ref(r) for r in node.input[:-1]]
    names = {name for name, _ in pieces}
    if len(names) != 1 or any(index < 0 for _, index in pieces):
        return None
    source = graph.nodes[names.pop()]
    if source.op != "Unpack" or [i for _, i in pieces] != list(range(graph.attr(source, "num"))):
        return None
    return source


class ConcatOfUnstackRule(LoweringRule):
    """ConcatV2 of the pieces of one Unpack -> TRANSPOSE + RESHAPE (the module docstring)."""

    op_type = "ConcatV2"

    def applies(self, graph, node):
        source = unstacked_source(graph, node)
        shapes = [] if source is None else [graph.spec(source.input[0]).shape,
                                             graph.spec(node.name).shape]
        return (bool(shapes) and all(s is not None and None not in s for s in shapes)
                and constant_value(graph, node.input[-1]) is not None)

    def inputs(self, graph, node):
        return [unstacked_source(graph, node).input[0]]

    def build(self, graph, node, x):
        source = unstacked_source(graph, node)
        rank = len(graph.spec(source.input[0]).shape)
        a = graph.attr(source, "axis", 0) % rank
        c = int(constant_value(graph, node.input[-1])) % (rank - 1)
        rest = [i for i in range(rank) if i != a]
        perm = rest[:c] + [a] + rest[c:]
        moved = x if perm == list(range(rank)) else tf.transpose(x, perm)
        return [tf.reshape(moved, list(graph.spec(node.name).shape))]


RULES = [StridedSliceGradRule(), ConcatOfUnstackRule()]
