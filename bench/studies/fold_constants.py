"""What the fold_constants pass folds on real models, and whether the converter would have.

    python -m bench.studies.fold_constants [--size 96]

For MobileNetV2 0.35 (BatchNorm frozen) under full, last:2, bias and a sparse scheme that
crosses the frozen block_16, and for ``every_layer_cnn`` (``tfpock.testing.models``), batch 8,
SGD: the pass's stats right after freeze and in the pipeline (after lower, before dce), the
largest difference of the train outputs with and without it (TensorFlow, Grappler off), and
the exported ``train`` subgraph's op count and file size without and with it. Writes
``bench/results/<date>-<machine>-fold-constants.{json,md}``.
"""
from __future__ import annotations

import datetime

import numpy as np
from absl import app, flags

from bench import cli

FLAGS = flags.FLAGS
SPARSE = {"default": "frozen", "layers": {"block_15_project": "full", "predictions": "full"}}


def define_flags() -> None:
    flags.DEFINE_integer("size", 96, "MobileNetV2's input size.")
    cli.define_output_flags()


def traced(model, scheme):
    import keras

    from tfpock.losses import resolve_loss
    from tfpock.optimizers import compile_optimizer
    from tfpock.scheme import Scheme
    from tfpock.tracing import trace
    loss = resolve_loss(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trained = Scheme.parse(scheme, model).resolve(model)
    return trace(model, loss, compile_optimizer(keras.optimizers.SGD(0.1)), 8, trained)


def run(graph, step) -> dict[str, np.ndarray]:
    """The train outputs in TensorFlow (Grappler off) for one fixed batch."""
    import tensorflow as tf
    rng = np.random.default_rng(0)
    values = {"x": rng.uniform(-1, 1, step.x_spec.shape).astype(np.float32),
              "y": rng.integers(0, step.output_spec.shape[-1], step.y_spec.shape).astype(
                  np.int32), "learning_rate": np.array([0.1], np.float32), **step.params}
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    config.graph_options.optimizer_options.do_constant_folding = False
    fed = {ref: values[key] for key, ref in graph.inputs.items()}
    fed.update({ref: values[path] for path, ref in graph.params.items()})
    names = sorted(graph.outputs)
    with tf.compat.v1.Session(graph=graph.to_tf_graph(), config=config) as session:
        return dict(zip(names, session.run([graph.outputs[k] for k in names], fed)))


def exported_train_ops(step, model, train, infer) -> tuple[int, int]:
    from tfpock import export
    from tfpock.layers import leaf_layers
    from tfpock.tflite import model_file
    module = export.TrainingModule(train, infer, step, export.metadata_for(step, {}))
    content = export.convert(module, [train, infer], [l.name for l in leaf_layers(model)])
    return len(model_file.read(content).subgraph("train").operators), len(content)


def measure(name: str, model, scheme) -> dict:
    from graph_passes.fold_constants import FoldConstants
    from graph_passes.freeze import Freeze
    from graph_passes.pass_base import Sequential
    from tfpock.pipeline import build_pipeline
    step = traced(model, scheme)
    _, records = Sequential([Freeze(step.frozen), FoldConstants()])(step.train)
    plain = build_pipeline(step.frozen, passes={"fold_constants": False})
    folding = build_pipeline(step.frozen)     # fold_constants after sink_scale, before dce
    graphs, in_pipeline = {}, None
    for label, pipeline in (("plain", plain), ("fold", folding)):
        train, pipeline_records = pipeline(step.train)
        graphs[label] = (train, pipeline(step.infer)[0])
        if label == "fold":
            in_pipeline = next(r.stats for r in pipeline_records if r.name == "fold_constants")
    a, b = (run(graphs[k][0], step) for k in ("plain", "fold"))
    (ops0, size0), (ops1, size1) = (exported_train_ops(step, model, *graphs[k])
                                    for k in ("plain", "fold"))
    return {"model": name, "scheme": scheme if isinstance(scheme, str) else "sparse",
            "after_freeze": records[-1].stats, "in_pipeline": in_pipeline,
            "max_abs_difference": max(float(np.abs(a[k] - b[k]).max()) for k in a),
            "tflite_train_ops": [ops0, ops1], "file_bytes": [size0, size1]}


def markdown(doc: dict) -> str:
    lines = [f"# fold_constants, {doc['date']} ({doc['machine']})", "",
             f"`python -m bench.studies.fold_constants --size {doc['size']}`: train graph, "
             "batch 8, SGD, BatchNorm frozen. Live computed ops before -> after the pass, and "
             "the exported train subgraph without -> with it "
             "(`passes={'fold_constants': False}`).", "",
             "| model, scheme | freeze -> fold_constants | in the pipeline (after lower) | "
             ".tflite ops | file bytes | max abs diff |", "|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        f, p = r["after_freeze"], r["in_pipeline"]
        lines.append(
            f"| {r['model']} {r['scheme']} | {f['folded']} folded, {f['computed_ops']} | "
            f"{p['folded']} folded, {p['computed_ops']} | "
            f"{r['tflite_train_ops'][0]} -> {r['tflite_train_ops'][1]} | "
            f"{r['file_bytes'][0]:,} -> {r['file_bytes'][1]:,} | {r['max_abs_difference']:.3g} |")
    lines += ["", "Declined, per reason and op (in the pipeline):", ""]
    for r in doc["rows"]:
        lines.append(f"- {r['model']} {r['scheme']}: {r['in_pipeline'].get('declined', {})}")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    from tfpock.testing import models
    rows = [measure(f"MobileNetV2 0.35 @{FLAGS.size}", models.mobilenet_v2(size=FLAGS.size), s)
            for s in ("full", "last:2", "bias", SPARSE)]
    rows += [measure("every_layer_cnn", models.every_layer_cnn(), s)
             for s in ("full", "last:2", "bias")]
    doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": FLAGS.machine, "size": FLAGS.size, "rows": rows}
    cli.write_results(doc, markdown(doc), "fold-constants", FLAGS.out_dir)

if __name__ == "__main__":
    define_flags()
    app.run(main)
