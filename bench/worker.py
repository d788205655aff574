"""One contender in its own process: set up, then time rounds of steps on command.

Run by the harness as ``[taskset -c CPUS] python bench/worker.py '<json spec>'``. Each
contender gets its own process so that its peak RSS (``ru_maxrss`` after the timed rounds) is
its own, and so that the TFLite contenders never import TensorFlow (this file imports it only
for the ``keras`` and ``tf_function`` kinds; on a device it runs with numpy and a TFLite
runtime, also under tflite-runtime 2.14's numpy < 2).

Protocol: one JSON object per line on the original stdout (library output is sent to stderr):
``{"event": "ready", "warmup_ms": [...]}`` after set-up and warm-up (or ``"error"``), then for
each ``run N`` line on stdin ``{"event": "round", "ms": [...]}``, and for ``exit``
``{"event": "done", "peak_rss_kb": ...}``.

Kinds: ``keras`` (``train_on_batch``; ``trained_layers`` set freezes every other layer),
``tf_function`` (GradientTape + SGD on the weights of ``scheme_text``), ``tfpock``
(tfpock.runtime.Trainer), ``tfpock_infer`` (its ``infer``), ``signature`` (a TFLite ``train(x, y)``
signature: the stock recipe), ``forward`` (a TFLite model's default signature, ``x`` only);
``lm_*``: the language-model study's (``bench/lm.py``: a KerasHub Llama, dict inputs, weighted
labels).
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEARNING_RATE = 0.01


def batches(data: dict, batch: int, count: int = 4, seed: int = 0):
    """``count`` fixed (x, y) batches, cycled through by the steps."""
    rng = np.random.default_rng(seed)
    shape = (batch, *data["input_shape"])
    out = []
    for _ in range(count):
        if data["input_dtype"] == "float32":
            x = rng.uniform(-1, 1, shape).astype(np.float32)
        else:
            x = rng.integers(0, data["vocab"], shape).astype(data["input_dtype"])
        out.append((x, rng.integers(0, data["classes"], batch).astype(np.int32)))
    return out


def lm_batches(spec: dict) -> list:
    sys.path.insert(0, REPO)
    from bench import lm
    return lm.batches(spec["config"]["vocabulary_size"], spec["batch"], spec["seq"])


def _tensorflow(threads: int):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return tf


def make_step(spec: dict):
    """A no-argument-besides-the-batch callable that runs one step synchronously."""
    kind, threads = spec["kind"], spec["threads"]
    if kind.startswith("lm_"):   # the language-model study's kinds (bench/lm.py)
        if kind != "lm_tfpock" and kind != "lm_infer":
            _tensorflow(threads)
        sys.path.insert(0, REPO)
        from bench import lm
        return lm.make_step(spec)
    if kind in ("keras", "tf_function"):
        tf = _tensorflow(threads)
        import keras
        model = keras.models.load_model(spec["model_file"], compile=False)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if kind == "keras":
            if spec.get("trained_layers") is not None:
                keep = set(spec["trained_layers"])
                for layer in model.layers:
                    if layer.name not in keep:
                        layer.trainable = False
            model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=loss_fn)
            return lambda x, y: model.train_on_batch(x, y)
        trained = trained_variables(model, spec["scheme_text"], spec["trained_count"])
        freeze_untrained_batchnorms(model, trained)

        @tf.function
        def step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            for var, grad in zip(trained, tape.gradient(loss, trained)):
                var.assign_sub(LEARNING_RATE * grad)
            return loss
        return lambda x, y: step(x, y).numpy()

    sys.path.insert(0, REPO)
    if kind in ("tfpock", "tfpock_infer"):
        from tfpock.runtime import Trainer
        trainer = Trainer(spec["model_file"], runtime=spec["runtime"], num_threads=threads)
        return trainer.train if kind == "tfpock" else lambda x, y: trainer.infer(x)
    from tfpock.runtime.interpreter import load_interpreter_class
    _, interpreter_cls = load_interpreter_class(spec["runtime"])
    interpreter = interpreter_cls(model_path=spec["model_file"], num_threads=threads)
    if kind == "signature":
        runner = interpreter.get_signature_runner("train")
        return lambda x, y: runner(x=x, y=y)
    if kind == "forward":
        runner = interpreter.get_signature_runner()
        return lambda x, y: runner(x=x)
    raise ValueError(f"unknown contender kind {kind!r}")


def trained_variables(model, scheme_text: str, expected: int) -> list:
    """The tf.Variables the scheme trains, resolved on this (loaded) model: variable paths
    differ after ``load_model`` for a Sequential model, so they are not passed in."""
    import tfpock
    chosen = set(tfpock.Scheme.parse(scheme_text, model).trained_paths(model))
    trained = [v.value for v in model.trainable_variables if v.path in chosen]
    if len(trained) != expected:
        raise RuntimeError(f"scheme {scheme_text} resolved to {len(trained)} weights on the "
                           f"loaded model, {expected} on the original")
    return trained


def freeze_untrained_batchnorms(model, trained: list) -> None:
    """A trainable BatchNorm of which the scheme trains nothing runs as Keras runs a frozen
    layer (moving statistics), as tfpock runs it: the same step, not batch statistics. The
    layers are the ones ``tfpock.optimize`` freezes (``tfpock.layers.frozen_forward_layers``)."""
    from tfpock.layers import frozen_forward_layers, leaf_layers
    ids = {id(v) for v in trained}
    trained_layers = {layer.name for layer in leaf_layers(model)
                      if any(id(v.value) in ids for v in layer.weights)}
    for layer in frozen_forward_layers(model, trained_layers):
        layer.trainable = False


def _timed(step, data, steps: int, offset: int = 0) -> list[float]:
    ms = []
    for i in range(steps):
        x, y = data[(offset + i) % len(data)]
        start = time.perf_counter()
        step(x, y)
        ms.append((time.perf_counter() - start) * 1e3)
    return ms


def main(spec: dict) -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)   # anything a library prints goes to the worker's log, not the protocol

    def send(**event):
        proto.write(json.dumps(event) + "\n")

    try:
        start = time.perf_counter()
        step = make_step(spec)
        data = (lm_batches(spec) if spec["kind"].startswith("lm_")
                else batches(spec["data"], spec["batch"]))
        warmup = _timed(step, data, spec["warmup"])
    except Exception as exc:  # noqa: BLE001 - reported to the harness, which records it
        send(event="error", stage="setup", error=f"{type(exc).__name__}: {exc}"[:2000])
        return
    send(event="ready", warmup_ms=warmup, setup_s=time.perf_counter() - start)
    done = 0
    for line in sys.stdin:
        command = line.split()
        if command[:1] == ["run"]:
            ms = _timed(step, data, int(command[1]), done)
            done += len(ms)
            send(event="round", ms=ms)
        elif command[:1] == ["exit"]:
            break
    send(event="done", peak_rss_kb=peak_rss_kb(),
         ru_maxrss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_rss_kb() -> int:
    """This process's peak resident set: ``VmHWM`` where Linux has it. ``ru_maxrss`` is not
    used for the figure because Linux folds the parent's high-water mark into it when the
    parent forks and execs (every worker would report the ~700 MB of the TF parent); it is
    still sent, for comparison."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
