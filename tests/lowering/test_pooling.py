"""MaxPoolGrad / AvgPoolGrad lowerings: op gone, exact numbers (ties too), LiteRT, declines."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
import tensorflow as tf

from graph_passes.lower import LoweringError, lower_node
from graph_passes.lowering.pooling import AvgPoolGradRule, MaxPoolGradRule
from tests.lowering.harness import graph_of, lowered
from tests.numerics import assert_close


class Pool(NamedTuple):
    """A pooling window over an [n, h, w, c] input; h=1 is Keras' MaxPooling1D."""
    n: int
    h: int
    w: int
    c: int
    kernel: tuple[int, int]
    strides: tuple[int, int]
    padding: str

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.h, self.w, self.c)

    def attrs(self) -> dict:
        return dict(ksize=[1, *self.kernel, 1], strides=[1, *self.strides, 1],
                    padding=self.padding)


CONFIGS = {
    "2x2_s2_valid": Pool(2, 8, 8, 3, (2, 2), (2, 2), "VALID"),
    "2x2_s2_valid_odd": Pool(1, 9, 7, 2, (2, 2), (2, 2), "VALID"),
    "2x2_s2_same_odd": Pool(2, 7, 9, 2, (2, 2), (2, 2), "SAME"),
    "3x3_s1_same": Pool(1, 6, 7, 2, (3, 3), (1, 1), "SAME"),
    "3x3_s2_same": Pool(2, 9, 9, 3, (3, 3), (2, 2), "SAME"),
    "3x3_s2_valid": Pool(1, 10, 11, 2, (3, 3), (2, 2), "VALID"),
    "3x3_s3_same_odd": Pool(2, 10, 8, 2, (3, 3), (3, 3), "SAME"),
    "2x2_s3_valid": Pool(1, 11, 10, 2, (2, 2), (3, 3), "VALID"),
    "2x3_s1x2_same": Pool(2, 7, 8, 2, (2, 3), (1, 2), "SAME"),
    "pool1d_k2": Pool(2, 1, 12, 3, (1, 2), (1, 2), "VALID"),
    "pool1d_k3_s2_same": Pool(3, 1, 11, 2, (1, 3), (1, 2), "SAME"),
}
LITERT = ["2x2_s2_valid", "2x2_s2_same_odd", "3x3_s2_same", "2x2_s3_valid", "pool1d_k3_s2_same"]


def _max_arrays(config: Pool, ties: bool, seed=0):
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: most windows hold their maximum several times
        x = rng.integers(0, 3, config.input_shape).astype(np.float32)
    else:
        x = rng.standard_normal(config.input_shape).astype(np.float32)
    y = tf.nn.max_pool2d(x, **config.attrs()).numpy()
    dy = rng.standard_normal(y.shape).astype(np.float32)
    return [x, y, dy]


def _max_op(config: Pool):
    return lambda x, y, dy: tf.raw_ops.MaxPoolGrad(orig_input=x, orig_output=y, grad=dy,
                                                   **config.attrs())


def _avg_arrays(config: Pool, seed=0):
    y = tf.nn.avg_pool2d(np.zeros(config.input_shape, np.float32), **config.attrs())
    return [np.random.default_rng(seed).standard_normal(y.shape).astype(np.float32)]


def _avg_op(config: Pool):
    shape = list(config.input_shape)
    return lambda dy: tf.raw_ops.AvgPoolGrad(orig_input_shape=shape, grad=dy, **config.attrs())


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("name", CONFIGS)
def test_max_pool_grad_matches_tf(name, ties):
    arrays = _max_arrays(CONFIGS[name], ties)
    result = lowered(_max_op(CONFIGS[name]), MaxPoolGradRule(), *arrays)
    assert (result.count, result.left) == (1, 0)
    # The same additions in the same window order: equal up to float rounding of overlaps.
    assert_close(result.run_tf(), result.reference(), atol=1e-6)


def test_max_pool_grad_all_equal_input_routes_to_first_position():
    config = CONFIGS["3x3_s2_same"]
    x = np.full(config.input_shape, 1.5, np.float32)
    _, y, dy = _max_arrays(config, ties=True)
    y = np.full(y.shape, 1.5, np.float32)
    result = lowered(_max_op(config), MaxPoolGradRule(), x, y, dy)
    assert_close(result.run_tf(), result.reference(), rtol=1e-7, atol=1e-6)  # numpy's rtol, kept


@pytest.mark.parametrize("name", LITERT)
def test_max_pool_grad_on_litert(name):
    arrays = _max_arrays(CONFIGS[name], ties=True, seed=1)
    result = lowered(_max_op(CONFIGS[name]), MaxPoolGradRule(), *arrays)
    assert_close(result.run_litert(), result.reference(), peak_rtol=1e-5)


@pytest.mark.parametrize("name", CONFIGS)
def test_avg_pool_grad_matches_tf(name):
    arrays = _avg_arrays(CONFIGS[name])
    result = lowered(_avg_op(CONFIGS[name]), AvgPoolGradRule(), *arrays)
    assert (result.count, result.left) == (1, 0)
    assert_close(result.run_tf(), result.reference(), atol=1e-6)


@pytest.mark.parametrize("name", LITERT)
def test_avg_pool_grad_on_litert(name):
    arrays = _avg_arrays(CONFIGS[name], seed=2)
    result = lowered(_avg_op(CONFIGS[name]), AvgPoolGradRule(), *arrays)
    assert_close(result.run_litert(), result.reference(), peak_rtol=1e-5)


def test_declines_pooling_over_channels():
    make = lambda dy: tf.raw_ops.AvgPoolGrad(  # noqa: E731
        orig_input_shape=[1, 4, 4, 4], grad=dy, ksize=[1, 2, 2, 2], strides=[1, 2, 2, 2],
        padding="VALID")
    graph = graph_of(make, np.zeros((1, 2, 2, 2), np.float32))
    with pytest.raises(LoweringError, match="pools over batch or channels"):
        lower_node(graph, graph.nodes_of(["AvgPoolGrad"])[0], AvgPoolGradRule())


def test_declines_nchw():
    x = np.zeros((1, 2, 4, 4), np.float32)
    make = lambda a, b, g: tf.raw_ops.MaxPoolGrad(  # noqa: E731
        orig_input=a, orig_output=b, grad=g, ksize=[1, 1, 2, 2], strides=[1, 1, 2, 2],
        padding="VALID", data_format="NCHW")
    graph = graph_of(make, x, np.zeros((1, 2, 2, 2), np.float32),
                     np.zeros((1, 2, 2, 2), np.float32))
    with pytest.raises(LoweringError, match="only NHWC"):
        lower_node(graph, graph.nodes_of(["MaxPoolGrad"])[0], MaxPoolGradRule())
