"""Issue 13's acceptance matrix, whole: one device step of each language model with each scheme
against a TF ``GradientTape`` step of the same update, on ai-edge-litert and tflite-runtime 2.14.

The tests run a representative part of it (every model fully on the device, the other schemes
on the device for Llama and BERT's LoRA policy and in the host program for the rest: the CI
budget pays for a dozen device exports, not sixteen). This runs every cell:

* models: KerasHub's tiny ``LlamaCausalLM`` (``tests/test_keras_hub.py``), ``GemmaCausalLM``
  with Gemma 2's options and ``BertTextClassifier`` (``tests/test_keras_hub_models.py``), and
  the plain Keras decoder (``tfpock.testing.models.decoder``) with SwiGLU and RMS norms and
  with GELU and LayerNormalization, each as built, with its dict inputs and its loss;
* schemes: ``full``; ``lora`` (``Scheme.lora(model, 4)``: rank 4 on the query and value
  projections, KerasHub's targets); ``last_block`` (``Scheme.last_blocks(model, 1)`` with the
  model's block names); ``norms_and_biases`` (every norm's scale and offset, every bias);
  ``mlp_half`` (the MLP projections of the last block, each on the first half of its input
  channels: partial channels, the issue's last sparse scheme).

The reference is the same model in Keras with the same variables trained (LoRA: the reference
gets ``enable_lora(4)`` on the same layers and the compiled file's first factor), one SGD step
of its loss under ``GradientTape``. A cell passes when the loss is within 1e-5 relative and
every trained weight within 1e-4 of the reference's (the tests' tolerances), the file has no
custom or Flex op, and at least half the trained variables moved. tflite-runtime 2.14 runs the
same file in its own virtual environment (numpy < 2: ``--tfl214_python``), through
``tfpock.runtime.Trainer``.

    python -m bench.studies.lm_acceptance [--tfl214_python /work/venv-tfl214/bin/python]

Writes ``bench/results/<date>-<machine>-lm-acceptance.{json,md}``.
"""
from __future__ import annotations

import datetime
import os
import pathlib
import subprocess
import sys
import tempfile

from absl import app, flags

from bench import cli

FLAGS = flags.FLAGS
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-4
MODELS = ("llama", "gemma", "bert", "decoder", "decoder_gelu")
SCHEMES = ("full", "lora", "last_block", "norms_and_biases", "mlp_half")
BLOCKS = {"llama": r"transformer_layer_\d+", "gemma": r"decoder_block_\d+",
          "bert": r"transformer_layer_\d+", "decoder": r"block_\d+",
          "decoder_gelu": r"block_\d+"}

DEVICE_SCRIPT = """
import sys, numpy as np
from tfpock.runtime import Trainer
trainer = Trainer(sys.argv[1], runtime=sys.argv[3])
feeds = dict(np.load(sys.argv[2]))
x = {name: feeds[name] for name in trainer.input_specs}
out = trainer.train(x, feeds["y"], sample_weight=feeds.get("sample_weight"),
                    learning_rate=float(feeds["learning_rate"]))
weights = trainer.weights()
np.savez(sys.argv[4], loss=np.float64(out["loss"]),
         **{f"w{i}": weights[p] for i, p in enumerate(sorted(weights))})
print(" ".join(sorted(weights)))
"""


def define_flags() -> None:
    flags.DEFINE_list("models", list(MODELS), "Models.")
    flags.DEFINE_list("schemes", list(SCHEMES), "Schemes.")
    flags.DEFINE_string("tfl214_python", "/work/venv-tfl214/bin/python",
                        "Python of a virtual environment with tflite-runtime 2.14 (numpy < 2); "
                        "'' to skip it.")
    flags.DEFINE_string("name", "lm-acceptance", "Result file name after the date and machine.")
    cli.define_output_flags()
    flags.adopt_module_key_flags(cli)


def model_case(name: str):
    """(builder, batch (x, y, sample weight or None), input shapes or None). The loss is
    sparse cross-entropy on logits for all four: KerasHub's ``CausalLM`` and
    ``TextClassifier`` compile with it, the plain decoder's tests train with it."""
    from tests import test_keras_hub as llama, test_keras_hub_models as hub
    from tests import test_language_models as plain
    from tfpock.testing import models
    if name == "llama":
        return llama.tiny_llama, llama.batch(), llama.SHAPES
    if name in ("gemma", "bert"):
        return hub.MODELS[name][0], hub.batch(name), {k: (hub.SEQ,) for k in hub.MODELS[name][1]}
    mlp, norm = ("gelu", "layer") if name == "decoder_gelu" else ("swiglu", "rms")
    return (lambda: models.decoder(mlp=mlp, norm=norm, vocab=plain.VOCAB, seq=plain.SEQ),
            plain.batch(), None)


