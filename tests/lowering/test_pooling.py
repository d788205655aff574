"""MaxPoolGrad / AvgPoolGrad lowerings: op gone, exact numbers (ties too), LiteRT, declines."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from graph_passes.lower import LoweringError, lower_node
from graph_passes.lowering.pooling import AvgPoolGradRule, MaxPoolGradRule
from tests.lowering.rule_harness import (assert_close, build, lowered, run_lowered_litert,
                                         run_tf)

# (N, H, W, C, (kh, kw), (sh, sw), padding); H=1 is Keras' MaxPooling1D.
CONFIGS = {
    "2x2_s2_valid": (2, 8, 8, 3, (2, 2), (2, 2), "VALID"),
    "2x2_s2_valid_odd": (1, 9, 7, 2, (2, 2), (2, 2), "VALID"),
    "2x2_s2_same_odd": (2, 7, 9, 2, (2, 2), (2, 2), "SAME"),
    "3x3_s1_same": (1, 6, 7, 2, (3, 3), (1, 1), "SAME"),
    "3x3_s2_same": (2, 9, 9, 3, (3, 3), (2, 2), "SAME"),
    "3x3_s2_valid": (1, 10, 11, 2, (3, 3), (2, 2), "VALID"),
    "3x3_s3_same_odd": (2, 10, 8, 2, (3, 3), (3, 3), "SAME"),
    "2x2_s3_valid": (1, 11, 10, 2, (2, 2), (3, 3), "VALID"),
    "2x3_s1x2_same": (2, 7, 8, 2, (2, 3), (1, 2), "SAME"),
    "pool1d_k2": (2, 1, 12, 3, (1, 2), (1, 2), "VALID"),
    "pool1d_k3_s2_same": (3, 1, 11, 2, (1, 3), (1, 2), "SAME"),
}
LITERT = ["2x2_s2_valid", "2x2_s2_same_odd", "3x3_s2_same", "2x2_s3_valid", "pool1d_k3_s2_same"]


def _attrs(config):
    _, _, _, _, k, s, padding = config
    return dict(ksize=[1, *k, 1], strides=[1, *s, 1], padding=padding)


def _max_arrays(config, ties: bool, seed=0):
    n, h, w, c = config[:4]
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: most windows hold their maximum several times
        x = rng.integers(0, 3, (n, h, w, c)).astype(np.float32)
    else:
        x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    y = tf.nn.max_pool2d(x, **{k: v for k, v in _attrs(config).items()}).numpy()
    dy = rng.standard_normal(y.shape).astype(np.float32)
    return [x, y, dy]


def _max_op(config):
    return lambda x, y, dy: tf.raw_ops.MaxPoolGrad(orig_input=x, orig_output=y, grad=dy,
                                                   **_attrs(config))


def _avg_arrays(config, seed=0):
    n, h, w, c = config[:4]
    y = tf.nn.avg_pool2d(np.zeros((n, h, w, c), np.float32), **_attrs(config))
    return [np.random.default_rng(seed).standard_normal(y.shape).astype(np.float32)]


def _avg_op(config):
    shape = list(config[:4])
    return lambda dy: tf.raw_ops.AvgPoolGrad(orig_input_shape=shape, grad=dy, **_attrs(config))


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("name", CONFIGS)
def test_max_pool_grad_matches_tf(name, ties):
    arrays = _max_arrays(CONFIGS[name], ties)
    result = lowered(_max_op(CONFIGS[name]), arrays, MaxPoolGradRule())
    assert result.count == 1
    assert "MaxPoolGrad" not in result.graph.op_histogram()
    # The same additions in the same window order: equal up to float rounding of overlaps.
    np.testing.assert_allclose(run_tf(result.graph, arrays), result.reference, rtol=0, atol=1e-6)


def test_max_pool_grad_all_equal_input_routes_to_first_position():
    config = CONFIGS["3x3_s2_same"]
    x = np.full(config[:4], 1.5, np.float32)
    _, y, dy = _max_arrays(config, ties=True)
    y = np.full(y.shape, 1.5, np.float32)
    result = lowered(_max_op(config), [x, y, dy], MaxPoolGradRule())
    np.testing.assert_allclose(run_tf(result.graph, [x, y, dy]), result.reference, atol=1e-6)


@pytest.mark.parametrize("name", LITERT)
def test_max_pool_grad_on_litert(name):
    arrays = _max_arrays(CONFIGS[name], ties=True, seed=1)
    result = lowered(_max_op(CONFIGS[name]), arrays, MaxPoolGradRule())
    assert_close(run_lowered_litert(result.graph, arrays), result.reference, 1e-5)


@pytest.mark.parametrize("name", CONFIGS)
def test_avg_pool_grad_matches_tf(name):
    arrays = _avg_arrays(CONFIGS[name])
    result = lowered(_avg_op(CONFIGS[name]), arrays, AvgPoolGradRule())
    assert result.count == 1
    assert "AvgPoolGrad" not in result.graph.op_histogram()
    np.testing.assert_allclose(run_tf(result.graph, arrays), result.reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", LITERT)
def test_avg_pool_grad_on_litert(name):
    arrays = _avg_arrays(CONFIGS[name], seed=2)
    result = lowered(_avg_op(CONFIGS[name]), arrays, AvgPoolGradRule())
    assert_close(run_lowered_litert(result.graph, arrays), result.reference, 1e-5)


def test_declines_pooling_over_channels():
    make = lambda dy: tf.raw_ops.AvgPoolGrad(  # noqa: E731
        orig_input_shape=[1, 4, 4, 4], grad=dy, ksize=[1, 2, 2, 2], strides=[1, 2, 2, 2],
        padding="VALID")
    graph = build(make, [np.zeros((1, 2, 2, 2), np.float32)])
    with pytest.raises(LoweringError, match="pools over batch or channels"):
        lower_node(graph, graph.nodes_of(["AvgPoolGrad"])[0], AvgPoolGradRule())


def test_declines_nchw():
    x = np.zeros((1, 2, 4, 4), np.float32)
    make = lambda a, b, g: tf.raw_ops.MaxPoolGrad(  # noqa: E731
        orig_input=a, orig_output=b, grad=g, ksize=[1, 1, 2, 2], strides=[1, 1, 2, 2],
        padding="VALID", data_format="NCHW")
    graph = build(make, [x, np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 2, 2, 2),
                                                                          np.float32)])
    with pytest.raises(LoweringError, match="only NHWC"):
        lower_node(graph, graph.nodes_of(["MaxPoolGrad"])[0], MaxPoolGradRule())
