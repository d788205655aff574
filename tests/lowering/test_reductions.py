"""The high-rank sum lowering (XNNPACK takes rank 6 at most): count, structure, numbers in
TF and on LiteRT, and where it must not fire."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from graph_passes.lowering.reductions import HighRankSumRule
from tests.lowering.harness import graph_of, lowered
from tests.numerics import assert_close

# the gradient of KerasHub's grouped-query tf.repeat: a rank-10 sum over interleaved axes
SHAPE = (1, 2, 1, 8, 1, 1, 2, 1, 1, 16)


def test_rank_10_sum_over_a_range_of_axes():
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    result = lowered(lambda t: tf.reduce_sum(t, tf.range(0, 10, 2)), HighRankSumRule(), x)
    assert result.count == 1
    [node] = result.graph.nodes_of(["Sum"])   # the replacement's own sum, at rank 4
    assert len(result.graph.spec(node.input[0]).shape) == 4   # [2, 8, 2, 16]
    reference = result.reference()
    assert reference.shape == (2, 8, 1, 1, 16)
    assert_close(result.run_tf(), reference)
    assert_close(result.run_litert(), reference, atol=1e-6)


def test_rank_6_sum_is_left_alone():
    x = np.ones((2, 1, 3, 1, 2, 2), np.float32)
    graph = graph_of(lambda t: tf.reduce_sum(t, [1, 3]), x)
    [node] = graph.nodes_of(["Sum"])
    assert not HighRankSumRule().applies(graph, node)
