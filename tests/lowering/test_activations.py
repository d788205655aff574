"""Activation-gradient and erf/erfc lowerings: op gone, numbers in TF and on LiteRT, declines."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from graph_passes.lower import LoweringError, lower_node
from graph_passes.lowering.activations import (EluGradRule, ErfcRule, ErfRule,
                                               LeakyReluGradRule, Relu6GradRule, ReluGradRule)
from tests.lowering.rule_harness import (assert_close, build, lowered, run_lowered_litert,
                                         run_tf)

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
}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", GRAD_CASES)
def test_activation_grad_matches_tf(name, shape):
    rule, make, case = GRAD_CASES[name]
    arrays = case(shape)
    result = lowered(make, arrays, rule)
    assert result.count == 1
    assert rule.op_type not in result.graph.op_histogram()
    np.testing.assert_array_equal(run_tf(result.graph, arrays), result.reference)


@pytest.mark.parametrize("name", GRAD_CASES)
def test_activation_grad_on_litert(name):
    rule, make, case = GRAD_CASES[name]
    arrays = case((2, 3, 5, 4), seed=3)
    result = lowered(make, arrays, rule)
    assert_close(run_lowered_litert(result.graph, arrays), result.reference, 1e-6)


def test_relu_grad_keeps_tf_nan_semantics():
    """ReluGrad is a product in TF: an inf gradient at a negative feature gives NaN."""
    g = np.array([np.inf, np.inf, np.nan, 1.0], np.float32)
    f = np.array([-1.0, 1.0, -1.0, 0.0], np.float32)
    result = lowered(lambda a, b: tf.raw_ops.ReluGrad(gradients=a, features=b), [g, f],
                     ReluGradRule())
    np.testing.assert_array_equal(run_tf(result.graph, [g, f]), result.reference)


ERF_CASES = {"Erf": (ErfRule(), tf.math.erf), "Erfc": (ErfcRule(), tf.math.erfc)}


EXACT = {"Erf": np.vectorize(math.erf), "Erfc": np.vectorize(math.erfc)}


@pytest.mark.parametrize("name", ERF_CASES)
def test_erf_accuracy_over_range(name):
    """Max abs error vs float64 ``math`` over [-10, 10]: 1e-6 (~8 ulp of 1.0). Not against
    TF's own float32 kernel: two approximations ~4e-7 off float64 each, whose difference
    depends on the kernels a CPU runs."""
    rule, op = ERF_CASES[name]
    x = np.linspace(-10, 10, 200_001).astype(np.float32)
    result = lowered(op, [x], rule)
    assert rule.op_type not in result.graph.op_histogram()
    exact = EXACT[name](x.astype(np.float64))
    assert np.max(np.abs(run_tf(result.graph, [x]) - exact)) < 1e-6


def test_erfc_keeps_relative_accuracy_in_tail():
    x = np.linspace(0.5, 4.0, 10_001).astype(np.float32)
    result = lowered(tf.math.erfc, [x], ErfcRule())
    exact = EXACT["Erfc"](x.astype(np.float64))
    rel = np.abs(run_tf(result.graph, [x]) - exact) / exact
    assert rel.max() < 3e-6


@pytest.mark.parametrize("name", ERF_CASES)
def test_erf_on_litert(name):
    rule, op = ERF_CASES[name]
    x = np.concatenate([np.linspace(-6, 6, 999), [0.0, 0.5, -0.5, 4.0, -4.0, 20.0, -20.0]])
    x = x.astype(np.float32)
    result = lowered(op, [x], rule)
    assert_close(run_lowered_litert(result.graph, [x]), result.reference, 1e-6)


def test_exact_gelu_with_erfc_lowered_matches():
    x = np.linspace(-8, 8, 1001).astype(np.float32)
    result = lowered(lambda t: tf.nn.gelu(t, approximate=False), [x], ErfcRule())
    assert result.count == 1
    assert_close(run_lowered_litert(result.graph, [x]), result.reference, 1e-6)


@pytest.mark.parametrize("rule,make", [
    (ReluGradRule(), lambda g, f: tf.raw_ops.ReluGrad(gradients=g, features=f)),
    (ErfRule(), lambda x, _: tf.math.erf(x)),
])
def test_declines_float64(rule, make):
    arrays = [np.ones((2, 3), np.float64), np.ones((2, 3), np.float64)]
    graph = build(make, arrays)
    with pytest.raises(LoweringError, match="only float32"):
        lower_node(graph, graph.nodes_of([rule.op_type])[0], rule)
