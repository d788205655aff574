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

**StridedSlice of more than 5 axes** as RESHAPE + SLICE + RESHAPE. tflite-runtime 2.14's
STRIDED_SLICE prepares 1-5-D inputs only ("StridedSlice op only supports 1D-5D input
arrays"): KerasHub's ``call_with_cache`` reads each layer's part of its 6-D cache,
``cache[:, i, ...]`` on ``[batch, layers, 2, length, kv_heads, head_dim]``, so the decode
signature (:mod:`tfpock.decode`) would not load there. A box-shaped read (as above) is the
same read on the input with axes merged: from the last axis backwards, an axis joins the
group after it while that group is read whole, so each group is one axis read in a run,

    out = RESHAPE(SLICE(RESHAPE(x, [prod(group)]_g), [lo_g * rest_g]_g,
                        [(hi_g - lo_g + 1) * rest_g]_g), out_shape)

(``lo_g, hi_g`` the run of the group's first axis, ``rest_g`` the product of its others);
``cache[:, i, ...]`` becomes a 2-D slice. Only copies; fewer than 6 axes is left as it is.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from graph_passes.constants import constant_value
from graph_passes.ir import parse_ref
from graph_passes.lowering.base import LoweringRule

_MASKS = ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask")


def read_positions(graph, node, shape) -> np.ndarray | None:
    """Flat positions a slice of an input of ``shape`` reads (``node``: a StridedSlice or its
    gradient, which share begin, end, strides and masks), in the order of its output (None
    if the shape, begin, end or strides are not static)."""
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
        positions = read_positions(graph, node, graph.spec(node.name).shape)
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
        bounds = box(shape, read_positions(graph, node, shape))
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


MAX_SLICE_RANK = 5   # tflite-runtime 2.14's STRIDED_SLICE


def merged_box(shape, bounds) -> tuple[list[int], list[int], list[int]]:
    """(merged shape, begin, size) of a box read over axis groups (the module docstring)."""
    groups: list[list[int]] = []
    for axis in reversed(range(len(shape))):
        whole = groups and all(bounds[a] == (0, shape[a] - 1) for a in groups[0])
        if whole:
            groups[0].insert(0, axis)
        else:
            groups.insert(0, [axis])
    dims, begin, size = [], [], []
    for group in groups:
        rest = int(np.prod([shape[a] for a in group[1:]], dtype=np.int64))
        lo, hi = bounds[group[0]]
        dims.append(shape[group[0]] * rest)
        begin.append(lo * rest)
        size.append((hi - lo + 1) * rest)
    return dims, begin, size


class HighRankStridedSliceRule(LoweringRule):
    """StridedSlice of a >5-D input -> RESHAPE + SLICE + RESHAPE (the module docstring)."""

    op_type = "StridedSlice"

    def applies(self, graph, node):
        shape = graph.spec(node.input[0]).shape
        return shape is not None and len(shape) > MAX_SLICE_RANK

    def check(self, graph, node):
        shape = graph.spec(node.input[0]).shape
        positions = None if None in shape else read_positions(graph, node, shape)
        if positions is None or box(shape, positions) is None:
            return (f"a {len(shape)}-D strided slice (tflite-runtime 2.14 slices 1-5-D "
                    "inputs) is lowered only with static shapes and a box-shaped read (unit "
                    "strides, static begin and end)")
        return None

    def inputs(self, graph, node):
        return [node.input[0]]

    def build(self, graph, node, x):
        shape = list(graph.spec(node.input[0]).shape)
        bounds = box(shape, read_positions(graph, node, shape))
        dims, begin, size = merged_box(shape, bounds)
        merged = tf.slice(tf.reshape(x, dims), begin, size)
        return [tf.reshape(merged, list(graph.spec(node.name).shape))]


RULES = [StridedSliceGradRule(), ConcatOfUnstackRule(), HighRankStridedSliceRule()]
