"""The stock TensorFlow step tfpock must match: GradientTape + keras.optimizers.SGD."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def tape_sgd_step(model: keras.Model, loss_fn, learning_rate: float, x, y,
                  trained_paths: list[str]) -> float:
    """One SGD step on ``model``'s weights named by ``trained_paths`` (mutates ``model``)."""
    by_path = {v.path: v for v in model.trainable_variables}
    watched = [by_path[p] for p in trained_paths]
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, watched)
    keras.optimizers.SGD(learning_rate).apply(grads, watched)
    return float(loss)


def weights_by_path(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy()) for v in model.variables}
