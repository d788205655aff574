"""Shared helpers of the per-pass tests: tiny models, tracing, running a Graph in TF, and
``check_pass``, which runs a pass and checks what it must keep.

Graphs run in a ``tf.compat.v1.Session`` with Grappler switched off, so what is compared is
the graph a pass produced, not TensorFlow's own rewrite of it: with Grappler on, freezing
MobileNetV2 ("full") moves an update by 0.026, because Grappler folds the now-constant
BatchNorm into the convolutions (measured; the tiny models here are bit-identical either way).
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from graph_passes.ir import Graph
from graph_passes.pass_base import Pass, PassRecord, PassResult, Sequential
from tests.numerics import assert_close
from tfpock.losses import resolve_loss
from tfpock.optimizers import compile_optimizer
from tfpock.scheme import Scheme
from tfpock.tracing import TracedStep, trace

BATCH = 2


# ---- tiny models -------------------------------------------------------------------------
def mlp_bn(seed: int = 0) -> keras.Model:
    """Dense -> frozen BatchNormalization -> Dense: four non-trainable weights."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6,)),
        layers.Dense(8, activation="relu", name="hidden"),
        layers.BatchNormalization(trainable=False, name="bn"),
        layers.Dense(3, name="logits"),
    ], name="mlp_bn")


def tanh_mlp(seed: int = 0) -> keras.Model:
    """No op of its training step has a lowering rule (TanhGrad and MatMul are builtins)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6,)),
        layers.Dense(8, activation="tanh", name="hidden"),
        layers.Dense(3, name="logits"),
    ], name="tanh_mlp")


def small_cnn(seed: int = 0) -> keras.Model:
    """Two plain convolutions, a max-pool and a Dense; every weight trainable."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 2)),
        layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_a"),
        layers.MaxPooling2D(2),
        layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_b"),
        layers.Flatten(),
        layers.Dense(3, name="logits"),
    ], name="small_cnn")


def lowering_cnn(seed: int = 0) -> keras.Model:
    """One layer per lowering family: conv, depthwise, dilated conv, pooling, activations."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 2)),
        layers.Conv2D(4, 3, padding="same", activation="relu", name="conv"),
        layers.MaxPooling2D(2),                                            # 4x4x4
        layers.DepthwiseConv2D(3, padding="same", name="dw"),
        layers.ReLU(max_value=6.0),
        layers.Conv2D(4, 3, padding="same", dilation_rate=2, activation="elu",
                      name="conv_dil"),
        layers.AveragePooling2D(2),                                        # 2x2x4
        layers.LeakyReLU(negative_slope=0.1),
        layers.Flatten(),
        layers.Dense(3, name="logits"),
    ], name="lowering_cnn")


def dropout_mlp(seed: int = 0) -> keras.Model:
    """Its inference graph has a parameter nothing reads: the dropout seed state."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6,)),
        layers.Dense(8, name="hidden"),
        layers.Dropout(0.5),
        layers.Dense(3, name="logits"),
    ], name="dropout_mlp")


# ---- tracing -----------------------------------------------------------------------------
def traced(model: keras.Model, scheme="full", batch_size: int = BATCH,
           optimizer: keras.optimizers.Optimizer | None = None) -> TracedStep:
    loss = resolve_loss(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    optimizer = compile_optimizer(optimizer or keras.optimizers.SGD(0.1))
    trained = Scheme.parse(scheme, model).resolve(model)
    return trace(model, loss, optimizer, batch_size, trained)


def frozen_values(step: TracedStep) -> dict[str, np.ndarray]:
    """What the pipeline freezes: every weight the scheme does not train."""
    return step.frozen


def feeds(step: TracedStep, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch (``x``, ``y``, ``learning_rate``) and every parameter's value, keyed by
    signature name or parameter key."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, step.x_spec.shape).astype(np.float32)
    classes = step.output_spec.shape[-1]
    y = rng.integers(0, classes, step.y_spec.shape).astype(np.int32)
    return {"x": x, "y": y, "learning_rate": np.array([0.1], np.float32), **step.params}


# ---- running and comparing ---------------------------------------------------------------
def _session_config() -> tf.compat.v1.ConfigProto:
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    config.graph_options.optimizer_options.opt_level = tf.compat.v1.OptimizerOptions.L0
    config.graph_options.optimizer_options.do_constant_folding = False
    return config


def run(graph: Graph, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs ``graph`` in TF, feeding its signature inputs and remaining parameters from
    ``values``; returns every signature output by name."""
    scratch = graph.to_tf_graph()
    fed = {ref: values[key] for key, ref in graph.inputs.items()}
    fed.update({ref: values[path] for path, ref in graph.params.items()})
    names = sorted(graph.outputs)
    with tf.compat.v1.Session(graph=scratch, config=_session_config()) as session:
        results = session.run([graph.outputs[k] for k in names], fed)
    return dict(zip(names, results))


def check_pass(transform: Pass | Sequential, graph: Graph,
               values: dict[str, np.ndarray] | None = None, *, peak_rtol: float = 0.0,
               keeps_params: bool = True) -> tuple[PassResult | list[PassRecord], Graph]:
    """Runs ``transform`` on a copy of ``graph`` and checks what every pass keeps: the
    signature (inputs and output names); the parameters, unless it freezes some
    (``keeps_params=False``); with ``values`` (``feeds``), every output's numbers, equal to
    those of ``graph`` or within ``peak_rtol`` (tests/numerics.py). Returns what it said it
    did (a Pass's PassResult, a Sequential's records) and the new graph, for the test to
    assert how often it fired and the structure it left."""
    if isinstance(transform, Sequential):
        after, result = transform(graph)
    else:
        after = graph.copy()
        result = transform.run(after)
    assert signature(after) == signature(graph), (
        f"signature changed: {signature(graph)} -> {signature(after)}")
    if keeps_params:
        assert after.params == graph.params, (
            f"parameters changed: {sorted(graph.params)} -> {sorted(after.params)}")
    if values is not None:
        assert_close(run(after, values), run(graph, values), peak_rtol=peak_rtol)
    return result, after


def signature(graph: Graph) -> tuple[dict, list]:
    return dict(graph.inputs), sorted(graph.outputs)


def serialized(graph: Graph) -> tuple:
    """Everything a Graph holds, comparable with ``==`` (node order included)."""
    return (graph.to_graph_def().SerializeToString(deterministic=True), dict(graph.inputs),
            dict(graph.outputs), dict(graph.params), frozenset(graph.backward))


def backward_histogram(graph: Graph) -> dict[str, int]:
    """Op types of the gradient ops still in the graph."""
    hist: dict[str, int] = {}
    for name in graph.backward:
        op = graph.nodes[name].op
        hist[op] = hist.get(op, 0) + 1
    return hist
