"""Keras losses tfpock compiles: loss class -> the label (y) tensor the train signature takes.

The loss object itself is called while tracing, so its reduction and options are Keras' own;
this table only fixes the static spec of ``y`` for the exported signature.
"""
from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from tfpock.errors import UnsupportedModelError

# y spec from (batch size, model output shape without batch)
# sparse: one class index per output row (per token for a sequence of logits)
_SPARSE = lambda b, out: tf.TensorSpec((b, *out[:-1]), tf.int32, name="y")
_DENSE = lambda b, out: tf.TensorSpec((b, *out), tf.float32, name="y")

LABEL_SPECS: dict[type, Callable[[int, tuple], tf.TensorSpec]] = {
    keras.losses.SparseCategoricalCrossentropy: _SPARSE,
    keras.losses.CategoricalCrossentropy: _DENSE,
    keras.losses.BinaryCrossentropy: _DENSE,
    keras.losses.MeanSquaredError: _DENSE,
    keras.losses.MeanAbsoluteError: _DENSE,
    keras.losses.Huber: _DENSE,
}

_BY_NAME = {
    "sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
    "categorical_crossentropy": keras.losses.CategoricalCrossentropy,
    "binary_crossentropy": keras.losses.BinaryCrossentropy,
    "mse": keras.losses.MeanSquaredError,
    "mean_squared_error": keras.losses.MeanSquaredError,
    "mae": keras.losses.MeanAbsoluteError,
    "mean_absolute_error": keras.losses.MeanAbsoluteError,
    "huber": keras.losses.Huber,
}


def resolve_loss(loss) -> keras.losses.Loss:
    """A Keras ``Loss`` object from an object or a name; refuses what has no label spec."""
    if isinstance(loss, str):
        if loss not in _BY_NAME:
            raise UnsupportedModelError(f"loss {loss!r} is not supported; supported names: "
                                        f"{', '.join(sorted(_BY_NAME))}")
        loss = _BY_NAME[loss]()
    if type(loss) not in LABEL_SPECS:
        supported = ", ".join(cls.__name__ for cls in LABEL_SPECS)
        raise UnsupportedModelError(f"loss {type(loss).__name__} is not supported; "
                                    f"supported: {supported}")
    return loss


def label_spec(loss: keras.losses.Loss, batch_size: int, output_shape: tuple) -> tf.TensorSpec:
    return LABEL_SPECS[type(loss)](batch_size, output_shape)


def loss_config(loss: keras.losses.Loss) -> dict:
    """The loss's options as JSON, for the exported metadata (the device evaluates the loss
    from ``infer``'s outputs with them, ``tfpock/runtime/losses.py``). ``get_config`` leaves
    out the options a ``LossFunctionWrapper`` passes to its function (Huber's ``delta``), so
    its ``_fn_kwargs`` are read too: private, and kept to this one place."""
    config = dict(loss.get_config())
    for key, value in getattr(loss, "_fn_kwargs", {}).items():
        if isinstance(value, (bool, int, float, str)) or value is None:
            config.setdefault(key, value)
    return config
