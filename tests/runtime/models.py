"""Host side: the model files the runtime tests use (needs TensorFlow; run once per session)."""
from __future__ import annotations

import os

import numpy as np


def export_models(folder: str | os.PathLike) -> dict[str, str]:
    """Writes into ``folder`` and returns {name: path}:

    * ``mlp``: ``tfpock.testing.models.mlp()``, SGD, batch 4, scheme full;
    * ``mlp_again``: the same, exported again at batch 8 (same fingerprint);
    * ``mlp_last1``: the same model with scheme ``last:1`` (another fingerprint);
    * ``wide``: a 20-512-512-5 MLP (1.1 MB of weights: a save takes milliseconds, so a kill
      lands inside one);
    * ``foreign``: a valid TFLite file that is not tfpock's (a converted ``tf.function``).
    """
    import keras
    import tensorflow as tf

    import tfpock
    from tfpock.testing import models

    folder = os.fspath(folder)

    def export(name, model, **options):
        program = tfpock.optimize(model, loss="sparse_categorical_crossentropy",
                                  optimizer=keras.optimizers.SGD(0.1),
                                  batch_size=options.pop("batch_size", 4), **options)
        path = os.path.join(folder, f"{name}.tflite")
        program.export(path)
        return path

    paths = {"mlp": export("mlp", models.mlp()),
             "mlp_again": export("mlp_again", models.mlp(), batch_size=8),
             "mlp_last1": export("mlp_last1", models.mlp(), scheme="last:1")}
    keras.utils.set_random_seed(0)
    wide = keras.Sequential([keras.Input((20,)), keras.layers.Dense(512, activation="relu"),
                             keras.layers.Dense(512, activation="relu"), keras.layers.Dense(5)],
                            name="wide")
    paths["wide"] = export("wide", wide)

    @tf.function(input_signature=[tf.TensorSpec((4, 20), tf.float32)])
    def double(x):
        return {"output": x * 2.0 + 1.0}

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [double.get_concrete_function()], double)
    paths["foreign"] = os.path.join(folder, "foreign.tflite")
    with open(paths["foreign"], "wb") as f:
        f.write(converter.convert())
    return paths


def batch(seed: int = 0, size: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((size, 20)).astype(np.float32),
            rng.integers(0, 5, size).astype(np.int32))
