"""sink_scale: lr * (a @ b) becomes a @ (lr * b) on the smaller operand."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from graph_passes.dce import DeadCodeElimination
from graph_passes.freeze import Freeze
from graph_passes.ir import Graph
from graph_passes.lower import Lower
from graph_passes.pass_base import Sequential
from graph_passes.prune import Prune
from graph_passes.sink_scale import SinkScale
from tests.passes import helpers
from tests.passes.helpers import traced


def prepared(model, scheme="full", optimizer=None):
    step = traced(model, scheme, optimizer=optimizer)
    graph, _ = Sequential([Freeze(step.frozen), Prune(), Lower()])(step.train)
    return step, graph


def wide_head(seed=0) -> keras.Model:
    """A 1x1 conv whose kernel (8 x 64) is larger than its input (B x 2 x 2 x 8) and output
    gradient, and a Dense whose kernel (256 x 3) is larger than x (B x 256) for small B."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((2, 2, 8)), layers.Conv2D(64, 1, name="wide"),
                             layers.Flatten(), layers.Dense(3, name="logits")])


def lr_muls(graph):
    """Multiplies of a one-element tensor and a kernel-shaped one (what the pass removes)."""
    out = []
    for node in graph.nodes_of(["Mul"]):
        shapes = [graph.spec(r).shape for r in node.input if not r.startswith("^")]
        if any(s is not None and np.prod(s) == 1 for s in shapes) and any(
                s is not None and len(s) >= 2 and np.prod(s) >= 8 * 64 for s in shapes):
            out.append(node.name)
    return out


def test_sinks_the_learning_rate_into_the_smaller_operand():
    step, graph = prepared(wide_head())
    kernel_sized = lr_muls(graph)
    assert len(kernel_sized) == 2  # the conv kernel's and the Dense kernel's lr * g
    result, graph = helpers.check_pass(SinkScale(), graph, helpers.feeds(step), peak_rtol=1e-5)
    assert result.modified and result.stats["sunk"] == 2
    DeadCodeElimination().run(graph)
    assert lr_muls(graph) == []


def test_momentum_too_and_the_same_numbers():
    step, graph = prepared(wide_head(1), optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    result, _ = helpers.check_pass(SinkScale(), graph, helpers.feeds(step), peak_rtol=1e-5)
    assert result.stats["sunk"] == 2


def test_declines_when_the_product_has_another_reader():
    scratch = tf.Graph()
    with scratch.as_default():
        a = tf.compat.v1.placeholder(tf.float32, [2, 16], name="a")
        b = tf.compat.v1.placeholder(tf.float32, [2, 16], name="b")
        lr = tf.compat.v1.placeholder(tf.float32, [1], name="lr")
        g = tf.matmul(a, b, transpose_a=True)
        scaled = tf.identity(tf.reshape(lr, []) * g, name="scaled")
        raw = tf.identity(g, name="raw")  # a second reader of the unscaled gradient
    graph = Graph(scratch.as_graph_def(), inputs={"a": a.name, "b": b.name, "lr": lr.name},
                  outputs={"scaled": scaled.name, "raw": raw.name})
    result, _ = helpers.check_pass(SinkScale(), graph)
    assert not result.modified
    assert result.stats["declined"] == {"not a matmul read only by the multiply": 1}
