"""Host side of the suite: builds each model once and writes every file the workers load.

Per model, into ``<work>/<model>/``: the Keras model (``model.keras``, loaded by the Keras
and ``tf.function`` workers so they all start from the same weights), the forward-only floor
(``forward-b<B>.tflite``: the model's inference pass with every weight folded into a constant,
so XNNPACK takes it all), tfpock's training models (``tfpock-<scheme>-b<B>.tflite``, with
compile time, file size and what the passes removed) and the stock recipe's outcome.
"""
from __future__ import annotations

import os
import time

import keras
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import (  # no public equivalent
    convert_variables_to_constants_v2)

import tfpock
from bench import stock_recipe
from bench.models import BenchModel

LEARNING_RATE = 0.01


def scheme_string(model: BenchModel, scheme: str) -> str:
    return f"last:{model.last_n}" if scheme == "last" else scheme


def export_forward(model: keras.Model, batch: int, path: str) -> int:
    """Inference with constant weights, signature input ``x``; returns the file size."""
    spec = tf.TensorSpec((batch, *model.inputs[0].shape[1:]), tf.float32, name="x")
    concrete = tf.function(lambda x: {"output": model(x, training=False)}).get_concrete_function(
        spec)
    frozen = convert_variables_to_constants_v2(concrete)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], tf.Module())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with stock_recipe.quiet_stderr():
        content = converter.convert()
    with open(path, "wb") as f:
        f.write(content)
    return len(content)


def compile_tfpock(model: keras.Model, scheme: str, batch: int, path: str) -> dict:
    """Compiles and exports; returns the figures the report shows. Ops removed come from the
    pass records (``Program.pass_records``) and ``layer_table()``."""
    start = time.perf_counter()
    program = tfpock.optimize(
        model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=keras.optimizers.SGD(LEARNING_RATE), scheme=scheme, batch_size=batch)
    compiled = time.perf_counter()
    with stock_recipe.quiet_stderr():
        program.export(path)
    exported = time.perf_counter()
    records = program.pass_records["train"]
    table = program.layer_table()
    return {
        "compile_s": compiled - start, "export_s": exported - compiled,
        "file_bytes": os.path.getsize(path),
        "train_ops_traced": records[0].ops_before, "train_ops_final": records[-1].ops_after,
        "ops_removed_by_pass": {r.name: r.ops_before - r.ops_after for r in records},
        "gradient_ops_removed": sum(row["gradient_ops_removed"] for row in table.values()),
        "trained_parameters": sum(row["trained_parameters"] for row in table.values()),
        "trained_layers": [name for name, row in table.items() if row["trained_parameters"]],
    }


def stock_outcome(model: keras.Model, trained_paths: list[str], batches: list[int],
                  folder: str, tag: str) -> dict:
    """Converts the stock recipe once at the first batch size; if builtins suffice, also at
    the others (timed later), else keeps the SELECT_TF_OPS file to show the runtime error."""
    start = time.perf_counter()
    first = stock_recipe.try_convert(model, trained_paths, batches[0])
    outcome = {"builtins_only": first["builtins_only"], "flex_ops": first["flex_ops"],
               "error": first["error"], "convert_s": time.perf_counter() - start, "files": {}}
    for batch in batches:
        content = first["content"] if batch == batches[0] else (
            stock_recipe.try_convert(model, trained_paths, batch)["content"]
            if first["builtins_only"] else None)
        if content is None:
            continue
        kind = "builtins" if first["builtins_only"] else "select"
        path = os.path.join(folder, f"stock-{tag}-{kind}-b{batch}.tflite")
        with open(path, "wb") as f:
            f.write(content)
        outcome["files"][str(batch)] = path
    if not first["builtins_only"] and outcome["files"]:
        outcome["tf_lite_interpreter"] = _try_tf_interpreter(
            outcome["files"][str(batches[0])], model, batches[0])
    return outcome


