"""Narrow: a partial-channel weight's gradient op computes its k trained input channels only.

Each tiny model is input -> layer ``l`` (trained on its first k input channels) -> Flatten ->
a frozen Dense. After freeze and prune the trace slices the first k channels off the full
kernel gradient; the pass must replace every such pair by a gradient op with k channels.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import tfpock
from graph_passes.freeze import Freeze
from graph_passes.ir import Graph
from graph_passes.narrow import NarrowWeightGradients, match_channel_slice
from graph_passes.prune import Prune
from tests.passes import helpers
from tests.passes.helpers import traced
from tests.numerics import assert_close
from tfpock.tflite import model_file
from tfpock.pipeline import build_pipeline
from tfpock.runtime import Trainer
from tfpock.scheme import Scheme
from tfpock.testing import models

HALF = {"weight_fraction": 0.5}


def tiny(input_shape, layer) -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input(input_shape), layer, layers.Flatten(),
                             layers.Dense(3, name="o")])


class NarrowCase(NamedTuple):
    model: Callable[[], keras.Model]    # input -> layer ``l`` -> Flatten -> Dense
    policy: dict                        # ``l``'s policy
    narrowed: dict[str, int]            # the pass's expected ``narrowed`` stats
    channels: dict[str, tuple[int, int]]  # kernel attribute -> (k trained, total)


CASES = {
    "dense": NarrowCase(
        lambda: tiny((6,), layers.Dense(8, name="l")),
        HALF, {"MatMul": 1}, {"kernel": (3, 6)}),
    "conv_s1_same": NarrowCase(
        lambda: tiny((6, 6, 4), layers.Conv2D(5, 3, padding="same", name="l")),
        {"weight_channels": 1}, {"Conv2DBackpropFilter": 1}, {"kernel": (1, 4)}),
    "conv_s2_valid": NarrowCase(
        lambda: tiny((7, 7, 4), layers.Conv2D(5, 3, strides=2, name="l")),
        {"weight_fraction": 0.25}, {"Conv2DBackpropFilter": 1}, {"kernel": (1, 4)}),
    "conv_s2_same": NarrowCase(
        lambda: tiny((6, 6, 4), layers.Conv2D(5, 3, strides=2, padding="same", name="l")),
        HALF, {"Conv2DBackpropFilter": 1}, {"kernel": (2, 4)}),
    "conv_dilated": NarrowCase(
        lambda: tiny((7, 7, 4), layers.Conv2D(5, 3, dilation_rate=2, padding="same",
                                              name="l")),
        {"weight_channels": 3}, {"Conv2DBackpropFilter": 1}, {"kernel": (3, 4)}),
    "conv1d": NarrowCase(
        lambda: tiny((9, 4), layers.Conv1D(5, 3, padding="same", name="l")),
        HALF, {"Reshape(Conv2DBackpropFilter)": 1}, {"kernel": (2, 4)}),
    "depthwise_m1": NarrowCase(
        lambda: tiny((6, 6, 4), layers.DepthwiseConv2D(3, padding="same", name="l")),
        HALF, {"DepthwiseConv2dNativeBackpropFilter": 1}, {"kernel": (2, 4)}),
    "depthwise_m2_s2": NarrowCase(
        lambda: tiny((7, 7, 4), layers.DepthwiseConv2D(3, strides=2, depth_multiplier=2,
                                                       name="l")),
        {"weight_channels": 3}, {"DepthwiseConv2dNativeBackpropFilter": 1},
        {"kernel": (3, 4)}),
    "separable": NarrowCase(
        lambda: tiny((6, 6, 4), layers.SeparableConv2D(5, 3, padding="same",
                                                       depth_multiplier=2, name="l")),
        HALF, {"Conv2DBackpropFilter": 1, "DepthwiseConv2dNativeBackpropFilter": 1},
        {"depthwise_kernel": (2, 4), "pointwise_kernel": (4, 8)}),
}


def pruned(step):
    """The train graph after freeze and prune (before narrow, as in the pipeline)."""
    graph = step.train.copy()
    Freeze(step.frozen).run(graph)
    Prune().run(graph)
    return graph


def partial_kernels(step) -> dict[str, tuple[int, ...]]:
    """Param key of each partial-channel weight -> its full kernel shape."""
    return {w.path: w.value.shape for w in step.weights if w.channels is not None}


def full_kernel_gradient_ops(graph, shapes) -> list[str]:
    """Backward-set nodes with an output of a partial weight's full kernel shape."""
    scratch = tf.Graph()
    with scratch.as_default():
        tf.graph_util.import_graph_def(graph.to_graph_def(), name="")
    return sorted(op.name for op in scratch.get_operations() if op.name in graph.backward
                  and any(tuple(out.shape.as_list()) in shapes for out in op.outputs
                          if out.shape.rank is not None))


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    build, policy, expected, channels = CASES[request.param]
    model = build()
    step = traced(model, Scheme(layers={"l": policy}))
    before = pruned(step)
    after = before.copy()
    result = NarrowWeightGradients().run(after)
    layer = model.get_layer("l")
    keys = {getattr(layer, attr).path: list(c) for attr, c in channels.items()}
    return step, before, after, result, expected, keys