def norms_and_biases(model) -> dict:
    """Every norm layer (by leaf path: KerasHub's norms sit inside their blocks) fully, every
    other layer's bias."""
    from tfpock.layers import all_layers, leaf_layers
    leaves = {id(layer) for layer in leaf_layers(model)}
    norms = [layer.name if id(layer) in leaves else layer.path for layer in all_layers(model)
             if "norm" in type(layer).__name__.lower() and layer.weights]
    return {"default": "bias", "layers": {name: "full" for name in norms}}


def scheme_for(model, name: str, scheme: str):
    import tfpock
    if scheme == "full":
        return "full"
    if scheme == "lora":
        return tfpock.Scheme.lora(model, 4)
    if scheme == "last_block":
        return tfpock.Scheme.last_blocks(model, 1, pattern=BLOCKS[name])
    if scheme == "norms_and_biases":
        return norms_and_biases(model)
    return mlp_half(model, name)


def mlp_half(model, name: str) -> dict:
    """The last block's Dense and EinsumDense layers other than attention's, each on the
    first half of its kernel's input channels (with its bias, if any)."""
    import re

    from tfpock.scheme import lora_candidates
    blocks = sorted({m.group(0) for path in lora_candidates(model)
                     if (m := re.match(BLOCKS[name], path))}, key=lambda b: int(b.split("_")[-1]))
    mlp = [path for path in lora_candidates(model) if path.startswith(blocks[-1])
           and not re.search("attention|query|key|value", path)]
    return {"default": "frozen", "layers": {path: {"weight_fraction": 0.5} for path in mlp}}


def tape_reference(build, program, scheme_obj, first: dict, batch, lr: float):
    """The reference's loss and trained weights after one GradientTape SGD step; ``first``:
    the compiled program's weights before its step (LoRA's random first factors)."""
    import keras
    import tensorflow as tf
    reference = build()
    lora = any(p.kernels == "lora" for p in scheme_obj.layers.values())
    if lora:
        for layer in reference._flatten_layers():
            if layer.path in scheme_obj.layers:
                layer.enable_lora(4)
                layer.lora_kernel_a.assign(first[layer.lora_kernel_a.path])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    trained = set(program.trained_paths)
    watched = [v for v in reference.trainable_variables if v.path in trained]
    partial = {} if lora else {w.path: w for w in scheme_obj.resolve(reference)
                               if w.channels is not None}
    x, y, weights = batch
    with tf.GradientTape() as tape:
        value = loss(y, reference(x, training=True), sample_weight=weights)
    grads = tape.gradient(value, watched)
    for i, var in enumerate(watched):   # a partial weight: its first channels only
        if var.path in partial:
            w = partial[var.path]
            keep = tf.reshape(tf.cast(tf.range(var.shape[w.axis]) < w.channels, grads[i].dtype),
                              [-1 if a == w.axis else 1 for a in range(len(var.shape))])
            grads[i] = grads[i] * keep
    keras.optimizers.SGD(lr).apply(grads, watched)
    return float(value), {v.path: v.numpy() for v in watched}


