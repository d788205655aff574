"""Times the embedding gradient's builtin forms on ai-edge-litert (one thread).

The gradient of ``E[ids]`` (``graph_passes/lowering/embedding.py``): UNSORTED_SEGMENT_SUM
(what the tape writes), SCATTER_ND, and a one-hot matmul. Each is traced alone at fixed
shapes, converted with TFLITE_BUILTINS only, checked against numpy (ids with duplicates) and
invoked 50 times after 5 warm-up runs; median. N tokens (batch x sequence), D the embedding
width, V the vocabulary, from a keyboard model to a Llama-sized vocabulary. Run from the
repository root, pinned to one core: ``taskset -c 1 python -m bench.studies.lowering_embedding``.
Writes ``bench/results/<date>-<machine>-lowering-embedding.{json,md}``, which the docstring of
``graph_passes/lowering/embedding.py`` points to.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from ai_edge_litert.interpreter import Interpreter

from bench import cli
from bench.studies.lowering_conv_filter import markdown_head, markdown_table, run_info
from graph_passes.lowering.embedding import one_hot_form, scatter_form, segment_sum_form
from tfpock.testing.litert import convert_builtins_only

FLAGS = flags.FLAGS

# N tokens, D width, V vocabulary
CASES = [(16, 32, 128), (64, 32, 128), (256, 64, 1000), (256, 256, 1000), (512, 256, 8000),
         (256, 256, 32000)]
FORMS = {"segment_sum": segment_sum_form, "scatter_nd": scatter_form, "one_hot": one_hot_form}


def define_flags() -> None:
    """The command line (run as a script only: ``bench/cli.py`` says why)."""
    cli.define_output_flags()
    flags.adopt_module_key_flags(cli)


def form_ms(form, values: np.ndarray, ids: np.ndarray, vocab: int) -> float:
    specs = [tf.TensorSpec(values.shape), tf.TensorSpec(ids.shape, tf.int32)]
    content = convert_builtins_only(lambda v, i: form(v, i, (vocab, values.shape[1])), specs)
    runner = Interpreter(model_content=content,
                         num_threads=1).get_signature_runner("serving_default")
    expected = np.zeros((vocab, values.shape[1]))
    np.add.at(expected, ids, values.astype(np.float64))
    out = runner(in00=values, in01=ids)["out00"]
    assert np.abs(out - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())
    return cli.median_ms(lambda: runner(in00=values, in01=ids))


def markdown(doc: dict) -> str:
    lines = markdown_head(
        doc, "Embedding gradient forms",
        "The gradient of a gather `E[ids]` (N ids, D wide, vocabulary V): each form traced "
        "alone, converted with TFLITE_BUILTINS only, run on ai-edge-litert's signature runner; "
        "ids with duplicates, checked against numpy. Times in ms.")
    rows = [[str(c["N"]), str(c["D"]), str(c["V"])] + [f"{c['ms'][k]:.3f}" for k in FORMS]
            + [f"{c['ms']['segment_sum'] / c['ms']['scatter_nd']:.1f}x"] for c in doc["cases"]]
    return "\n".join(lines + markdown_table(
        ["N", "D", "V", *[f"{k} (ms)" for k in FORMS], "scatter_nd speed-up"], rows))


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    doc = run_info("lowering_embedding", FLAGS.machine, reps=50, warm=5)
    doc["cases"] = []
    for n, d, v in CASES:
        values = rng.standard_normal((n, d)).astype(np.float32)
        ids = rng.integers(0, v, n).astype(np.int32)
        ids[: n // 4] = ids[0]   # a frequent token: duplicates must add up
        ms = {name: form_ms(form, values, ids, v) for name, form in FORMS.items()}
        logging.info("N=%d D=%d V=%d: %s", n, d, v,
                     ", ".join(f"{k} {t:.3f} ms" for k, t in ms.items()))
        doc["cases"].append({"N": n, "D": d, "V": v, "ms": ms})
    cli.write_results(doc, markdown(doc), "lowering-embedding", FLAGS.out_dir)


if __name__ == "__main__":
    define_flags()
    app.run(main)
