"""Trace: a Keras model, loss and optimizer become GraphDefs of one training step.

The step is written as a *pure* function of the batch and of every model weight
(``model.stateless_call``), so that weights enter the graph as placeholders the passes can
freeze into constants or keep as parameters, and every update is an output rather than a
side effect:

    train(x, y, weights...) -> loss, new value of each trained weight
    infer(x, weights...)     -> model output

Gradients are derived by ``tf.GradientTape`` for *every* Keras-trainable weight; the scheme
only chooses which updates are outputs, so the prune pass can show what sparse training
removes. Ops created while deriving gradients are recorded as the graph's ``backward`` set.
"""
from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from graph_passes.ir import Graph
from tfpock import layers as layer_table
from tfpock.errors import UnsupportedModelError
from tfpock.losses import label_spec
from tfpock.optimizers import CompiledOptimizer


@dataclasses.dataclass(frozen=True)
class Weight:
    """One model variable as the compiler sees it."""
    path: str          # keras variable.path, the checkpoint key
    layer: str         # name of the layer that owns it
    value: np.ndarray  # value at compile time
    trained: bool      # updated by the scheme


@dataclasses.dataclass
class TracedStep:
    train: Graph
    infer: Graph
    weights: list[Weight]
    x_spec: tf.TensorSpec
    y_spec: tf.TensorSpec
    output_spec: tf.TensorSpec


def check_model(model: keras.Model) -> None:
    """Refuses what this version cannot compile, naming the layer or property at fault."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UnsupportedModelError(
            f"model {model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} "
            "outputs; only single-input single-output models are supported")
    for layer in layer_table.leaf_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            raise UnsupportedModelError(
                f"BatchNormalization layer {layer.name!r} is trainable: training BatchNorm "
                "(batch statistics) is not supported yet; set layer.trainable = False to "
                "train with its moving statistics")
        dtype = getattr(layer, "compute_dtype", "float32")
        if dtype != "float32":
            raise UnsupportedModelError(f"layer {layer.name!r} computes in {dtype}; only "
                                        "float32 models are supported")
    paths = [v.path for v in model.variables]
    duplicates = sorted({p for p in paths if paths.count(p) > 1})
    if duplicates:
        raise UnsupportedModelError(f"model variables share paths {duplicates}; tfpock keys "
                                    "weights and checkpoints by variable.path")


def _owner_layers(model: keras.Model) -> dict[int, str]:
    """id(variable) -> name of the leaf layer owning it."""
    owners = {}
    for layer in layer_table.leaf_layers(model):
        for var in layer.weights:
            owners[id(var)] = layer.name
    return owners


def _seed_states(model: keras.Model) -> set[int]:
    """ids of SeedGenerator state variables: updated by dropout, safe to freeze because the
    lowering turns seeded random ops into stateful ones."""
    ids = set()
    for layer in layer_table.leaf_layers(model):
        for value in vars(layer).values():
            if isinstance(value, keras.random.SeedGenerator):
                ids.add(id(value.state))
    return ids


def trace(model: keras.Model, loss: keras.losses.Loss, optimizer: CompiledOptimizer,
          batch_size: int, trained_paths: list[str]) -> TracedStep:
    """Traces the training and inference steps of ``model`` at a fixed ``batch_size``."""
    check_model(model)
    trainable = list(model.trainable_variables)
    frozen_vars = list(model.non_trainable_variables)
    everything = trainable + frozen_vars
    owners = _owner_layers(model)
    trained_set = set(trained_paths)
    weights = [Weight(v.path, owners.get(id(v), ""), np.array(v.numpy()),
                      v.path in trained_set) for v in everything]
    weight_specs = [tf.TensorSpec(v.shape, v.dtype) for v in everything]

    in_shape = tuple(model.inputs[0].shape[1:])
    out_shape = tuple(model.outputs[0].shape[1:])
    if any(d is None for d in in_shape + out_shape):
        raise UnsupportedModelError(f"model {model.name!r} has dynamic dimensions (input "
                                    f"{in_shape}, output {out_shape}); tfpock compiles static "
                                    "shapes")
    x_spec = tf.TensorSpec((batch_size, *in_shape), model.inputs[0].dtype, name="x")
    y_spec = label_spec(loss, batch_size, out_shape)
    output_spec = tf.TensorSpec((batch_size, *out_shape), tf.float32, name="output")
    n_train = len(trainable)
    seed_states = _seed_states(model)

    def split(ws):
        return list(ws[:n_train]), list(ws[n_train:])

    backward: set[str] = set()

    def train_step(x, y, *ws):
        t, n = split(ws)
        with tf.GradientTape() as tape:
            tape.watch(t)
            out, new_n, reg = model.stateless_call(t, n, x, training=True, return_losses=True)
            value = loss(y, out)
            if reg:
                value = value + tf.add_n(reg)
        _check_state_untouched(frozen_vars, n, new_n, seed_states)
        graph = tf.compat.v1.get_default_graph()
        before = {op.name for op in graph.get_operations()}
        grads = tape.gradient(value, t)
        backward.update(op.name for op in graph.get_operations() if op.name not in before)
        updates = []
        for var, w, g in zip(trainable, t, grads):
            if g is None:
                raise UnsupportedModelError(f"weight {var.path!r} gets no gradient from the "
                                            "loss; freeze its layer or remove it")
            updates.append(optimizer.apply(w, g))
        return [value] + updates

    def infer_step(x, *ws):
        t, n = split(ws)
        out, _ = model.stateless_call(t, n, x, training=False)
        return out

    train_fn = tf.function(train_step, autograph=False).get_concrete_function(
        x_spec, y_spec, *weight_specs)
    infer_fn = tf.function(infer_step, autograph=False).get_concrete_function(
        x_spec, *weight_specs)
    paths = [w.path for w in weights]
    train_in = [t.name for t in train_fn.graph.inputs]
    train_out = [t.name for t in train_fn.graph.outputs]
    train_graph = Graph(
        train_fn.graph.as_graph_def(add_shapes=True),
        inputs={"x": train_in[0], "y": train_in[1]},
        outputs={"loss": train_out[0],
                 **{f"update:{v.path}": ref for v, ref in zip(trainable, train_out[1:])
                    if v.path in trained_set}},
        params=dict(zip(paths, train_in[2:])),
        backward=backward)
    infer_in = [t.name for t in infer_fn.graph.inputs]
    infer_graph = Graph(infer_fn.graph.as_graph_def(add_shapes=True),
                        inputs={"x": infer_in[0]},
                        outputs={"output": infer_fn.graph.outputs[0].name},
                        params=dict(zip(paths, infer_in[1:])))
    return TracedStep(train_graph, infer_graph, weights, x_spec, y_spec, output_spec)


def _check_state_untouched(frozen_vars, before, after, seed_states) -> None:
    """A training step must not update non-trainable state this version cannot carry
    (BatchNorm moving statistics are refused earlier; seed generators are handled)."""
    for var, old, new in zip(frozen_vars, before, after):
        if new is not old and id(var) not in seed_states:
            raise UnsupportedModelError(
                f"the training step updates non-trainable variable {var.path!r}; state "
                "updated in training (other than dropout seeds) is not supported yet")
