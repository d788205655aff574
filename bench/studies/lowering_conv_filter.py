"""Times the forms of the Conv2DBackpropFilter lowering on ai-edge-litert (one thread).

Each form is traced alone at fixed shapes, converted with TFLITE_BUILTINS only and invoked
50 times after 5 warm-up runs; the median is printed next to TF's native op (TF set to one
thread). Run from the repository root: ``python -m bench.studies.lowering_conv_filter``. The
figures go into the docstring of ``graph_passes/lowering/conv.py``.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import tensorflow as tf
from absl import app
from ai_edge_litert.interpreter import Interpreter

from graph_passes.lowering.conv import (
    Window, filter_grad_channel_major, filter_grad_conv, filter_grad_matmul, filter_patches,
    pad_spatial)
from tfpock.testing.litert import convert_builtins_only

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

# name, N, H, W, Ci, Co, kh, kw, stride, padding
CASES = [
    ("3x3 s2 SAME 3->16, 96x96, N=8", 8, 96, 96, 3, 16, 3, 3, 2, "SAME"),
    ("3x3 s2 SAME 16->32, 32x32, N=8", 8, 32, 32, 16, 32, 3, 3, 2, "SAME"),
    ("3x3 s1 SAME 16->16, 24x24, N=8", 8, 24, 24, 16, 16, 3, 3, 1, "SAME"),
    ("1x1 s1 16->96, 16x16, N=8", 8, 16, 16, 16, 96, 1, 1, 1, "SAME"),
    ("1x1 s1 96->16, 16x16, N=8", 8, 16, 16, 96, 16, 1, 1, 1, "SAME"),
    ("conv1d k5 s1 SAME 6->16, 100, N=8", 8, 1, 100, 6, 16, 1, 5, 1, "SAME"),
]


def per_offset_matmul(x, dy, win):
    """The form NOTES.md measured: one matmul per kernel offset, stacked."""
    _, ho, wo, co = dy.shape
    ci = x.shape[3]
    xp = pad_spatial(x, win.pads)
    one = Window((1, 1), win.strides, win.dilations, ((0, 0), (0, 0)))
    grads = []
    for i in range(win.kernel[0]):
        for j in range(win.kernel[1]):
            shifted = xp[:, i * win.dilations[0]:, j * win.dilations[1]:, :]
            sl = tf.reshape(filter_patches(shifted, one, (ho, wo)), [-1, ci])
            grads.append(tf.matmul(sl, tf.reshape(dy, [-1, co]), transpose_a=True))
    return tf.reshape(tf.stack(grads), [win.kernel[0], win.kernel[1], ci, co])


FORMS = {"matmul": filter_grad_matmul, "chan-major": filter_grad_channel_major,
         "per-offset": per_offset_matmul, "conv": filter_grad_conv}


def median_ms(fn, reps=50, warm=5):
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    print(f"{'case':40s}" + "".join(f"{k:>12s}" for k in FORMS) + f"{'TF native':>12s}")
    for name, n, h, w, ci, co, kh, kw, s, padding in CASES:
        ho, wo = -(-h // s), -(-w // s)
        total = [max((o - 1) * s + k - i, 0) for o, k, i in ((ho, kh, h), (wo, kw, w))]
        win = Window((kh, kw), (s, s), (1, 1), tuple((t // 2, t - t // 2) for t in total))
        x = rng.standard_normal((n, h, w, ci)).astype(np.float32)
        dy = rng.standard_normal((n, ho, wo, co)).astype(np.float32)
        ref = tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=[kh, kw, ci, co],
                                              out_backprop=dy, strides=[1, s, s, 1],
                                              padding=padding).numpy()
        row = f"{name:40s}"
        for form in FORMS.values():
            specs = [tf.TensorSpec(x.shape), tf.TensorSpec(dy.shape)]
            interp = Interpreter(model_content=convert_builtins_only(
                lambda a, b, form=form: form(a, b, win), specs), num_threads=1)
            runner = interp.get_signature_runner("serving_default")
            out = runner(in00=x, in01=dy)["out00"]
            assert np.allclose(out, ref, atol=1e-3 * np.abs(ref).max()), name
            row += f"{median_ms(lambda: runner(in00=x, in01=dy)):10.2f}ms"
        native = tf.function(lambda a, b: tf.raw_ops.Conv2DBackpropFilter(
            input=a, filter_sizes=[kh, kw, ci, co], out_backprop=b, strides=[1, s, s, 1],
            padding=padding))
        xt, dyt = tf.constant(x), tf.constant(dy)
        row += f"{median_ms(lambda: native(xt, dyt).numpy()):10.2f}ms"
        print(row)


if __name__ == "__main__":
    app.run(main)
