"""Fold the scale of a frozen BatchNorm into the convolution or dense layer before it.

A BatchNormalization with ``trainable=False`` computes ``y * s + b`` with constants
``s = gamma * rsqrt(var + eps)`` and ``b = beta - mean * s`` per output channel. When the
layer before it is trained, its kernel is a variable, so the converter cannot fold ``s``
into it and the step pays an activation-sized multiply forward and backward. With ``W`` the
kernel and ``dy`` the gradient arriving at the BatchNorm:

    forward:   conv(x, W) * s             = conv(x, W * s)
    backward:  filter_grad(x, dy * s)     = filter_grad(x, dy) * s      (kernel-sized)
               input_grad(W, dy * s)      = input_grad(W * s, dy)

(for a depthwise kernel ``[kh, kw, C, M]`` the scale is reshaped ``[C, M]``; for Dense
``MatMul(x, W)`` the same with ``[in, out]``). What remains, ``+ b``, is a per-channel bias
the converter fuses into CONV_2D / FULLY_CONNECTED with the activation after it. A rule
declines (and the pass leaves the graph as it was for that BatchNorm) when the convolution's
output has other readers or the scale is not a per-output-channel constant.

Decision: fold where the kernel is no larger than the activation it scales
(:func:`_worth_folding`): folding trades two activation-sized multiplies for two kernel-sized
ones, and the scaled kernel ``W * s`` lives from the forward to the input gradient beside
``W``. ``passes={"fold_bn": False}`` is the control; ``python -m bench.studies.memory``
measures the passes on and off together (``bench/results/2026-11-25-x86_64-2core-memory.md``).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

from graph_passes.constants import constant_value, is_constant
from graph_passes.ir import Graph, parse_ref, tensor_name
from graph_passes.pass_base import Pass, PassResult
from graph_passes.rewrite import NodeRule, apply_rule


@dataclasses.dataclass(frozen=True)
class Producer:
    """A forward op whose output channels a per-channel scale can move into its kernel."""
    kernel_input: int
    accepts: Callable[[Graph, tf.compat.v1.NodeDef], bool]
    scale_shape: Callable[[tuple], tuple]   # kernel shape -> shape the scale takes


PRODUCERS = {
    "Conv2D": Producer(1, lambda g, n: g.attr(n, "data_format", "NHWC") == "NHWC",
                       lambda k: (k[-1],)),
    "DepthwiseConv2dNative": Producer(1, lambda g, n: g.attr(n, "data_format", "NHWC") == "NHWC",
                                      lambda k: (k[-2], k[-1])),
    "MatMul": Producer(1, lambda g, n: not g.attr(n, "transpose_a", False)
                       and not g.attr(n, "transpose_b", False), lambda k: (k[-1],)),
}
# backward readers of dy * s: op -> ("filter", dy input) scales the result; ("input", dy
# input, kernel input) swaps in the scaled kernel
FILTER_GRADS = {"Conv2DBackpropFilter": 2, "DepthwiseConv2dNativeBackpropFilter": 2}
INPUT_GRADS = {"Conv2DBackpropInput": (2, 1), "DepthwiseConv2dNativeBackpropInput": (2, 1)}


def _dense_grad_role(graph: Graph, node) -> tuple[str, int, int | None] | None:
    """Dense backward MatMuls: dW = MatMul(x, g, transpose_a), dx = MatMul(g, W, transpose_b)."""
    if node.op != "MatMul":
        return None
    if graph.attr(node, "transpose_a", False) and not graph.attr(node, "transpose_b", False):
        return ("filter", 1, None)
    if graph.attr(node, "transpose_b", False) and not graph.attr(node, "transpose_a", False):
        return ("input", 0, 1)
    return None


def _role(graph: Graph, node):
    if node.op in FILTER_GRADS:
        return ("filter", FILTER_GRADS[node.op], None)
    if node.op in INPUT_GRADS:
        dy, kernel = INPUT_GRADS[node.op]
        return ("input", dy, kernel)
    return _dense_grad_role(graph, node)


def _scale_of(graph: Graph, mul, conv_ref: str):
    """The other operand of ``mul`` if it is a constant per-channel vector, with its value."""
    refs = [r for r in mul.input if parse_ref(r)[1] >= 0]
    if len(refs) != 2:
        return None, None
    other = refs[1] if tensor_name(refs[0]) == conv_ref else refs[0]
    value = constant_value(graph, other)
    if value is None or value.ndim != 1:
        return None, None
    return other, value


def _worth_folding(graph: Graph, kernel_ref: str, output_ref: str) -> bool:
    """Folding trades two activation-sized multiplies (``* s`` forward, ``dy * s`` backward)
    for two kernel-sized ones (``W * s``, ``filter_grad * s``). A constant (frozen) kernel
    costs nothing, the converter folds ``W * s``; a trained one only pays off when it is
    smaller than the activation: MobileNetV2's last 1x1 conv at batch 1 has a 143,360-element
    kernel against a 20,480-element output."""
    if is_constant(graph, kernel_ref):
        return True
    kernel = graph.spec(kernel_ref).shape
    output = graph.spec(output_ref).shape
    if None in kernel or None in output or -1 in kernel or -1 in output:
        return True
    return int(np.prod(kernel)) <= int(np.prod(output))


@dataclasses.dataclass(frozen=True)
class ScaledOutput:
    """``Mul(conv(x, W), s)``: a forward producer's output scaled per channel by a constant."""
    mul: tf.compat.v1.NodeDef
    conv: tf.compat.v1.NodeDef
    conv_ref: str
    kernel_ref: str
    scale_ref: str
    shape: tuple        # the shape the scale takes against the kernel