def _try_tf_interpreter(path: str, model: keras.Model, batch: int) -> str:
    """TF's own ``tf.lite.Interpreter`` on the SELECT_TF_OPS file: "ran" or its error."""
    import warnings

    import numpy as np
    try:
        with warnings.catch_warnings():   # its deprecation notice: the point is made below
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_path=path)
        runner = interpreter.get_signature_runner("train")
        runner(x=np.zeros((batch, *model.inputs[0].shape[1:]), np.float32),
               y=np.zeros((batch,), np.int32))
        return "ran"
    except Exception as exc:  # noqa: BLE001 - recorded in the report
        return f"{type(exc).__name__}: {str(exc)[:300]}"


def stock_outcome_from_file(keras_path: str, scheme_text: str, expected: int,
                            batches: list[int], folder: str, tag: str) -> dict:
    """:func:`stock_outcome` in a process of its own, the model read from its file (the
    scheme is resolved again there: a loaded Sequential model's variable paths differ)."""
    model = keras.models.load_model(keras_path, compile=False)
    paths = tfpock.Scheme.parse(scheme_text, model).trained_paths(model)
    if len(paths) != expected:
        raise RuntimeError(f"{scheme_text}: {len(paths)} weights on the loaded model, "
                           f"{expected} on the original")
    return stock_outcome(model, paths, batches, folder, tag)


def prepare_all(specs: list[BenchModel], batches: list[int], work_dir: str, log=print) -> dict:
    """:func:`prepare_model` for each model, with the stock-recipe conversions (the slowest
    part, ~30 s per MobileNetV2 scheme) running in a second process beside tfpock's."""
    import concurrent.futures
    import multiprocessing
    with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn")) as pool:
        entries = {s.name: prepare_model(s, batches, os.path.join(work_dir, s.name), log, pool)
                   for s in specs}
        for entry in entries.values():
            entry["stock"] = {k: f.result() for k, f in entry["stock"].items()}
    return entries


def prepare_model(spec: BenchModel, batches: list[int], folder: str, log=print,
                  pool=None) -> dict:
    """Everything the groups of one model need; returns the model's entry of the JSON.
    With ``pool``, ``entry["stock"]`` holds futures of the stock outcomes."""
    os.makedirs(folder, exist_ok=True)
    model = spec.build()
    keras_path = os.path.join(folder, "model.keras")
    model.save(keras_path)
    entry = {"description": spec.description, "input_shape": list(spec.input_shape),
             "classes": spec.classes, "parameters": int(model.count_params()),
             "keras_file": keras_path, "forward": {}, "tfpock": {}, "stock": {},
             "schemes": {}, **spec.data_spec()}
    for batch in batches:
        path = os.path.join(folder, f"forward-b{batch}.tflite")
        entry["forward"][str(batch)] = {"file": path,
                                        "file_bytes": export_forward(model, batch, path)}
    for scheme in ("last", "full"):
        text = scheme_string(spec, scheme)
        resolved = tfpock.Scheme.parse(text, model)
        paths = resolved.trained_paths(model)
        entry["schemes"][scheme] = {
            "scheme": text, "trained_paths": paths,
            "trained_layers": sorted(resolved.layers) if scheme != "full" else None}
        entry["tfpock"][scheme] = {}
        for batch in batches:
            log(f"{spec.name}: tfpock {text} batch {batch}")
            path = os.path.join(folder, f"tfpock-{scheme}-b{batch}.tflite")
            entry["tfpock"][scheme][str(batch)] = dict(compile_tfpock(model, text, batch, path),
                                                       file=path)
        log(f"{spec.name}: stock TFLite recipe, {text}")
        entry["stock"][scheme] = (
            pool.submit(stock_outcome_from_file, keras_path, text, len(paths), batches,
                        folder, scheme)
            if pool else stock_outcome(model, paths, batches, folder, scheme))
    return entry
