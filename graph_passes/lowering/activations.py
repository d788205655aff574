"""Activation gradients and the error function, written as elementwise builtin ops.

TFLite has the forward activations (RELU, RELU6, LEAKY_RELU, ELU, GELU...) but not TF's
gradient kernels, and no ERF; the TFLite converter refuses ``ReluGrad``, ``Relu6Grad``,
``LeakyReluGrad``, ``EluGrad`` and ``Erfc`` (exact GELU's forward) from a traced training step
(``bench/studies/probe_layer_ops.py``). ``SigmoidGrad``, ``TanhGrad`` and ``SeluGrad`` do convert
and need no rule. Each rule below copies the formula of TF's CPU kernel, including where it
uses a product and where a select, so the lowered graph gives the same numbers (also for
zeros, infinities and NaN in the incoming gradient):

    ReluGrad(g, f)          = g * [f > 0]                         (product)
    Relu6Grad(g, f)         = g * [0 < f < 6]                     (product)
    LeakyReluGrad(g, f; a)  = f > 0 ? g : a * g                   (select)
    EluGrad(g, y)           = y < 0 ? (y + 1) * g : g             (select; y is ELU's *output*,
                                                                   since d/dx (e^x - 1) = y + 1)
    ReciprocalGrad(y, g)    = -(y * y) * g                        (y = 1/x, the op's *output*;
                                                                   Gemma's RMS norm divides so)

Erf uses the rational approximation of Eigen's float ``erf`` (the one TF's CPU kernel runs),
on x clamped to [-4, 4] where float32 erf is already +-1::

    erf(x) ~= x * P(x^2) / Q(x^2),  P of degree 6 (13 in x, odd), Q of degree 4 (8 in x, even)

and the result clipped to [-1, 1]. Measured on 2,000,001 points over [-10, 10] (float32 in TF):
max |error| 4.2e-7 against float64 ``math.erf`` (TF's own float32 erf: 3.6e-7) and 5.4e-7
against ``tf.math.erf``; about 3.5 ulp of 1.0, no more than TF's own kernel is off.

Erfc is ``1 - erf(x)`` for x < 0.5, and for x >= 0.5 the Chebyshev fit of Numerical Recipes
(``erfcc``, fractional error < 1.2e-7 in exact arithmetic)::

    t = 1 / (1 + x/2),  erfc(x) ~= t * exp(-x^2 + C(t)),  C a degree-9 polynomial

so that the tail keeps its *relative* accuracy instead of becoming 0 once erf rounds to 1.
Measured likewise: max |error| 4.5e-7 against float64 (4.8e-7 against ``tf.math.erfc``);
relative error <= 1.6e-6 for x < 4 and <= 7.8e-6 for x < 9 (float32 rounding of x^2 inside
exp). Neither op's gradient needs a rule: TF writes d erf/dx as ``2/sqrt(pi) * exp(-x^2)``.
"""
from __future__ import annotations

import tensorflow as tf

from graph_passes.constants import MATMUL_OPS, is_constant
from graph_passes.ir import parse_ref
from graph_passes.lowering.base import LoweringRule, require_float32

# Eigen's generic_fast_erf_float: numerator (odd) and denominator (even) coefficients,
# highest power first, in the variable x^2.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
          -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
          -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
          -7.37332916720468e-03, -1.42647390514189e-02)
_ERF_CLAMP = 4.0
# Numerical Recipes erfcc: coefficients of C(t), highest power first.
_ERFC_C = (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806,
           0.09678418, 0.37409196, 1.00002368, -1.26551223)
_ERFC_SWITCH = 0.5


def _horner(coefficients, x: tf.Tensor) -> tf.Tensor:
    result = tf.constant(coefficients[0], x.dtype)
    for c in coefficients[1:]:
        result = result * x + c
    return result


def erf(x: tf.Tensor) -> tf.Tensor:
    """float32 erf from MUL, ADD, DIV, MINIMUM and MAXIMUM (see the module docstring)."""
    x = tf.clip_by_value(x, -_ERF_CLAMP, _ERF_CLAMP)
    x2 = x * x
    return tf.clip_by_value(x * _horner(_ERF_P, x2) / _horner(_ERF_Q, x2), -1.0, 1.0)


def erfc(x: tf.Tensor) -> tf.Tensor:
    """float32 erfc, accurate in the right tail (see the module docstring)."""
    ax = tf.maximum(x, _ERFC_SWITCH)  # keeps the unused branch finite
    t = 1.0 / (1.0 + 0.5 * ax)
    tail = t * tf.exp(-ax * ax + _horner(_ERFC_C, t))
    return tf.where(x < _ERFC_SWITCH, 1.0 - erf(x), tail)