def test_fires_once_per_partial_kernel(case):
    _, _, _, result, expected, channels = case
    assert result.modified
    assert result.stats["narrowed"] == expected
    assert result.stats["channels"] == channels     # keyed by param, through the concat
    assert "declined" not in result.stats


def test_no_gradient_of_the_full_kernel_shape_is_left(case):
    step, before, after, _, _, channels = case
    shapes = set(partial_kernels(step).values())
    # not vacuous: the traced graph computes the full kernel gradient
    assert full_kernel_gradient_ops(before, shapes)
    assert not full_kernel_gradient_ops(after, shapes)
    assert not [n for n in after.nodes.values() if match_channel_slice(after, n)]
    # the narrowed ops: each kernel-gradient op has the trained k on the input-channel axis
    ks = sorted(k for k, _ in channels.values())
    grads = [n for n in after.backward if after.nodes[n].op in
             ("Conv2DBackpropFilter", "DepthwiseConv2dNativeBackpropFilter")
             or (after.nodes[n].op == "MatMul" and after.attr(after.nodes[n], "transpose_a"))]
    assert sorted(after.spec(n).shape[-2] for n in grads) == ks
    assert len(grads) == len(channels)


def test_numbers_unchanged(case):
    step, before, _, _, _, _ = case
    helpers.check_pass(NarrowWeightGradients(), before, helpers.feeds(step), peak_rtol=1e-6)


def test_signature_and_parameters_unchanged(case):
    _, before, _, _, _, _ = case
    helpers.check_pass(NarrowWeightGradients(), before)


def test_pipeline_lowers_the_narrowed_ops(case):
    step, before, _, _, _, _ = case
    graph, records = build_pipeline(step.frozen, debug=True)(step.train)  # postconditions
    names = [r.name for r in records]
    assert names.index("narrow") < names.index("lower")
    # the narrowed filter gradients were lowered (debug=True also ran lower's postcondition)
    assert not {"Conv2DBackpropFilter", "DepthwiseConv2dNativeBackpropFilter"} & set(
        graph.op_histogram())
    values = helpers.feeds(step)
    assert_close(helpers.run(graph, values), helpers.run(before, values), peak_rtol=1e-5)


# ---- where it must not fire, and where it declines -----------------------------------------
def test_does_not_fire_on_full_training():
    step = traced(CASES["conv_s1_same"].model(), "full")
    graph = pruned(step)
    assert not [n for n in graph.nodes.values() if match_channel_slice(graph, n)]
    result, after = helpers.check_pass(NarrowWeightGradients(), graph)
    assert not result.modified and result.stats["narrowed"] == {}
    assert helpers.serialized(after) == helpers.serialized(graph)


def test_declines_while_the_frozen_channels_gradient_still_reads_the_full_gradient():
    # before prune, the concat's gradient also slices the frozen channels off the full one
    model = CASES["dense"].model()
    step = traced(model, Scheme(layers={"l": HALF}))
    result, graph = helpers.check_pass(NarrowWeightGradients(), step.train)
    assert not result.modified
    [(key, reason)] = result.stats["declined"].items()
    assert key == model.get_layer("l").kernel.path and "also read by" in reason
    assert helpers.serialized(graph) == helpers.serialized(step.train)


def test_declines_when_the_full_gradient_is_a_signature_output():
    step = traced(CASES["conv_s1_same"].model(), Scheme(layers={"l": HALF}))
    graph = pruned(step)
    [match] = filter(None, [match_channel_slice(graph, n) for n in graph.nodes.values()])
    graph.outputs["full_gradient"] = match.source
    result, _ = helpers.check_pass(NarrowWeightGradients(), graph)
    assert not result.modified
    assert "signature output ['full_gradient']" in next(iter(result.stats["declined"].values()))


# ---- hand-made graphs: a constant zero offset, EXPLICIT padding, a non-gradient MatMul -------
def handmade(build, shapes: dict[str, tuple[int, ...]]) -> Graph:
    """A graph of ``build(**placeholders)``; every node counts as a gradient op."""
    scratch = tf.Graph()
    with scratch.as_default():
        ins = {k: tf.compat.v1.placeholder(tf.float32, s, name=k) for k, s in shapes.items()}
        tf.identity(build(**ins), name="out")
    graph_def = scratch.as_graph_def(add_shapes=True)
    return Graph(graph_def, {k: k for k in shapes}, {"out": "out"},
                 backward=[n.name for n in graph_def.node])


