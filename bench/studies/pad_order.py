"""Where the weight gradient's conv form pads its input: before or after the transpose.

``graph_passes/lowering/conv.py: filter_grad_conv`` reads a Conv2D's weight gradient as a
convolution over the input transposed to [Ci, H, W, N]; the input needs the forward's zero
padding first. TFLite's PAD copies one innermost run at a time, so where the innermost axis is
short (MobileNetV2's 3-channel image: runs of 3 floats) padding is slow, and padding after the
transpose (runs of N floats) may be faster, or slower at batch 1 (runs of 1). This times both
orders, and each op alone, as one-op models on ai-edge-litert (one thread, the minimum over 3
rounds of the median of 200 invokes) for the shapes given.

Run: ``python -m bench.studies.pad_order [--shapes 8x128x128x3,1x128x128x3]``. Writes
``bench/results/<date>-<machine>-pad-order.{json,md}``.
"""
from __future__ import annotations

import datetime

import numpy as np
from absl import app, flags

from bench import cli

FLAGS = flags.FLAGS
PADS = [[0, 0], [0, 1], [0, 1], [0, 0]]   # TF's SAME at stride 2 on an even size


def define_flags() -> None:
    """The command line (run as a script only: ``bench/cli.py`` says why)."""
    flags.DEFINE_list("shapes", ["8x128x128x3", "1x128x128x3", "8x64x64x16"],
                      "NHWC input shapes.")
    flags.DEFINE_string("name", "pad-order", "Results file name after the date and machine.")
    cli.define_output_flags()
    flags.adopt_module_key_flags(cli)


def time_model(fn, shape) -> float:
    """Milliseconds of one call of ``fn`` converted alone."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter
    spec = tf.TensorSpec(shape, tf.float32)
    concrete = tf.function(fn, input_signature=[spec], autograph=False).get_concrete_function()
    content = tf.lite.TFLiteConverter.from_concrete_functions([concrete], tf.Module()).convert()
    runner = Interpreter(model_content=content, num_threads=1).get_signature_runner()
    x = np.random.default_rng(0).random(shape, np.float32)
    rounds = []
    for _ in range(3):
        for _ in range(10):
            runner(x=x)
        rounds.append(cli.median_ms(lambda: runner(x=x), reps=200, warm=0))
    return min(rounds)


def main(argv):
    del argv
    import tensorflow as tf
    forms = {
        "pad, then transpose": lambda x: tf.transpose(tf.pad(x, PADS), [3, 1, 2, 0]),
        "transpose, then pad": lambda x: tf.pad(tf.transpose(x, [3, 1, 2, 0]), PADS),
        "pad alone": lambda x: tf.pad(x, PADS),
        "transpose alone": lambda x: tf.transpose(x, [3, 1, 2, 0]),
    }
    rows = [{"shape": s, **{name: time_model(fn, tuple(int(d) for d in s.split("x")))
                            for name, fn in forms.items()}} for s in FLAGS.shapes]
    doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": FLAGS.machine, "load_average": cli.load_average(), "rows": rows}
    lines = [f"# Pad order of the weight gradient's conv form, {doc['date']} ({doc['machine']})",
             "", "`python -m bench.studies.pad_order --shapes " + ",".join(FLAGS.shapes) + "`: "
             "one-op models on ai-edge-litert, one thread, ms (minimum over 3 rounds of the "
             f"median of 200 invokes); load average at the end {doc['load_average']}. See the "
             "study's docstring.", "", "| input | " + " | ".join(forms) + " |",
             "|---|" + "---|" * len(forms)]
    lines += [f"| {r['shape']} | " + " | ".join(f"{r[k]:.3f}" for k in forms) + " |"
              for r in rows]
    cli.write_results(doc, "\n".join(lines) + "\n", FLAGS.name, FLAGS.out_dir)


if __name__ == "__main__":
    define_flags()
    app.run(main)
