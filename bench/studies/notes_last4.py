"""The project's first 'last 4' comparison, with tfpock: MobileNetV2 0.35 @128 with
block_16_project_BN, Conv_1, Conv_1_bn and predictions trainable (BatchNorm in training
mode: batch statistics), everything else frozen; SGD.

    taskset -c 0 python -m bench.studies.notes_last4 --batch 1
    taskset -c 0 python -m bench.studies.notes_last4 --batch 8

Prints the median step time of a ``tf.function`` + ``GradientTape`` step and of tfpock's
exported model on ai-edge-litert (its ``train`` and ``infer`` signatures), in one process
(run it pinned to one core). A quick check beside ``bench/run.py``, whose models freeze every
BatchNorm; it answers whether the issue's targets hold for that first scheme.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
from absl import app, flags

from bench import cli

FLAGS = flags.FLAGS
LAST4 = ("block_16_project_BN", "Conv_1", "Conv_1_bn", "predictions")


def build():
    from tfpock.testing import models
    model = models.mobilenet_v2(size=128)
    for layer in model.layers:
        layer.trainable = layer.name in LAST4
    return model


def define_flags() -> None:
    """The command line (run as a script only: ``bench/cli.py`` says why)."""
    flags.DEFINE_integer("batch", 1, "batch size")


def main(argv):
    del argv
    import keras
    import tensorflow as tf
    import tfpock
    from tfpock.runtime import Trainer
    batch = FLAGS.batch
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, 128, 128, 3)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    model, optimizer = build(), keras.optimizers.SGD(0.01)

    @tf.function
    def tf_step():
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        grads = tape.gradient(value, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return value

    tf_ms = cli.median_ms(tf_step, reps=20)
    program = tfpock.optimize(build(), loss=loss, optimizer=keras.optimizers.SGD(0.01),
                              scheme="full", batch_size=batch)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "last4.tflite")
        program.export(path)
        trainer = Trainer(path, num_threads=1)
        train_ms = cli.median_ms(lambda: trainer.train(x, y), reps=20)
        infer_ms = cli.median_ms(lambda: trainer.infer(x), reps=20)
    print(f"batch {batch}: tf.function + GradientTape {tf_ms:.2f} ms; tfpock train "
          f"{train_ms:.2f} ms ({tf_ms / train_ms:.1f}x), tfpock infer {infer_ms:.2f} ms; "
          f"trained: {', '.join(program.trained_paths)}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