def compare(loss, weights, before, ref_loss, ref_weights) -> dict:
    import numpy as np
    errors = [float(np.max(np.abs(weights[p] - ref_weights[p]))) for p in ref_weights]
    moved = sum(not np.array_equal(weights[p], before[p]) for p in ref_weights)
    loss_rel = abs(loss - ref_loss) / abs(ref_loss)
    return {"loss_rel": loss_rel, "weight_max_abs": max(errors), "moved": moved,
            "trained": len(ref_weights),
            "pass": loss_rel <= LOSS_RTOL and max(errors) <= WEIGHT_ATOL
            and moved >= len(ref_weights) // 2}


def run_other_runtime(python: str, path: str, feeds: str, out: str) -> tuple[float, dict]:
    import numpy as np
    env = dict(os.environ, PYTHONPATH=cli.REPO)
    done = subprocess.run([python, "-c", DEVICE_SCRIPT, path, feeds, "tflite-runtime", out],
                          capture_output=True, text=True, env=env, check=True)
    names = done.stdout.strip().splitlines()[-1].split()
    data = np.load(out)
    return float(data["loss"]), {p: data[f"w{i}"] for i, p in enumerate(names)}


def cell(model_name_: str, scheme: str, work: str, tfl214: str) -> dict:
    import keras
    import numpy as np

    import tfpock
    from tfpock.runtime import Trainer
    from tfpock.tflite import model_file
    lr = 0.05
    build, batch, shapes = model_case(model_name_)
    model = build()
    scheme_value = scheme_for(model, model_name_, scheme)
    scheme_obj = tfpock.Scheme.parse(scheme_value, model)
    x, y, weights = batch
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    program = tfpock.optimize(model, loss=loss, optimizer=keras.optimizers.SGD(lr),
                              scheme=scheme_value, batch_size=2,
                              sample_weight=weights is not None, input_shapes=shapes)
    path = os.path.join(work, f"{model_name_}-{scheme}.tflite")
    program.export(path)
    before = program.weights()
    ref_loss, ref_weights = tape_reference(build, program, scheme_obj, before, batch, lr)
    trainer = Trainer(path)
    out = trainer.train(x, y, sample_weight=weights, learning_rate=lr)
    row = {"model": model_name_, "scheme": scheme, "trained_paths": len(ref_weights),
           "custom_ops": model_file.read(pathlib.Path(path).read_bytes()).custom_ops(),
           "ai-edge-litert": compare(out["loss"], trainer.weights(), before, ref_loss,
                                     ref_weights)}
    if tfl214:
        feeds = os.path.join(work, f"{model_name_}-{scheme}-batch.npz")
        np.savez(feeds, **x, y=y, learning_rate=np.float32(lr),
                 **({} if weights is None else {"sample_weight": weights}))
        other_loss, other_weights = run_other_runtime(
            tfl214, path, feeds, os.path.join(work, f"{model_name_}-{scheme}-out.npz"))
        row["tflite-runtime 2.14"] = compare(other_loss, other_weights, before, ref_loss,
                                             ref_weights)
    return row


def markdown(doc: dict) -> str:
    runtimes = [r for r in ("ai-edge-litert", "tflite-runtime 2.14") if any(
        r in row for row in doc["rows"])]
    lines = [f"# Language models: the acceptance matrix, {doc['date']} ({doc['machine']})", "",
             f"`{doc['command']}`; load {doc['load_start']} at the start, {doc['load_end']} at "
             f"the end. One SGD step (lr 0.05, batch 2 of 8 tokens) of each exported file "
             f"against a GradientTape step of the same update; pass: loss within "
             f"{LOSS_RTOL:g} relative, every trained weight within {WEIGHT_ATOL:g}, at least "
             "half of the trained variables moved (LoRA's B factors start at zero, so its A "
             "factors do not move in a first step), no custom or Flex op.", "",
             "| model | scheme | trained variables | custom ops | " + " | ".join(
                 f"{r}: loss rel err, weight max abs err, moved, verdict" for r in runtimes)
             + " |", "|" + "---|" * (4 + len(runtimes))]
    for row in doc["rows"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['scheme']} | failed: {row['error'][:200]} |"
                         + " |" * (1 + len(runtimes)))
            continue
        cells = []
        for r in runtimes:
            c = row.get(r)
            cells.append("-" if c is None else
                         f"{c['loss_rel']:.1e}, {c['weight_max_abs']:.1e}, {c['moved']}/"
                         f"{c['trained']}, {'PASS' if c['pass'] else 'FAIL'}")
        lines.append(f"| {row['model']} | {row['scheme']} | {row['trained_paths']} | "
                     f"{', '.join(row['custom_ops']) or 'none'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, cli.REPO)
    tfl214 = FLAGS.tfl214_python if FLAGS.tfl214_python and os.path.exists(
        FLAGS.tfl214_python) else ""
    doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": FLAGS.machine, "rows": [],
           "command": " ".join(["python -m bench.studies.lm_acceptance"] + sys.argv[1:]),
           "load_start": cli.load_average()}
    with tempfile.TemporaryDirectory() as work:
        for name in FLAGS.models:
            for scheme in FLAGS.schemes:
                try:
                    doc["rows"].append(cell(name, scheme, work, tfl214))
                except Exception as exc:  # noqa: BLE001 - a failed cell is a result
                    doc["rows"].append({"model": name, "scheme": scheme,
                                        "error": f"{type(exc).__name__}: {exc}"})
                doc["load_end"] = cli.load_average()
                text = markdown(doc)
                cli.write_results(doc, text, FLAGS.name, FLAGS.out_dir)
    print(text)


if __name__ == "__main__":
    define_flags()
    app.run(main)
