"""The benchmark's models: small vision and sensor networks of the sizes devices fine-tune.

Every model has its BatchNormalization layers frozen (``trainable=False``, moving statistics
calibrated on random inputs as in ``tfpock/testing/models.py``; with untrained identity
statistics the activations vanish with depth and the backward pass works on ~0), because
fine-tuning on a device with batches of 1-8 keeps BatchNorm in inference mode.

Each :class:`BenchModel` names its sparse scheme, ``last``: the last ``last_n`` layers with
trainable weights (so, BN being frozen, for MobileNetV2 ``Conv_1`` and ``predictions``: the
issue's "last 4 layers" with the two BatchNorms between them frozen). The scheme compared is
always that one and "full".

Adding a model (the BERT- and Llama-style models of the transformer issue go here): write a
builder and add a ``BenchModel`` to ``MODELS``; a token model sets ``input_dtype="int32"``
and ``vocab`` (the workers then feed random token ids below ``vocab``). The harness, workers
and report need nothing else.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import numpy as np
from keras import layers

from tfpock.testing import models as testing_models


def float_inputs(shape: tuple[int, ...], batch: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-1, 1, (batch, *shape)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class BenchModel:
    name: str
    build: Callable[[], keras.Model]
    input_shape: tuple[int, ...]
    classes: int
    last_n: int
    description: str
    quick: bool = False          # part of --quick
    input_dtype: str = "float32"  # "int32" for token ids (uniform in [0, vocab))
    vocab: int = 0

    def data_spec(self) -> dict:
        """What a worker needs to make batches, without importing Keras."""
        return {"input_shape": list(self.input_shape), "input_dtype": self.input_dtype,
                "vocab": self.vocab, "classes": self.classes}


def _freeze_bn(model: keras.Model, size: tuple[int, ...], seed: int,
               freeze: bool = True) -> keras.Model:
    """Calibrates the BatchNorm statistics; ``freeze`` sets the layers ``trainable=False``
    (False: as Keras builds them, trainable, for bench/studies/depth_sweep.py)."""
    testing_models.calibrate_batchnorm(model,
                                       float_inputs(size, 16, np.random.default_rng(seed)))
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = not freeze
    return model


def mobilenet_v2(seed: int = 0, freeze_bn: bool = True) -> keras.Model:
    """MobileNetV2 alpha 0.35 at 128x128, 10 classes: the tests' builder at the suite's size."""
    return testing_models.mobilenet_v2(seed, size=128, classes=10, freeze_bn=freeze_bn)


def _conv_bn(x, filters, kernel, strides, name, relu=True):
    x = layers.Conv2D(filters, kernel, strides, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def resnet18(seed: int = 0, widths=(32, 64, 128, 256), size: int = 96,
             freeze_bn: bool = True) -> keras.Model:
    """ResNet-18's layout (7x7/2 stem, max pool, BasicBlocks 2-2-2-2, 1x1 projection
    shortcuts) at half width (2.8 M parameters instead of 11 M), so that the full-scheme
    contenders fit the suite's time budget on two cores."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3))
    x = _conv_bn(inp, widths[0], 7, 2, "stem")
    x = layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)
    for stage, width in enumerate(widths, start=1):
        for block in range(2):
            name = f"layer{stage}_{block}"
            strides = 2 if block == 0 and stage > 1 else 1
            shortcut = x
            if strides != 1 or x.shape[-1] != width:
                shortcut = _conv_bn(x, width, 1, strides, f"{name}_down", relu=False)
            h = _conv_bn(x, width, 3, strides, f"{name}_conv1")
            h = _conv_bn(h, width, 3, 1, f"{name}_conv2", relu=False)
            x = layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([h, shortcut]))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(10, name="fc")(x)
    return _freeze_bn(keras.Model(inp, out, name="resnet18_half"), (size, size, 3), seed,
                      freeze_bn)


# MCUNet-style: (expand ratio, output channels, repeats, first stride, kernel)
_MCUNET_BLOCKS = ((1, 8, 1, 1, 3), (4, 16, 2, 2, 5), (4, 24, 2, 2, 7), (4, 40, 3, 2, 5),
                  (4, 48, 2, 1, 3), (6, 96, 2, 2, 5))


def mcunet(seed: int = 0, size: int = 96) -> keras.Model:
    """An MCUNet-like network: MobileNetV2 inverted residuals with mixed kernel sizes (3/5/7)
    and small widths (8-96 channels), 96x96 input, as found by MCUNet's search for
    microcontrollers (the exact searched architecture is not reproduced)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3))
    x = _conv_bn(inp, 16, 3, 2, "stem")
    index = 0
    for expand, channels, repeats, stride, kernel in _MCUNET_BLOCKS:
        for r in range(repeats):
            name = f"mb{index}"
            index += 1
            h = x
            if expand != 1:
                h = _conv_bn(h, x.shape[-1] * expand, 1, 1, f"{name}_expand")
            h = layers.DepthwiseConv2D(kernel, stride if r == 0 else 1, padding="same",
                                       use_bias=False, name=f"{name}_dw")(h)
            h = layers.ReLU(6.0, name=f"{name}_dw_relu")(
                layers.BatchNormalization(name=f"{name}_dw_bn")(h))
            h = _conv_bn(h, channels, 1, 1, f"{name}_project", relu=False)
            x = layers.Add(name=f"{name}_add")([x, h]) if h.shape == x.shape else h
    x = _conv_bn(x, 160, 1, 1, "head")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(10, name="classifier")(x)
    return _freeze_bn(keras.Model(inp, out, name="mcunet_style"), (size, size, 3), seed)


def sensor_cnn1d(seed: int = 0) -> keras.Model:
    """A 1-D CNN for 6-channel series of 100 steps (a watch's accelerometer and gyroscope,
    like the UEA BasicMotions data), 4 activities."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((100, 6)),
        layers.Conv1D(32, 5, padding="same", activation="relu", name="conv1"),
        layers.MaxPooling1D(2, name="pool1"),
        layers.Conv1D(64, 5, padding="same", activation="relu", name="conv2"),
        layers.MaxPooling1D(2, name="pool2"),
        layers.Conv1D(64, 3, padding="same", activation="relu", name="conv3"),
        layers.GlobalAveragePooling1D(name="gap"),
        layers.Dense(32, activation="relu", name="fc1"),
        layers.Dense(4, name="logits"),
    ], name="sensor_cnn1d")


MODELS = {m.name: m for m in (
    BenchModel("mobilenet_v2_035_128", mobilenet_v2, (128, 128, 3), 10, 2,
               "MobileNetV2 alpha 0.35, 128x128x3, 10 classes, BN frozen", quick=True),
    BenchModel("resnet18_half_96", resnet18, (96, 96, 3), 10, 2,
               "ResNet-18 layout (BasicBlocks 2-2-2-2) at half width, 96x96x3, BN frozen"),
    BenchModel("mcunet_style_96", mcunet, (96, 96, 3), 10, 2,
               "MCUNet-style inverted residuals (k 3/5/7, 8-96 channels), 96x96x3, BN frozen"),
    BenchModel("sensor_cnn1d", sensor_cnn1d, (100, 6), 4, 2,
               "1-D CNN, 6 channels x 100 steps (BasicMotions-like), 4 classes", quick=True),
)}
