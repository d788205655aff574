"""Activation-gradient and erf/erfc lowerings: op gone, numbers in TF and on LiteRT, declines."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from graph_passes.lower import LoweringError, lower_node
from graph_passes.lowering.activations import (EluGradRule, ErfcRule, ErfRule,
                                               LeakyReluGradRule, ReciprocalGradRule,
                                               Relu6GradRule, ReluGradRule)
from tests.lowering.harness import graph_of, lowered
from tests.numerics import assert_close

SHAPES = [(7,), (2, 5, 3), (3, 4, 4, 2)]


def _features(shape, seed):
    """Values spread over [-8, 8] with exact 0s and 6s (the kinks) mixed in."""
    rng = np.random.default_rng(seed)
    f = rng.uniform(-8, 8, shape).astype(np.float32)
    flat = f.reshape(-1)
    flat[::5], flat[1::7] = 0.0, 6.0
    return f


def _grad_case(shape, seed=0):
    g = np.random.default_rng(seed + 1).standard_normal(shape).astype(np.float32)
    return g, _features(shape, seed)


def _elu_outputs(shape, seed=0):
    g, f = _grad_case(shape, seed)
    return g, tf.nn.elu(f).numpy()


GRAD_CASES = {
    "ReluGrad": (ReluGradRule(), lambda g, f: tf.raw_ops.ReluGrad(gradients=g, features=f),
                 _grad_case),
    "Relu6Grad": (Relu6GradRule(), lambda g, f: tf.raw_ops.Relu6Grad(gradients=g, features=f),
                  _grad_case),
    "LeakyReluGrad_0.2": (LeakyReluGradRule(), lambda g, f: tf.raw_ops.LeakyReluGrad(
        gradients=g, features=f, alpha=0.2), _grad_case),
    "LeakyReluGrad_0.01": (LeakyReluGradRule(), lambda g, f: tf.raw_ops.LeakyReluGrad(
        gradients=g, features=f, alpha=0.01), _grad_case),
    "EluGrad": (EluGradRule(), lambda g, y: tf.raw_ops.EluGrad(gradients=g, outputs=y),
                _elu_outputs),
    "ReciprocalGrad": (ReciprocalGradRule(), lambda g, y: tf.raw_ops.ReciprocalGrad(y=y, dy=g),
                       _grad_case),
}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", GRAD_CASES)
def test_activation_grad_matches_tf(name, shape):
    rule, make, case = GRAD_CASES[name]
    result = lowered(make, rule, *case(shape))
    assert (result.count, result.left) == (1, 0)
    assert_close(result.run_tf(), result.reference())


@pytest.mark.parametrize("name", GRAD_CASES)
def test_activation_grad_on_litert(name):
    rule, make, case = GRAD_CASES[name]
    result = lowered(make, rule, *case((2, 3, 5, 4), seed=3))
    assert_close(result.run_litert(), result.reference(), peak_rtol=1e-6)


def test_relu_grad_keeps_tf_nan_semantics():
    """ReluGrad is a product in TF: an inf gradient at a negative feature gives NaN."""
    g = np.array([np.inf, np.inf, np.nan, 1.0], np.float32)
    f = np.array([-1.0, 1.0, -1.0, 0.0], np.float32)
    result = lowered(lambda a, b: tf.raw_ops.ReluGrad(gradients=a, features=b),
                     ReluGradRule(), g, f)
    assert_close(result.run_tf(), result.reference(), same_nonfinite=True)


ERF_CASES = {"Erf": (ErfRule(), tf.math.erf), "Erfc": (ErfcRule(), tf.math.erfc)}


EXACT = {"Erf": np.vectorize(math.erf), "Erfc": np.vectorize(math.erfc)}
# the bounds are strict ("below 1e-6"); assert_close's are inclusive: the double just below
ERF_ATOL = np.nextafter(1e-6, 0)
ERFC_TAIL_RTOL = np.nextafter(3e-6, 0)


@pytest.mark.parametrize("name", ERF_CASES)
def test_erf_accuracy_over_range(name):
    """Max abs error vs float64 ``math`` over [-10, 10]: 1e-6 (~8 ulp of 1.0). Not against
    TF's own float32 kernel: two approximations ~4e-7 off float64 each, whose difference
    depends on the kernels a CPU runs."""
    rule, op = ERF_CASES[name]
    x = np.linspace(-10, 10, 200_001).astype(np.float32)
    result = lowered(op, rule, x)
    assert result.left == 0
    assert_close(result.run_tf(), EXACT[name](x.astype(np.float64)), atol=ERF_ATOL)


def test_erfc_keeps_relative_accuracy_in_tail():
    x = np.linspace(0.5, 4.0, 10_001).astype(np.float32)
    result = lowered(tf.math.erfc, ErfcRule(), x)
    assert_close(result.run_tf(), EXACT["Erfc"](x.astype(np.float64)), rtol=ERFC_TAIL_RTOL)


@pytest.mark.parametrize("name", ERF_CASES)
def test_erf_on_litert(name):
    rule, op = ERF_CASES[name]
    x = np.concatenate([np.linspace(-6, 6, 999), [0.0, 0.5, -0.5, 4.0, -4.0, 20.0, -20.0]])
    x = x.astype(np.float32)
    result = lowered(op, rule, x)
    assert_close(result.run_litert(), result.reference(), peak_rtol=1e-6)


def test_exact_gelu_with_erfc_lowered_matches():
    x = np.linspace(-8, 8, 1001).astype(np.float32)
    result = lowered(lambda t: tf.nn.gelu(t, approximate=False), ErfcRule(), x)
    assert result.count == 1
    assert_close(result.run_litert(), result.reference(), peak_rtol=1e-6)


@pytest.mark.parametrize("rule,make", [
    (ReluGradRule(), lambda g, f: tf.raw_ops.ReluGrad(gradients=g, features=f)),
    (ErfRule(), lambda x, _: tf.math.erf(x)),
])
def test_declines_float64(rule, make):
    arrays = [np.ones((2, 3), np.float64), np.ones((2, 3), np.float64)]
    graph = graph_of(make, *arrays)
    with pytest.raises(LoweringError, match="only float32"):
        lower_node(graph, graph.nodes_of([rule.op_type])[0], rule)
