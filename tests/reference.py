"""The stock TensorFlow step tfpock must match: GradientTape + keras.optimizers.SGD."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def freeze_as_scheme(model: keras.Model, trained_paths) -> None:
    """What a scheme means in Keras: a BatchNormalization that is trainable but of which
    nothing is trained gets ``trainable = False`` (inference mode), as tfpock runs it by
    default (mutates ``model``)."""
    trained = set(trained_paths)
    for layer in model.layers:
        if (isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
                and not any(v.path in trained for v in layer.weights)):
            layer.trainable = False


def tape_sgd_step(model: keras.Model, loss_fn, learning_rate: float, x, y,
                  trained_paths: list[str]) -> float:
    """One SGD step on ``model``'s weights named by ``trained_paths``, with the layers the
    scheme freezes frozen as Keras freezes them (mutates ``model``)."""
    freeze_as_scheme(model, trained_paths)
    by_path = {v.path: v for v in model.trainable_variables}
    watched = [by_path[p] for p in trained_paths]
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, watched)
    keras.optimizers.SGD(learning_rate).apply(grads, watched)
    return float(loss)


def weights_by_path(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy()) for v in model.variables}
