"""Sink a scalar multiply of a weight gradient into the smaller operand of its matmul.

An optimizer scales each weight gradient by the learning rate (``w - lr * g``, SGD and
momentum), and a weight gradient is a matmul of two smaller tensors: the Dense gradient
``x^T @ dy``, the lowered 1x1 / im2col filter gradient ``patches^T @ dy``. Since

    lr * (a @ b) = a @ (lr * b)        (and likewise for transposed operands)

the multiply can act on whichever operand is smaller than the product. For MobileNetV2's last
1x1 convolution at batch 1 that is ``dy`` [16, 1280] (20,480 elements) instead of the kernel
gradient [112, 1280] (143,360): one kernel-sized pass over memory fewer per step (measured
there, ai-edge-litert, one core, medians of 300 steps in three alternating rounds:
0.77 -> 0.75 ms per step; ``skip_passes=("sink_scale",)`` is the control). Rounding
differs from ``lr * g`` by an ulp or so of each element (the multiply happens before the sum).

The rule declines when the scale has more than one element, when the matmul's result (or a
reshape of it on the way) is read by anything else (the unscaled gradient would change for
that reader), or when no operand is smaller than the product.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from graph_passes.constants import MATMUL_OPS
from graph_passes.ir import Graph, parse_ref, tensor_name
from graph_passes.pass_base import Pass, PassResult

SHAPE_ONLY = {"Reshape", "Identity"}


def _elements(graph: Graph, ref: str) -> int | None:
    shape = graph.spec(ref).shape
    if shape is None or any(d is None or d < 0 for d in shape):
        return None
    return int(np.prod(shape, dtype=np.int64))


def _only_reader(graph: Graph, ref: str, reader: str) -> bool:
    return [n.name for n, _ in graph.readers(ref)] == [reader]


def _matmul_behind(graph: Graph, ref: str, reader: str):
    """The matmul that produces ``ref`` through reshapes, each step read only by the next."""
    while True:
        if not _only_reader(graph, ref, reader):
            return None
        node = graph.nodes[parse_ref(ref)[0]]
        if parse_ref(ref)[1] != 0:
            return None
        if node.op in MATMUL_OPS:
            return node
        if node.op not in SHAPE_ONLY:
            return None
        reader, ref = node.name, node.input[0]


def sink_one(graph: Graph, mul) -> str | None:
    """Sinks ``mul`` if the pattern holds; returns None when done, else why it declined."""
    refs = [r for r in mul.input if parse_ref(r)[1] >= 0]
    if len(refs) != 2:
        return "not a binary multiply"
    sizes = [_elements(graph, r) for r in refs]
    if 1 not in sizes:
        return "no one-element scale"
    scale, product = (refs[0], refs[1]) if sizes[0] == 1 else (refs[1], refs[0])
    matmul = _matmul_behind(graph, product, mul.name)
    if matmul is None:
        return "not a matmul read only by the multiply"
    operands = [(_elements(graph, r), i) for i, r in enumerate(matmul.input[:2])]
    size, index = min(operands, key=lambda o: (o[0] is None, o[0] or 0))
    whole = _elements(graph, tensor_name(matmul.name))
    if size is None or whole is None or size >= whole:
        return "no operand smaller than the product"
    scaled = graph.splice(lambda t, s: t * tf.reshape(s, []), [matmul.input[index], scale],
                          f"{matmul.name}/sunk_scale")[0]
    matmul.input[index] = scaled
    graph.replace_uses(tensor_name(mul.name), product)
    return None


class SinkScale(Pass):
    name = "sink_scale"

    def run(self, graph: Graph) -> PassResult:
        declined: dict[str, int] = {}
        sunk = 0
        for mul in [n for n in graph.nodes.values() if n.op == "Mul"]:
            if mul.name not in graph.nodes:
                continue
            reason = sink_one(graph, mul)
            if reason is None:
                sunk += 1
            elif reason != "no one-element scale":  # every other Mul: not worth a figure
                declined[reason] = declined.get(reason, 0) + 1
        return PassResult(bool(sunk), {"sunk": sunk, "declined": declined})