def random_values(shapes):
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def test_explicit_padding_and_a_constant_zero_offset():
    shapes = {"x": (2, 7, 7, 6), "dy": (2, 3, 3, 5)}  # H: 7+1 pad, W: 7+3 pad

    def build(x, dy):
        grad = tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=[3, 3, 6, 5], out_backprop=dy, strides=[1, 2, 3, 1],
            padding="EXPLICIT", explicit_paddings=[0, 0, 1, 0, 2, 1, 0, 0])
        return tf.slice(grad, [0, 0, 0, 0], [3, 3, 2, 5])

    result, graph = helpers.check_pass(NarrowWeightGradients(), handmade(build, shapes),
                                       random_values(shapes), peak_rtol=1e-6)
    assert result.stats["narrowed"] == {"Conv2DBackpropFilter": 1}
    [grad] = graph.nodes_of(["Conv2DBackpropFilter"])
    assert graph.spec(grad.name).shape == (3, 3, 2, 5)
    assert graph.attr(grad, "explicit_paddings") == [0, 0, 1, 0, 2, 1, 0, 0]


def test_declines_a_matmul_that_is_not_a_kernel_gradient():
    shapes = {"a": (6, 2), "b": (2, 8)}
    graph = handmade(lambda a, b: tf.slice(tf.matmul(a, b), [0, 0], [3, 8]), shapes)
    result, _ = helpers.check_pass(NarrowWeightGradients(), graph)
    assert not result.modified
    assert "transpose_a=True" in next(iter(result.stats["declined"].values()))


def test_ignores_a_slice_that_does_not_start_at_zero():
    shapes = {"a": (2, 6), "b": (2, 8)}
    graph = handmade(lambda a, b: tf.slice(tf.matmul(a, b, transpose_a=True), [1, 0], [3, 8]),
                     shapes)
    result, _ = helpers.check_pass(NarrowWeightGradients(), graph)
    assert not result.modified and "declined" not in result.stats


# ---- end to end: optimize, export, train on the TFLite runtime -------------------------------
E2E_SCHEME = {"default": "frozen", "layers": {
    "fc_mid": {"weight_fraction": 0.5},
    "conv_1x1": {"weight_channels": 4, "bias": False},
    "dw": {"weight_fraction": 0.5},
    "conv_s2": {"weight_fraction": 0.34},
    "conv1d": {"weight_fraction": 0.25},
    "sep": {"weight_fraction": 0.5},
}}
RESHAPING_OPS = {"REVERSE_V2", "TRANSPOSE", "RESHAPE"}


def origin(subgraph, index, producers) -> str:
    """What a tensor is, walking back through ops that only move the elements of their
    first input: "concat" (a CONCATENATION output), "constant", or the op that computed it."""
    while True:
        tensor = subgraph.tensors[index]
        if tensor.constant:
            return "constant"
        op = producers.get(index)
        if op is None:
            return "input"
        if op.name == "CONCATENATION":
            return "concat"
        if op.name not in RESHAPING_OPS:
            return op.name
        index = op.inputs[0]


def test_end_to_end_no_full_kernel_gradient_and_frozen_channels_stay(tmp_path):
    model = models.every_layer_cnn(dropout=0.0)
    initial = {v.path: np.array(v.numpy()) for v in model.weights}
    program = tfpock.optimize(
        model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=keras.optimizers.Adam(0.01), scheme=E2E_SCHEME, batch_size=4, debug=True)
    path = program.export(tmp_path / "model.tflite")
    assert "narrowed={'Conv2DBackpropFilter': 3, 'DepthwiseConv2dNativeBackpropFilter': 2, " \
           "'MatMul': 1, 'Reshape(Conv2DBackpropFilter)': 1}" in program.report()

    # In the train subgraph no tensor has the full kernel shape of a partial weight: no
    # gradient computes one, and (split) the forward and input gradients read the trained
    # part and the frozen constant apart instead of their concatenation.
    scheme = Scheme.from_dict(E2E_SCHEME)
    partial = {w.path: (w.channels, w.axis) for w in scheme.resolve(model) if w.channels}
    assert len(partial) == 7
    shapes = {initial[p].shape for p in partial}
    with open(path, "rb") as f:
        train = model_file.read(f.read()).subgraph("train")
    producers = {out: op for op in train.operators for out in op.outputs}
    origins = {origin(train, i, producers) for i, t in enumerate(train.tensors)
               if t.shape in shapes}
    assert origins == set(), origins
    assert "split={'" in program.report()

    # 5 device steps: the frozen channels of each partial kernel are bit-identical to the
    # initial weights, the trained ones moved
    trainer = Trainer(path)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 3], np.int32)
    for _ in range(5):
        trainer.train(x, y)
    state = trainer.state()
    for p, (k, axis) in partial.items():
        frozen = np.take(initial[p], range(k, initial[p].shape[axis]), axis=axis)
        trained = np.take(initial[p], range(k), axis=axis)
        assert_close(np.take(state[p], range(k, state[p].shape[axis]), axis=axis), frozen,
                     where=p)
        assert not np.array_equal(np.take(state[p], range(k), axis=axis), trained), p
