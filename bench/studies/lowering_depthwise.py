"""Times the depthwise gradient lowerings on ai-edge-litert (one thread).

Filter gradient: the conv form vs the slice form; input gradient: the one form. Each is
traced alone at fixed shapes, converted with TFLITE_BUILTINS only and invoked 50 times after
5 warm-up runs; its median is set next to TF's native op (TF set to one thread). Run from
the repository root, pinned to one core:
``taskset -c 1 python -m bench.studies.lowering_depthwise``. Writes
``bench/results/<date>-<machine>-lowering-depthwise.{json,md}``, which the docstring of
``graph_passes/lowering/depthwise.py`` points to.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from ai_edge_litert.interpreter import Interpreter

from bench import cli
from bench.studies.lowering_conv_filter import (
    markdown_head, markdown_table, run_info)
from graph_passes.lowering.conv import Window
from graph_passes.lowering.depthwise import filter_grad_conv, filter_grad_slices, input_grad
from tfpock.testing.litert import convert_builtins_only

FLAGS = flags.FLAGS

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

# name, N, H, W, C, M, k, stride (SAME padding)
CASES = [
    ("3x3 s2 C=48, 48x48, N=8", 8, 48, 48, 48, 1, 3, 2),
    ("3x3 s1 C=48, 24x24, N=8", 8, 24, 24, 48, 1, 3, 1),
    ("3x3 s1 C=96, 12x12, N=8", 8, 12, 12, 96, 1, 3, 1),
    ("3x3 s1 C=16 M=2, 24x24, N=8", 8, 24, 24, 16, 2, 3, 1),
    ("3x3 s1 C=48, 24x24, N=1", 1, 24, 24, 48, 1, 3, 1),
]


def define_flags() -> None:
    """The command line (run as a script only: ``bench/cli.py`` says why)."""
    cli.define_output_flags()
    flags.adopt_module_key_flags(cli)


def litert_ms(fn, arrays, reference):
    specs = [tf.TensorSpec(a.shape) for a in arrays]
    runner = Interpreter(model_content=convert_builtins_only(fn, specs),
                         num_threads=1).get_signature_runner("serving_default")
    feed = {f"in{i:02d}": a for i, a in enumerate(arrays)}
    out = runner(**feed)["out00"]
    assert np.allclose(out, reference, atol=1e-4 * np.abs(reference).max())
    return cli.median_ms(lambda: runner(**feed))


COLUMNS = {"filter_conv": "filter: conv form", "filter_slices": "filter: slice form",
           "tf_filter": "filter: TF native", "input": "input: lowering",
           "tf_input": "input: TF native"}


def markdown(doc: dict) -> str:
    lines = markdown_head(
        doc, "Depthwise convolution gradient lowerings",
        "Filter gradient: the conv form and the slice form; input gradient: the one form. Each "
        "traced alone at fixed shapes, converted with TFLITE_BUILTINS only and run on "
        "ai-edge-litert's signature runner; TF's native ops in a `tf.function` for orientation "
        "(they include TF's per-call overhead). SAME padding; times in ms.")
    rows = [[c["case"]] + [f"{c['ms'][k]:.2f}" for k in COLUMNS] for c in doc["cases"]]
    return "\n".join(lines + markdown_table(["case", *COLUMNS.values()], rows))


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    doc = run_info("lowering_depthwise", FLAGS.machine, reps=50, warm=5)
    doc["cases"] = []
    for name, n, h, w, c, m, k, s in CASES:
        ho = -(-h // s)
        total = max((ho - 1) * s + k - h, 0)
        pads = (total // 2, total - total // 2)
        win = Window((k, k), (s, s), (1, 1), (pads, pads))
        x = rng.standard_normal((n, h, w, c)).astype(np.float32)
        kernel = rng.standard_normal((k, k, c, m)).astype(np.float32)
        dy = rng.standard_normal((n, ho, ho, c * m)).astype(np.float32)
        kw = dict(strides=[1, s, s, 1], padding="SAME")
        native_f = tf.function(lambda a, b: tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
            input=a, filter_sizes=[k, k, c, m], out_backprop=b, **kw))
        native_i = tf.function(lambda a, b: tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
            input_sizes=[n, h, w, c], filter=a, out_backprop=b, **kw))
        ref_f, ref_i = native_f(x, dy).numpy(), native_i(kernel, dy).numpy()
        ms = {}
        for key, form in (("filter_conv", filter_grad_conv),
                          ("filter_slices", filter_grad_slices)):
            ms[key] = litert_ms(lambda a, b, f=form: f(a, b, win, m), [x, dy], ref_f)
        xt, dyt, kt = tf.constant(x), tf.constant(dy), tf.constant(kernel)
        ms["tf_filter"] = cli.median_ms(lambda: native_f(xt, dyt).numpy())
        ms["input"] = litert_ms(lambda a, b: input_grad(a, b, win, x.shape), [kernel, dy], ref_i)
        ms["tf_input"] = cli.median_ms(lambda: native_i(kt, dyt).numpy())
        logging.info("%s: %s", name, ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()))
        doc["cases"].append({"case": name, "N": n, "H": h, "W": w, "C": c, "M": m,
                             "kernel": k, "stride": s, "padding": "SAME", "ms": ms})
    cli.write_results(doc, markdown(doc), "lowering-depthwise", FLAGS.out_dir)


if __name__ == "__main__":
    define_flags()
    app.run(main)
