"""Times convolutions with a runtime kernel (a trained weight) on ai-edge-litert.

Part 1, the forward Conv2D:
Three forms per case, each traced alone at fixed shapes, converted with TFLITE_BUILTINS only,
invoked 300 times after 30 warm-up runs, median (one thread): CONV_2D with the kernel as an
input (what the converter emits for a trained kernel), ``WeightConv2DRule``'s im2col patches
+ matmul, and CONV_2D with a constant kernel (XNNPACK's, the floor).

Part 2, the stride-1 input gradient (Conv2DBackpropInput): TRANSPOSE_CONV (what the converter
emits), the same as a CONV_2D with the flipped kernel, and ``input_grad_matmul``'s patches of
the padded ``dy`` + one matmul (Conv2DBackpropInputRule's stride-1 form).

Part 3, the 1x1 stride-1 input gradient of a trained kernel (MobileNetV2's head convs):
TRANSPOSE_CONV with the runtime kernel (what the converter emits), the same with a constant
kernel (a frozen layer's), and ``input_grad_1x1``'s batch matmul with the 4-D kernel as it is.

Run from the repository root, pinned to one core:
``taskset -c 1 python -m bench.studies.lowering_weight_conv``. Writes
``bench/results/<date>-<machine>-lowering-weight-conv.{json,md}``, which the docstrings of
``graph_passes/lowering/conv.py`` (module, ``takes_1x1_matmul``, ``WeightConv2DRule``) point
to.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from ai_edge_litert.interpreter import Interpreter

from bench import cli
from bench.studies.lowering_conv_filter import (
    markdown_head, markdown_table, run_info)
from graph_passes.lowering.conv import (
    Window, filter_patches, flip_spatial, input_grad_1x1, input_grad_matmul, pad_spatial)
from tfpock.testing.litert import convert_builtins_only

FLAGS = flags.FLAGS
REPS, WARM = 300, 30

# name, N, H, Ci, Co, k (square inputs and kernels, stride 1, SAME)
CASES = [
    ("1x1 112->1280, 4x4, N=1", 1, 4, 112, 1280, 1),
    ("3x3 64->64, 8x8, N=1", 1, 8, 64, 64, 3),
    ("3x3 64->64, 12x12, N=8", 8, 12, 64, 64, 3),
    ("3x3 48->48, 16x16, N=8", 8, 16, 48, 48, 3),
]


def define_flags() -> None:
    """The command line (run as a script only: ``bench/cli.py`` says why)."""
    cli.define_output_flags()
    flags.adopt_module_key_flags(cli)


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
        row.append(cli.median_ms(lambda: runner(**feeds), reps=REPS, warm=WARM))
    return row


def input_grad_case(n: int, h: int, ci: int, co: int, k: int):
    """(dy, kernel, dx shape, specs, arrays) of a square stride-1 input-gradient case."""
    rng = np.random.default_rng(0)
    dy = rng.random((n, h, h, co), np.float32)
    w = rng.random((k, k, ci, co), np.float32)
    return dy, w, [n, h, h, ci], [tf.TensorSpec(dy.shape), tf.TensorSpec(w.shape)], [dy, w]


def input_gradients() -> list[dict]:
    """Part 2: ms of each form per case."""
    out = []
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
        row = dict(zip(forms, time_forms(forms, ref, name)))
        logging.info("input gradient %s: %s", name,
                     ", ".join(f"{k} {v:.2f} ms" for k, v in row.items()))
        out.append({"case": name, "N": n, "H": h, "Ci": ci, "Co": co, "kernel": 3, "ms": row})
    return out


# name, N, H, Ci, Co (1x1 kernels, stride 1): MobileNetV2 0.35 @128's Conv_1 and
# block_16_project, at batch 1 and 8
INPUT_GRAD_1X1_CASES = [
    ("1x1 112->1280, 4x4, N=1", 1, 4, 112, 1280),
    ("1x1 336->112, 4x4, N=1", 1, 4, 336, 112),
    ("1x1 112->1280, 4x4, N=8", 8, 4, 112, 1280),
    ("1x1 336->112, 4x4, N=8", 8, 4, 336, 112),
]


def input_gradients_1x1() -> list[dict]:
    """Part 3: ms of each form per case."""
    out = []
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
        row = dict(zip(forms, time_forms(forms, transpose_conv(dy, w).numpy(), name)))
        logging.info("1x1 input gradient %s: %s", name,
                     ", ".join(f"{k} {v * 1e3:.0f} us" for k, v in row.items()))
        out.append({"case": name, "N": n, "H": h, "Ci": ci, "Co": co, "kernel": 1, "ms": row})
    return out


def forward() -> list[dict]:
    """Part 1: ms of each form per case."""
    out = []
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
        row = dict(zip(forms, time_forms(forms, tf.nn.conv2d(x, w, 1, "SAME").numpy(), name)))
        logging.info("forward %s: %s", name,
                     ", ".join(f"{k} {v * 1e3:.0f} us" for k, v in row.items()))
        out.append({"case": name, "N": n, "H": h, "Ci": ci, "Co": co, "kernel": k, "ms": row})
    return out


# Per part: (key in the JSON, heading, unit, {form key: column name})
PARTS = [
    ("forward", "Part 1: forward Conv2D with a runtime kernel, stride 1, SAME", "us",
     {"dynamic": "CONV_2D (runtime kernel)", "patches": "patches+matmul",
      "constant": "CONV_2D (constant kernel)"}),
    ("input_grad", "Part 2: 3x3 stride-1 SAME input gradient (Conv2DBackpropInput), "
     "runtime kernel", "ms",
     {"transpose_conv": "TRANSPOSE_CONV", "conv": "CONV_2D flipped",
      "patches": "patches+matmul"}),
    ("input_grad_1x1", "Part 3: 1x1 stride-1 input gradient, trained kernel", "us",
     {"transpose_conv": "TRANSPOSE_CONV (runtime kernel)",
      "constant": "TRANSPOSE_CONV (constant kernel)", "matmul": "batch matmul"}),
]


def markdown(doc: dict) -> str:
    lines = markdown_head(
        doc, "Convolutions with a runtime (trained) kernel",
        "Each form traced alone at fixed shapes, converted with TFLITE_BUILTINS only and run on "
        "ai-edge-litert's signature runner, its output checked against TF's. Square inputs "
        "and kernels.")
    for key, heading, unit, columns in PARTS:
        scale, spec = (1e3, ".0f") if unit == "us" else (1.0, ".2f")
        rows = [[c["case"]] + [f"{c['ms'][k] * scale:{spec}}" for k in columns]
                for c in doc[key]]
        lines += [f"## {heading} ({unit})", ""]
        lines += markdown_table(["case", *columns.values()], rows)
    return "\n".join(lines)


def main(argv):
    del argv
    doc = run_info("lowering_weight_conv", FLAGS.machine, reps=REPS, warm=WARM)
    doc["forward"] = forward()
    doc["input_grad"] = input_gradients()
    doc["input_grad_1x1"] = input_gradients_1x1()
    cli.write_results(doc, markdown(doc), "lowering-weight-conv", FLAGS.out_dir)


if __name__ == "__main__":
    define_flags()
    app.run(main)