class FoldScaleRule(NodeRule):
    """A forward ``Mul`` by a per-channel constant after a producer of :data:`PRODUCERS`,
    read by nothing else -> the scale folded into the kernel, forward and backward."""

    name = "fold_bn"
    op_types = ("Mul",)

    def anchors(self, graph: Graph) -> list:
        return [n for n in super().anchors(graph) if n.name not in graph.backward]

    def match(self, graph: Graph, mul) -> ScaledOutput | None:
        for ref in [r for r in mul.input if parse_ref(r)[1] >= 0]:
            conv = graph.nodes[parse_ref(ref)[0]]
            if conv.op not in PRODUCERS or parse_ref(ref)[1] != 0 or conv.name in graph.backward:
                continue
            producer = PRODUCERS[conv.op]
            if not producer.accepts(graph, conv):
                continue
            conv_ref = tensor_name(ref)
            if [n.name for n, _ in graph.readers(conv_ref)] != [mul.name]:
                continue
            scale_ref, scale = _scale_of(graph, mul, conv_ref)
            kernel_ref = conv.input[producer.kernel_input]
            shape = producer.scale_shape(graph.spec(kernel_ref).shape)
            if scale is None or scale.size != int(np.prod(shape)):
                continue
            return ScaledOutput(mul, conv, conv_ref, kernel_ref, scale_ref, shape)
        return None

    def check(self, graph: Graph, m: ScaledOutput) -> str | None:
        if not _worth_folding(graph, m.kernel_ref, m.conv_ref):
            return "kernel larger than the activation it scales"
        return None

    def rewrite(self, graph: Graph, m: ScaledOutput) -> dict:
        """Folds the scale; returns the producer's op and how many backward readers of
        ``dy * s`` were rewritten, by role."""
        scaled = graph.splice(lambda w, s: w * tf.reshape(s, m.shape),
                              [m.kernel_ref, m.scale_ref], f"{m.conv.name}/folded_scale")[0]
        m.conv.input[PRODUCERS[m.conv.op].kernel_input] = scaled
        graph.replace_uses(tensor_name(m.mul.name), m.conv_ref)
        backward = _fold_backward(graph, m.scale_ref, m.kernel_ref, scaled, m.shape)
        return {"op": m.conv.op, **backward}


def _fold_backward(graph: Graph, scale_ref: str, kernel_ref: str, scaled: str, shape) -> dict:
    """Rewrites the readers of ``dy * s`` (the BatchNorm's input gradient) in the backward."""
    folded = collections.Counter()
    for g in [n for n in graph.nodes.values() if n.name in graph.backward and n.op == "Mul"]:
        refs = [tensor_name(r) for r in g.input if parse_ref(r)[1] >= 0]
        if tensor_name(scale_ref) not in refs or len(refs) != 2:
            continue
        dy = refs[1] if refs[0] == tensor_name(scale_ref) else refs[0]
        readers = graph.readers(g.name)
        roles = [(node, pos, _role(graph, node)) for node, pos in readers]
        if not roles or any(role is None or role[1] != pos for node, pos, role in roles):
            continue  # something else reads dy * s: leave it
        if any(role[0] == "input" and tensor_name(node.input[role[2]]) != tensor_name(kernel_ref)
               for node, _, role in roles):
            continue
        for node, pos, role in roles:
            node.input[pos] = dy
            if role[0] == "input":
                node.input[role[2]] = scaled
            else:
                graph.insert_after(f"{node.name}:0", lambda out, s: out * tf.reshape(s, shape),
                                   [scale_ref], f"{node.name}/folded_scale")
            folded[role[0]] += 1
    return {"backward_" + k: v for k, v in folded.items()}


class FoldBatchNorm(Pass):
    name = "fold_bn"

    def run(self, graph: Graph) -> PassResult:
        outcome = apply_rule(graph, FoldScaleRule())
        folds = [detail for _, detail in outcome.fired]
        stats = {"folded": len(folds), "declined": outcome.counts()["declined"],
                 "backward_rewrites": sum(f.get("backward_filter", 0) + f.get("backward_input", 0)
                                          for f in folds)}
        return PassResult(bool(folds), stats)
