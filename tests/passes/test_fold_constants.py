"""fold_constants: ops computed from constants only become Consts, with TF's numbers.

What it folds on real models is measured by ``python -m bench.studies.fold_constants``.
"""
from __future__ import annotations


import numpy as np
import pytest
import tensorflow as tf

from graph_passes.dce import DeadCodeElimination
from graph_passes.fold_constants import FoldConstants
from graph_passes.freeze import Freeze
from graph_passes.ir import Graph
from graph_passes.pass_base import Sequential
from tests.passes import helpers
from tests.passes.helpers import traced
from tfpock.pipeline import build_pipeline


def graph_of(build, x_shape=(2, 3)) -> Graph:
    """A Graph whose signature is ``x`` (float32 [2, 3]) -> ``y = build(x)``."""
    with tf.Graph().as_default() as scratch:
        x = tf.compat.v1.placeholder(tf.float32, x_shape, name="x")
        tf.identity(build(x), name="y")
    return Graph(scratch.as_graph_def(), {"x": "x"}, {"y": "y"})


def frozen_weight_chain(x):
    """x @ reshape(transpose(W) * 2): three ops over constants, one that reads x."""
    w = tf.constant(np.arange(12, dtype=np.float32).reshape(4, 3), name="w")
    scaled = tf.multiply(tf.transpose(w, name="wt"), 2.0, name="scaled")
    return tf.matmul(x, tf.reshape(scaled, [3, 4], name="kernel"), name="matmul")


def folded(graph: Graph, values=None, **kwargs) -> tuple[Graph, dict]:
    """``FoldConstants(**kwargs)`` run by ``helpers.check_pass`` (signature and parameters
    kept; with ``values``, the same numbers exactly): the new graph and the stats."""
    result, after = helpers.check_pass(FoldConstants(**kwargs), graph, values)
    return after, result.stats


X = {"x": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)}


# ---- it fires -----------------------------------------------------------------------------
def test_folds_a_const_only_subgraph_and_dce_clears_the_rest():
    graph = graph_of(frozen_weight_chain)
    after, stats = folded(graph)
    assert stats["folded"] == 3
    assert stats["folded_by_op"] == {"Transpose": 1, "Mul": 1, "Reshape": 1}
    assert stats["declined"] == {}
    assert stats["computed_ops"] == "5 -> 2"          # identity y + matmul remain
    # the kernel (48 bytes) is read instead of w (48) and the perm, scale and shape Consts
    assert stats["bytes_created"] == 48
    assert stats["bytes_unreferenced"] == 48 + 8 + 4 + 8
    assert after.nodes["kernel"].op == "Const"       # same name: readers stay wired
    DeadCodeElimination().run(after)
    assert after.op_histogram() == {"Placeholder": 1, "Const": 1, "MatMul": 1, "Identity": 1}


def test_numbers_unchanged():
    folded(graph_of(frozen_weight_chain), X)


def test_every_output_of_a_multi_output_op_folds():
    def build(x):
        a, b = tf.split(tf.constant(np.arange(6, dtype=np.float32).reshape(2, 3)), [1, 2], 1)
        return tf.concat([x[:, :1] * a, x[:, 1:] + b], axis=1)
    _, stats = folded(graph_of(build), X)
    assert stats["folded_by_op"] == {"Split": 1} or stats["folded_by_op"] == {"SplitV": 1}


def test_shapes_of_computed_tensors_fold_when_static():
    """ShapeN(x, W) is what the lowered input gradient of a convolution reads."""
    def build(x):
        w = tf.constant(np.ones((3, 4), np.float32), name="w")
        shapes = tf.shape_n([tf.negative(x, name="neg"), w], name="shapes")
        return tf.reshape(tf.matmul(x, w), shapes[0][:1] * shapes[1][1:], name="out")
    after, stats = folded(graph_of(build), X)
    assert stats["folded_by_op"] == {"ShapeN": 1, "StridedSlice": 2, "Mul": 1}
    DeadCodeElimination().run(after)
    assert "neg" not in after.nodes     # read only for its shape

    # with an unknown batch size the shape is no constant: nothing to fold, nothing declined
    _, stats = folded(graph_of(build, x_shape=(None, 3)))
    assert stats["folded"] == 0 and stats["declined"] == {}


