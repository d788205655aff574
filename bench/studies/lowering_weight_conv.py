"""Times convolutions with a runtime kernel (a trained weight) on ai-edge-litert.

Part 1, the forward Conv2D:
Three forms per case, each traced alone at fixed shapes, converted with TFLITE_BUILTINS only,
invoked after warm-up, median printed (one thread): CONV_2D with the kernel as an input (what
the converter emits for a trained kernel), ``WeightConv2DRule``'s im2col patches + matmul,
and CONV_2D with a constant kernel (XNNPACK's, the floor). Run from the repository root:
``python -m bench.studies.lowering_weight_conv``; the figures go into the docstring of
``graph_passes/lowering/conv.py`` (WeightConv2DRule).

Part 2, the stride-1 input gradient (Conv2DBackpropInput): TRANSPOSE_CONV (what the converter
emits), the same as a CONV_2D with the flipped kernel, and ``input_grad_matmul``'s patches of
the padded ``dy`` + one matmul (Conv2DBackpropInputRule's stride-1 form).

Part 3, the 1x1 stride-1 input gradient of a trained kernel (MobileNetV2's head convs):
TRANSPOSE_CONV with the runtime kernel (what the converter emits), the same with a constant
kernel (a frozen layer's), and ``input_grad_1x1``'s batch matmul with the 4-D kernel as it is.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from absl import app
from ai_edge_litert.interpreter import Interpreter

from bench.studies.lowering_conv_filter import median_ms
from graph_passes.lowering.conv import (
    Window, filter_patches, flip_spatial, input_grad_1x1, input_grad_matmul, pad_spatial)
from tfpock.testing.litert import convert_builtins_only

# name, N, H, Ci, Co, k (square inputs and kernels, stride 1, SAME)
CASES = [
    ("1x1 112->1280, 4x4, N=1", 1, 4, 112, 1280, 1),
    ("3x3 64->64, 8x8, N=1", 1, 8, 64, 64, 3),
    ("3x3 64->64, 12x12, N=8", 8, 12, 64, 64, 3),
    ("3x3 48->48, 16x16, N=8", 8, 16, 48, 48, 3),
]


def patches_matmul(x, w):
    n, h, _, ci = x.shape
    k, co = w.shape[0], w.shape[3]
    pad = (k - 1) // 2
    win = Window((k, k), (1, 1), (1, 1), ((pad, k - 1 - pad), (pad, k - 1 - pad)))
    patches = filter_patches(pad_spatial(x, win.pads), win, (h, h))
    y = tf.matmul(tf.reshape(patches, [-1, k * k * ci]), tf.reshape(w, [k * k * ci, co]))
    return tf.reshape(y, [n, h, h, co])


# name, N, H, Ci, Co (3x3 kernels, stride 1, SAME): ResNet-18-style half width, batch 8
INPUT_GRAD_CASES = [
    ("3x3 64->64, 12x12, N=8", 8, 12, 64, 64),
    ("3x3 128->128, 6x6, N=8", 8, 6, 128, 128),
    ("3x3 32->32, 24x24, N=8", 8, 24, 32, 32),
    ("3x3 256->256, 3x3, N=8", 8, 3, 256, 256),
]


def time_forms(forms: dict, ref: np.ndarray, name: str) -> list[float]:
    """Median ms of each form (fn, specs, arrays), after checking it against ``ref``."""
    row = []
    for fn, specs, arrays in forms.values():
        runner = Interpreter(model_content=convert_builtins_only(fn, specs),
                             num_threads=1).get_signature_runner("serving_default")
        feeds = {f"in{i:02d}": a for i, a in enumerate(arrays)}
        assert np.allclose(runner(**feeds)["out00"], ref, rtol=1e-4, atol=1e-2), name
        row.append(median_ms(lambda: runner(**feeds), reps=300, warm=30))
    return row


def input_grad_case(n: int, h: int, ci: int, co: int, k: int):
    """(dy, kernel, dx shape, specs, arrays) of a square stride-1 input-gradient case."""
    rng = np.random.default_rng(0)
    dy = rng.random((n, h, h, co), np.float32)
    w = rng.random((k, k, ci, co), np.float32)
    return dy, w, [n, h, h, ci], [tf.TensorSpec(dy.shape), tf.TensorSpec(w.shape)], [dy, w]


def input_gradients():
    print(f"\n{'input gradient':<28} {'TRANSPOSE_CONV':>16} {'CONV_2D flipped':>16} "
          f"{'patches+matmul':>16}")
    for name, n, h, ci, co in INPUT_GRAD_CASES:
        dy, w, shape, specs, arrays = input_grad_case(n, h, ci, co, 3)
        full = Window((3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)))
        forms = {
            "transpose_conv": (lambda d, k: tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.constant(shape), filter=k, out_backprop=d, strides=[1, 1, 1, 1],
                padding="SAME"), specs, arrays),
            "conv": (lambda d, k: tf.nn.conv2d(d, flip_spatial(tf.transpose(k, [0, 1, 3, 2])), 1,
                                               "SAME"), specs, arrays),
            "patches": (lambda d, k: input_grad_matmul(k, d, full, shape), specs, arrays),
        }
        ref = tf.raw_ops.Conv2DBackpropInput(input_sizes=shape, filter=w, out_backprop=dy,
                                             strides=[1, 1, 1, 1], padding="SAME").numpy()
        row = time_forms(forms, ref, name)
        print(f"{name:<28}" + "".join(f"{v:>13.2f} ms" for v in row))


# name, N, H, Ci, Co (1x1 kernels, stride 1): MobileNetV2 0.35 @128's Conv_1 and
# block_16_project, at batch 1 and 8
INPUT_GRAD_1X1_CASES = [
    ("1x1 112->1280, 4x4, N=1", 1, 4, 112, 1280),
    ("1x1 336->112, 4x4, N=1", 1, 4, 336, 112),
    ("1x1 112->1280, 4x4, N=8", 8, 4, 112, 1280),
    ("1x1 336->112, 4x4, N=8", 8, 4, 336, 112),
]


def input_gradients_1x1():
    print(f"\n{'1x1 input gradient':<28} {'TRANSPOSE_CONV':>16} {'(const kernel)':>16} "
          f"{'batch matmul':>16}")
    for name, n, h, ci, co in INPUT_GRAD_1X1_CASES:
        dy, w, shape, specs, arrays = input_grad_case(n, h, ci, co, 1)
        transpose_conv = lambda d, k: tf.raw_ops.Conv2DBackpropInput(
            input_sizes=tf.constant(shape), filter=k, out_backprop=d, strides=[1, 1, 1, 1],
            padding="VALID")
        forms = {
            "transpose_conv": (transpose_conv, specs, arrays),
            "constant": (lambda d: transpose_conv(d, tf.constant(w)), specs[:1], arrays[:1]),
            "matmul": (lambda d, k: input_grad_1x1(k, d, shape), specs, arrays),
        }
        row = time_forms(forms, transpose_conv(dy, w).numpy(), name)
        print(f"{name:<28}" + "".join(f"{v * 1e3:>13.0f} us" for v in row))


def forward():
    print(f"{'case':<28} {'CONV_2D (runtime kernel)':>26} {'patches+matmul':>16} {'constant':>10}")
    for name, n, h, ci, co, k in CASES:
        rng = np.random.default_rng(0)
        x = rng.random((n, h, h, ci), np.float32)
        w = rng.random((k, k, ci, co), np.float32)
        xs, ws = tf.TensorSpec(x.shape), tf.TensorSpec(w.shape)
        forms = {
            "dynamic": (lambda a, b: tf.nn.conv2d(a, b, 1, "SAME"), [xs, ws], [x, w]),
            "patches": (patches_matmul, [xs, ws], [x, w]),
            "constant": (lambda a: tf.nn.conv2d(a, tf.constant(w), 1, "SAME"), [xs], [x]),
        }
        row = time_forms(forms, tf.nn.conv2d(x, w, 1, "SAME").numpy(), name)
        us = [v * 1e3 for v in row]
        print(f"{name:<28} {us[0]:>23.0f} us {us[1]:>13.0f} us {us[2]:>7.0f} us")


def main(argv):
    del argv
    forward()
    input_gradients()
    input_gradients_1x1()


if __name__ == "__main__":
    app.run(main)
