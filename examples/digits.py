"""Fine-tune a small CNN on handwritten digits, on the device runtime, next to Keras.

The main job of the README: ``python examples/digits.py``. It compiles the model with
``tfpock.optimize``, exports a builtin-only training model, trains it for ``--steps`` steps
with ``tfpock.runtime.Trainer`` (ai-edge-litert, no TensorFlow in the loop), and trains the
same model on the same batches with Keras ``train_on_batch`` for comparison. Data:
scikit-learn's ``load_digits`` (8x8 images, 1,797 samples, shipped inside the wheel).
"""
from __future__ import annotations

import os
import time

import numpy as np

BATCH = 32


def load_splits(seed: int = 0):
    """Train/test splits of the digits, images scaled to [0, 1], shape (N, 8, 8, 1)."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def build_model(seed: int = 0, hidden: int = 0):
    """The digits CNN; ``hidden`` > 0 adds a ReLU Dense layer of that width (named
    ``hidden``) before the classifier (examples/federated_digits.py uses 64)."""
    import keras
    from keras import layers
    keras.utils.set_random_seed(seed)
    head = [layers.Dense(hidden, activation="relu", name="hidden")] if hidden else []
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_a"),
        layers.MaxPooling2D(2, name="pool"),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_b"),
        layers.Flatten(name="flatten"),
        *head,
        layers.Dense(10, name="classifier"),
    ], name="digits_cnn")


def batches(x, y, steps: int, seed: int = 1):
    """``steps`` batches of BATCH samples, reshuffled each epoch (same for every contender)."""
    rng = np.random.default_rng(seed)
    order = np.array([], dtype=int)
    for _ in range(steps):
        if len(order) < BATCH:
            order = np.concatenate([order, rng.permutation(len(x))])
        take, order = order[:BATCH], order[BATCH:]
        yield x[take], y[take]


def accuracy(predict, x, y) -> float:
    """Accuracy with a fixed-batch predictor (the last partial batch is padded)."""
    correct = 0
    for start in range(0, len(x), BATCH):
        chunk = x[start:start + BATCH]
        padded = np.concatenate([chunk, np.zeros((BATCH - len(chunk), *chunk.shape[1:]),
                                                 chunk.dtype)])
        predicted = np.argmax(predict(padded)[:len(chunk)], -1)
        correct += int(np.sum(predicted == y[start:start + BATCH]))
    return correct / len(x)


def train_on_device(model_path: str, train, steps: int) -> list[float]:
    from tfpock.runtime import Trainer
    trainer = Trainer(model_path)
    return [trainer.train(xb, yb)["loss"] for xb, yb in batches(*train, steps)], trainer


def train_with_keras(train, steps: int, learning_rate: float, scheme: str):
    import keras
    model = build_model()
    if scheme != "full":
        raise ValueError("the Keras comparison trains every layer (scheme 'full')")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    losses = [float(model.train_on_batch(xb, yb)) for xb, yb in batches(*train, steps)]
    return losses, model


def compile_and_export(path: str, learning_rate: float, scheme: str = "full"):
    import keras
    import tfpock
    program = tfpock.optimize(build_model(),
                              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                              optimizer=keras.optimizers.SGD(learning_rate),
                              scheme=scheme, batch_size=BATCH)
    program.export(path)
    return program


def main(argv):
    del argv
    from absl import flags
    f = flags.FLAGS
    os.makedirs(os.path.dirname(os.path.abspath(f.out)), exist_ok=True)
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")  # SavedModel export chatter
    train, test = load_splits()
    started = time.perf_counter()
    program = compile_and_export(f.out, f.learning_rate)
    print(program.report())
    print(f"compiled and exported {f.out} ({os.path.getsize(f.out):,} bytes) in "
          f"{time.perf_counter() - started:.1f} s")
    device_losses, trainer = train_on_device(f.out, train, f.steps)
    keras_losses, keras_model = train_with_keras(train, f.steps, f.learning_rate, "full")
    for step in range(0, f.steps, max(1, f.steps // 10)):
        print(f"step {step:4d}  loss on device {device_losses[step]:.4f}  "
              f"keras {keras_losses[step]:.4f}")
    print(f"final loss (mean of last 20 steps): device {np.mean(device_losses[-20:]):.4f}, "
          f"keras {np.mean(keras_losses[-20:]):.4f}")
    print(f"test accuracy: device {accuracy(trainer.infer, *test):.3f}, "
          f"keras {accuracy(lambda b: keras_model.predict_on_batch(b), *test):.3f}")


if __name__ == "__main__":
    from absl import app, flags
    flags.DEFINE_string("out", "out/digits.tflite", "where to write the training model")
    flags.DEFINE_integer("steps", 200, "training steps on the device runtime")
    flags.DEFINE_float("learning_rate", 0.1, "SGD learning rate")
    app.run(main)
