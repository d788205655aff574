"""Sink a scalar multiply of a weight gradient into the smaller operand of its matmul.

An optimizer scales each weight gradient by the learning rate (``w - lr * g``, SGD and
momentum), and a weight gradient is a matmul of two smaller tensors: the Dense gradient
``x^T @ dy``, the lowered 1x1 / im2col filter gradient ``patches^T @ dy``. Since

    lr * (a @ b) = a @ (lr * b)        (and likewise for transposed operands)

the multiply can act on whichever operand is smaller than the product. For MobileNetV2's last
1x1 convolution at batch 1 that is ``dy`` [16, 1280] (20,480 elements) instead of the kernel
gradient [112, 1280] (143,360): one kernel-sized pass over memory fewer per step
(``passes={"sink_scale": False}`` is the control). Rounding
differs from ``lr * g`` by an ulp or so of each element (the multiply happens before the sum).

A Mul without a one-element operand is not the pattern (left out of the stats); the rule
declines when the matmul's result (or a reshape of it on the way) is read by anything else
(the unscaled gradient would change for that reader), or when no operand is smaller than the
product.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from graph_passes.constants import MATMUL_OPS
from graph_passes.ir import Graph, parse_ref, tensor_name
from graph_passes.pass_base import Pass, PassResult
from graph_passes.rewrite import NodeRule, apply_rule

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


@dataclasses.dataclass(frozen=True)
class ScaledProduct:
    """``Mul(s, m)`` with ``s`` of one element, and what is behind ``m``: the matmul (None
    if ``m`` is not one read only by the multiply) and its smaller operand."""
    mul: tf.compat.v1.NodeDef
    refs: list
    scale: str | None = None
    product: str | None = None
    matmul: tf.compat.v1.NodeDef | None = None
    operand: int | None = None          # index of the smaller operand of the matmul
    operand_size: int | None = None
    product_size: int | None = None


class SinkScaleRule(NodeRule):
    """``s * (a @ b)`` -> ``a @ (s * b)`` on the smaller operand (module docstring). A Mul
    without a one-element operand is not this rule's pattern; every other decline is a
    reason in the stats."""

    name = "sink_scale"
    op_types = ("Mul",)

    def match(self, graph: Graph, mul) -> ScaledProduct | None:
        refs = [r for r in mul.input if parse_ref(r)[1] >= 0]
        if len(refs) != 2:
            return ScaledProduct(mul, refs)
        sizes = [_elements(graph, r) for r in refs]
        if 1 not in sizes:
            return None
        scale, product = (refs[0], refs[1]) if sizes[0] == 1 else (refs[1], refs[0])
        matmul = _matmul_behind(graph, product, mul.name)
        if matmul is None:
            return ScaledProduct(mul, refs, scale, product)
        operands = [(_elements(graph, r), i) for i, r in enumerate(matmul.input[:2])]
        size, index = min(operands, key=lambda o: (o[0] is None, o[0] or 0))
        return ScaledProduct(mul, refs, scale, product, matmul, index, size,
                             _elements(graph, tensor_name(matmul.name)))

    def check(self, graph: Graph, m: ScaledProduct) -> str | None:
        if len(m.refs) != 2:
            return "not a binary multiply"
        if m.matmul is None:
            return "not a matmul read only by the multiply"
        if m.operand_size is None or m.product_size is None or m.operand_size >= m.product_size:
            return "no operand smaller than the product"
        return None

    def rewrite(self, graph: Graph, m: ScaledProduct) -> None:
        scaled = graph.splice(lambda t, s: t * tf.reshape(s, []),
                              [m.matmul.input[m.operand], m.scale],
                              f"{m.matmul.name}/sunk_scale")[0]
        m.matmul.input[m.operand] = scaled
        graph.replace_uses(tensor_name(m.mul.name), m.product)


class SinkScale(Pass):
    name = "sink_scale"

    def run(self, graph: Graph) -> PassResult:
        counts = apply_rule(graph, SinkScaleRule()).counts()
        return PassResult(bool(counts["fired"]),
                          {"sunk": counts["fired"], "declined": counts["declined"]})
