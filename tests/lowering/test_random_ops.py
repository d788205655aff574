"""Stateless random ops -> stateful RANDOM_UNIFORM / RANDOM_STANDARD_NORMAL."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from graph_passes.lower import LoweringError, lower_node
from graph_passes.lowering.random_ops import (StatelessNormalV2Rule, StatelessUniformRule,
                                              StatelessUniformV2Rule)
from tfpock.testing.litert import convert_builtins_only
from tests.lowering.harness import function_of, graph_of, lowered
from tests.numerics import assert_close

SEED = np.array([3, 11], np.int32)
SHAPE = (4, 64)


def _uniform(seed):
    return tf.random.stateless_uniform(SHAPE, seed=seed)


def _uniform_v1(seed):
    return tf.raw_ops.StatelessRandomUniform(shape=SHAPE, seed=seed, dtype=tf.float32)


def _normal(seed):
    return tf.random.stateless_normal(SHAPE, seed=seed)


CASES = {
    "uniform_v2": (StatelessUniformV2Rule(), _uniform, "RandomUniform"),
    "uniform_v1": (StatelessUniformRule(), _uniform_v1, "RandomUniform"),
    "normal_v2": (StatelessNormalV2Rule(), _normal, "RandomStandardNormal"),
}


@pytest.mark.parametrize("name", CASES)
def test_replaced_by_stateful_op_with_same_shape(name):
    rule, make, stateful = CASES[name]
    result = lowered(make, rule, SEED)
    assert (result.count, result.left) == (1, 0)
    assert result.graph.op_histogram()[stateful] == 1
    assert result.run_tf().shape == SHAPE


@pytest.mark.parametrize("name", CASES)
def test_litert_first_invocation_equals_tf(name):
    """The documented finding: same seeds -> the same numbers on a fresh interpreter."""
    rule, make, _ = CASES[name]
    result = lowered(make, rule, SEED)
    assert_close(result.run_litert(), result.run_tf())


def test_litert_draws_new_numbers_each_invocation():
    result = lowered(_uniform, StatelessUniformV2Rule(), SEED)
    model = convert_builtins_only(function_of(result.graph), [tf.TensorSpec(SEED.shape, tf.int32)])
    runner = Interpreter(model_content=model).get_signature_runner("serving_default")
    first, second = runner(in00=SEED)["out00"], runner(in00=SEED)["out00"]
    assert not np.array_equal(first, second)
    assert 0.0 <= first.min() and first.max() < 1.0


def test_dropout_mask_lowered_converts_and_keeps_rate():
    x = np.ones((8, 256), np.float32)

    def dropout(t, seed):
        return tf.nn.experimental.stateless_dropout(t, rate=0.25, seed=seed)
    result = lowered(dropout, StatelessUniformV2Rule(), x, SEED)
    out = result.run_litert()
    kept = out != 0
    assert abs(kept.mean() - 0.75) < 0.05
    assert_close(out[kept], 1 / 0.75, rtol=1e-6)


def test_declines_float64():
    def make(seed):
        return tf.random.stateless_uniform(SHAPE, seed=seed, dtype=tf.float64)
    graph = graph_of(make, SEED)
    with pytest.raises(LoweringError, match="only float32"):
        lower_node(graph, graph.nodes_of(["StatelessRandomUniformV2"])[0],
                   StatelessUniformV2Rule())