class _Elementwise(LoweringRule):
    """Base of the float32 elementwise rules: the one check they share."""

    def check(self, graph, node):
        return require_float32(graph, node)


class ReluGradRule(_Elementwise):
    op_type = "ReluGrad"

    def build(self, graph, node, gradients, features):
        return [gradients * tf.cast(features > 0, gradients.dtype)]


class Relu6GradRule(_Elementwise):
    op_type = "Relu6Grad"

    def build(self, graph, node, gradients, features):
        # 0 < f < 6  <=>  min(f, 6 - f) > 0: 6 - f is exact on [3, 12] and has the right sign
        # elsewhere. No LOGICAL_AND: TFLite's takes its generic broadcasting path (2.6 ms on
        # [8, 64, 64, 48], bench/op_profile.py); MobileNetV2 0.35 @128 full b8 step 70 -> 59
        # ms, measured arena unchanged (88.8 -> 88.3 MB). Two float masks multiplied were as
        # fast but kept both masks from the forward: arena 107 MB.
        inside = tf.minimum(features, 6.0 - features) > 0
        return [gradients * tf.cast(inside, gradients.dtype)]


class LeakyReluGradRule(_Elementwise):
    op_type = "LeakyReluGrad"

    def build(self, graph, node, gradients, features):
        alpha = graph.attr(node, "alpha", 0.2)
        return [tf.where(features > 0, gradients, gradients * alpha)]


class EluGradRule(_Elementwise):
    op_type = "EluGrad"

    def build(self, graph, node, gradients, outputs):
        return [tf.where(outputs < 0, (outputs + 1) * gradients, gradients)]


class ReciprocalGradRule(_Elementwise):
    op_type = "ReciprocalGrad"

    def build(self, graph, node, outputs, gradients):
        return [-(outputs * outputs) * gradients]   # the order of TF's CPU kernel


class ErfRule(_Elementwise):
    op_type = "Erf"

    def build(self, graph, node, x):
        return [erf(x)]


class ErfcRule(_Elementwise):
    op_type = "Erfc"

    def build(self, graph, node, x):
        return [erfc(x)]


# Ops the walk from an activation back to its matmul passes: shape-only ops, and adding a
# constant (which the converter may fold away, as it does an all-zero bias).
_SEE_THROUGH = {"Identity", "Reshape", "ExpandDims", "Squeeze", "Add", "AddV2", "BiasAdd"}


def after_runtime_matmul(graph, ref: str) -> bool:
    """Whether ``ref`` is a matmul of two runtime tensors (a trained kernel), maybe seen
    through reshapes and constant additions."""
    node = graph.nodes[parse_ref(ref)[0]]
    while node.op in _SEE_THROUGH:
        data = [r for r in node.input if parse_ref(r)[1] >= 0]
        runtime = [r for r in data if not is_constant(graph, r)]
        if node.op in ("Add", "AddV2", "BiasAdd") and len(runtime) != 1:
            return False  # a runtime addend: the converter keeps the ADD and fuses into it
        node = graph.nodes[parse_ref(runtime[0] if runtime else data[0])[0]]
    if node.op not in MATMUL_OPS:
        return False
    return all(not is_constant(graph, r) for r in node.input[:2])


class _ReluAfterRuntimeMatMul(_Elementwise):
    """Relu / Relu6 on a matmul of two runtime tensors -> a select.

    TF 2.21's converter fuses the activation into the matmul and then emits a BATCH_MATMUL,
    which has no fused activation: the activation is silently dropped (a trained
    ``Dense(8, use_bias=False, activation="relu")`` inferred up to 1.9 off on ai-edge-litert;
    ``relu(matmul(a, b))`` alone reproduces it, as do ``maximum(., 0)``, ``+ 0``, ``* 1``
    and reshapes in between). A select is not fused, so it survives: ``f > 0 ? f : 0``
    (and ``min(f, 6)`` for Relu6), the same numbers as TF's kernels (and 0 for NaN)."""

    def applies(self, graph, node):
        return after_runtime_matmul(graph, node.input[0])

    def build(self, graph, node, features):
        kept = tf.minimum(features, 6.0) if node.op == "Relu6" else features
        return [tf.raw_ops.SelectV2(condition=features > 0, t=kept,
                                    e=tf.constant(0.0, features.dtype))]


class ReluAfterRuntimeMatMulRule(_ReluAfterRuntimeMatMul):
    op_type = "Relu"


class Relu6AfterRuntimeMatMulRule(_ReluAfterRuntimeMatMul):
    op_type = "Relu6"


RULES = [ReluGradRule(), Relu6GradRule(), LeakyReluGradRule(), EluGradRule(),
         ReciprocalGradRule(), ErfRule(),
         ErfcRule(), ReluAfterRuntimeMatMulRule(), Relu6AfterRuntimeMatMulRule()]