def test_frozen_batchnorm_of_a_model_folds_with_identical_numbers():
    step = traced(helpers.mlp_bn(), "last:1")
    frozen, _ = Sequential([Freeze(step.frozen)], check_invariants=True)(step.train)
    records, _ = helpers.check_pass(Sequential([FoldConstants()], check_invariants=True),
                                    frozen, helpers.feeds(step))
    stats = records[-1].stats
    # s = gamma * rsqrt(var + eps), b = beta - mean * s, and the loss's shape arithmetic
    assert {"AddV2": 1, "Rsqrt": 1, "Sub": 1}.items() <= stats["folded_by_op"].items()
    assert stats["folded_by_op"]["Mul"] == 2
    assert helpers.signature(frozen) == helpers.signature(step.train)


# ---- it declines, and says why ----------------------------------------------------------
def test_does_not_fold_a_stateful_random_op():
    graph = graph_of(lambda x: x + tf.random.uniform([2, 3], seed=1, name="noise"))
    after, stats = folded(graph)
    assert stats["folded"] == 0
    assert stats["declined"] == {"stateful": {"RandomUniform": 1}}
    assert helpers.serialized(after) == helpers.serialized(graph)


def test_does_not_fold_a_stateless_random_draw():
    """The lowering turns it into a fresh draw per step: it must stay an op."""
    def build(x):
        key, counter, alg = tf.raw_ops.StatelessRandomGetKeyCounterAlg(seed=[1, 2])
        return x * tf.raw_ops.StatelessRandomUniformV2(shape=[2, 3], key=key, counter=counter,
                                                       alg=alg, name="draw")
    graph = graph_of(build)
    after, stats = folded(graph)
    assert stats["folded"] == 0
    assert stats["declined"] == {"random": {"StatelessRandomGetKeyCounterAlg": 1}}
    assert after.nodes["draw"].op == "StatelessRandomUniformV2"

    # with a constant key and counter the draw itself is the candidate, and declined
    def build_const(x):
        return x * tf.raw_ops.StatelessRandomUniformV2(
            shape=[2, 3], key=tf.constant([7], tf.uint64), counter=tf.constant([0, 0], tf.uint64),
            alg=1, name="draw")
    _, stats = folded(graph_of(build_const))
    assert stats["declined"] == {"random": {"StatelessRandomUniformV2": 1}}


def test_does_not_fold_placeholders_or_what_reads_them():
    def build(x):
        fed = tf.compat.v1.placeholder_with_default(tf.ones([2, 3]), [2, 3], name="fed")
        return tf.negative(x, name="neg") + fed
    graph = graph_of(build)
    after, stats = folded(graph)
    assert stats["folded"] == 0
    assert stats["declined"] == {"feed_point": {"PlaceholderWithDefault": 1}}
    assert after.nodes["x"].op == "Placeholder" and after.nodes["neg"].op == "Neg"


def test_does_not_fold_under_a_control_input_from_a_computed_op():
    def build(x):
        guard = tf.negative(x, name="guard")
        one = tf.constant(1.0)
        with tf.control_dependencies([guard]):
            guarded = tf.identity(one, name="guarded")
            waiting = tf.constant(2.0, name="waiting")     # a Const that waits for guard
        return x + guarded + tf.identity(waiting, name="reads_waiting")
    _, stats = folded(graph_of(build), X)
    assert stats["folded"] == 0
    assert stats["declined"] == {"control_input": {"Identity": 1}}


def test_size_cap_declines_a_materialised_broadcast_and_what_follows():
    def build(x):
        big = tf.fill([64, 64], 1.5, name="big")             # 16 KiB from 12 bytes
        return x + tf.reduce_sum(big * 2.0, name="total")
    graph = graph_of(build)
    after, stats = folded(graph)
    assert stats["folded"] == 0
    assert stats["declined"] == {"size_cap": {"Fill": 1}}
    assert after.nodes["big"].op == "Fill"
    _, stats = folded(graph, X, max_growth_bytes=64 * 64 * 4)
    assert stats["folded_by_op"] == {"Fill": 1, "Mul": 1, "Sum": 1}


def test_negative_cap_is_refused():
    with pytest.raises(ValueError, match="max_growth_bytes"):
        FoldConstants(max_growth_bytes=-1)


# ---- invariants ---------------------------------------------------------------------------
def test_signature_and_postcondition_on_a_lowered_cnn():
    """In the pipeline (after lower), with its debug checks; a second run finds nothing."""
    step = traced(helpers.lowering_cnn(), "last:3")
    records, graph = helpers.check_pass(build_pipeline(step.frozen, debug=True), step.train,
                                        keeps_params=False)
    assert [r.name for r in records][-2:] == ["fold_constants", "dce"]
    again = FoldConstants().run(graph)
    assert not again.modified and again.stats["folded"] == 0


def test_postcondition_fails_on_an_unfolded_graph():
    with pytest.raises(AssertionError, match="3 foldable nodes"):
        FoldConstants().postcondition(graph_of(frozen_weight_chain))
