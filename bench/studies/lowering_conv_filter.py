"""Times the forms of the Conv2DBackpropFilter lowering on ai-edge-litert (one thread).

Each form is traced alone at fixed shapes, converted with TFLITE_BUILTINS only and invoked
50 times after 5 warm-up runs; its median is set next to TF's native op (TF set to one
thread). Run from the repository root, pinned to one core:
``taskset -c 1 python -m bench.studies.lowering_conv_filter``. Writes
``bench/results/<date>-<machine>-lowering-conv-filter.{json,md}``, which the docstring of
``graph_passes/lowering/conv.py`` points to. The other lowering studies share this module's
:func:`run_info` and :func:`markdown_head`; timing and results go through ``bench.cli``.
"""
from __future__ import annotations

import datetime
import os
import shlex
import sys

import ai_edge_litert
import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from ai_edge_litert.interpreter import Interpreter

from bench import cli
from graph_passes.lowering.conv import (
    Window, filter_grad_channel_major, filter_grad_conv, filter_grad_matmul, filter_patches,
    pad_spatial)
from tfpock.testing.litert import convert_builtins_only

FLAGS = flags.FLAGS

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
    """The first form tried: one matmul per kernel offset, stacked."""
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


def define_flags() -> None:
    """The command line (run as a script only: ``bench/cli.py`` says why)."""
    cli.define_output_flags()
    flags.adopt_module_key_flags(cli)


def run_info(study: str, machine: str, reps: int, warm: int) -> dict:
    """How a lowering study ran: date, machine, the command that reproduces it, runtime
    versions, threads, the CPU affinity it ran with and the timing statistic."""
    cores = sorted(os.sched_getaffinity(0))
    pinned = len(cores) < os.cpu_count()
    command = " ".join(([f"taskset -c {','.join(map(str, cores))}"] if pinned else [])
                       + ["python", "-m", f"bench.studies.{study}"]
                       + [shlex.quote(a) for a in sys.argv[1:]])
    return {"study": study, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine, "command": command,
            "versions": {"ai_edge_litert": ai_edge_litert.__version__,
                         "tensorflow": tf.__version__},
            "threads": {"litert_num_threads": 1,
                        "tf_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                        "tf_inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
            "tf_enable_onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "cpu_affinity": cores, "pinned": pinned, "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg()[0],
            "timing": {"statistic": "median", "reps": reps, "warmup": warm}}


def markdown_head(doc: dict, title: str, what: str) -> list[str]:
    """The title and the paragraph every lowering study's .md opens with."""
    timing, threads = doc["timing"], doc["threads"]
    pinning = (f"pinned to core(s) {', '.join(map(str, doc['cpu_affinity']))} of "
               f"{doc['cpu_count']}" if doc["pinned"] else
               f"not pinned (all {doc['cpu_count']} cores)")
    return [f"# {title}, {doc['date']} ({doc['machine']})", "", what, "",
            f"Reproduce: `{doc['command']}` (from the repository root).", "",
            f"* runtimes: ai_edge_litert {doc['versions']['ai_edge_litert']}, tensorflow "
            f"{doc['versions']['tensorflow']} (TF_ENABLE_ONEDNN_OPTS="
            f"{doc['tf_enable_onednn_opts'] or 'unset'})",
            f"* threads: interpreter `num_threads={threads['litert_num_threads']}`; TF "
            f"intra-op {threads['tf_intra_op']}, inter-op {threads['tf_inter_op']}",
            f"* pinning: {pinning}; load average {doc['load_average_at_start']:.2f} at start "
            "(shared machine: timings are noisy)",
            f"* statistic: {timing['statistic']} of {timing['reps']} calls after "
            f"{timing['warmup']} warm-up calls", ""]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(row) + " |" for row in rows] + [""])


def markdown(doc: dict) -> str:
    lines = markdown_head(
        doc, "Conv2DBackpropFilter lowering forms",
        "Each form traced alone at fixed shapes, converted with TFLITE_BUILTINS only and run on "
        "ai-edge-litert's signature runner; TF's native op in a `tf.function` for orientation "
        "(it includes TF's per-call overhead). \"per-offset\" is the first form tried (one "
        "matmul per kernel offset, stacked); \"chan-major\" the matmul form with positions as "
        "the last axis. Times in ms.")
    rows = [[c["case"]] + [f"{c['ms'][form]:.2f}" for form in FORMS] + [f"{c['tf_native_ms']:.2f}"]
            for c in doc["cases"]]
    return "\n".join(lines + markdown_table(["case", *FORMS, "TF native"], rows))


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    doc = run_info("lowering_conv_filter", FLAGS.machine, reps=50, warm=5)
    doc["cases"] = []
    for name, n, h, w, ci, co, kh, kw, s, padding in CASES:
        ho, wo = -(-h // s), -(-w // s)
        total = [max((o - 1) * s + k - i, 0) for o, k, i in ((ho, kh, h), (wo, kw, w))]
        win = Window((kh, kw), (s, s), (1, 1), tuple((t // 2, t - t // 2) for t in total))
        x = rng.standard_normal((n, h, w, ci)).astype(np.float32)
        dy = rng.standard_normal((n, ho, wo, co)).astype(np.float32)
        ref = tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=[kh, kw, ci, co],
                                              out_backprop=dy, strides=[1, s, s, 1],
                                              padding=padding).numpy()
        row = {"case": name, "N": n, "H": h, "W": w, "Ci": ci, "Co": co, "kernel": [kh, kw],
               "stride": s, "padding": padding, "ms": {}}
        for key, form in FORMS.items():
            specs = [tf.TensorSpec(x.shape), tf.TensorSpec(dy.shape)]
            interp = Interpreter(model_content=convert_builtins_only(
                lambda a, b, form=form: form(a, b, win), specs), num_threads=1)
            runner = interp.get_signature_runner("serving_default")
            out = runner(in00=x, in01=dy)["out00"]
            assert np.allclose(out, ref, atol=1e-3 * np.abs(ref).max()), name
            row["ms"][key] = cli.median_ms(lambda: runner(in00=x, in01=dy))
        native = tf.function(lambda a, b: tf.raw_ops.Conv2DBackpropFilter(
            input=a, filter_sizes=[kh, kw, ci, co], out_backprop=b, strides=[1, s, s, 1],
            padding=padding))
        xt, dyt = tf.constant(x), tf.constant(dy)
        row["tf_native_ms"] = cli.median_ms(lambda: native(xt, dyt).numpy())
        logging.info("%s: %s, TF native %.2f ms", name,
                     ", ".join(f"{k} {v:.2f}" for k, v in row["ms"].items()),
                     row["tf_native_ms"])
        doc["cases"].append(row)
    cli.write_results(doc, markdown(doc), "lowering-conv-filter", FLAGS.out_dir)


if __name__ == "__main__":
    define_flags()
    app.run(main)
