"""The files the command tests use: Keras models saved as .keras (one with a custom
activation from a module, one with a Lambda and a PReLU, which tfpock does not train), a Flex
.tflite, a foreign .tflite, data; and the ``tfpock optimize`` runs, started at once in
parallel."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import types

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PORTABILITY = os.path.join(ROOT, "tests", "portability")

# Runs the command as ``python -m tfpock.cli`` does, in a process where TensorFlow, Keras
# and tf_keras cannot be imported (tests/portability/device_protocol.py): exit code 99 if
# anything tried.
DEVICE = f"""
import sys
sys.path.insert(0, {PORTABILITY!r})
import device_protocol as device
device._block_tensorflow()
from tfpock.cli import main
code = main(["tfpock", *sys.argv[1:]])
if device.BLOCKED_ATTEMPTS:
    sys.stderr.write("imported TensorFlow: %s\\n" % device.BLOCKED_ATTEMPTS)
    code = 99
sys.exit(code)
"""

CUSTOM = '''import keras


@keras.saving.register_keras_serializable(package="tfpock_test")
def scaled_tanh(x):
    return keras.ops.tanh(x) * 1.5
'''


def env() -> dict:
    return {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}


def tfpock(*args, cwd, device=True, **kw) -> subprocess.CompletedProcess:
    """Runs ``tfpock ARGS`` as a user types it (``python -m tfpock.cli``), TensorFlow
    blocked with ``device=True``."""
    command = ([sys.executable, "-c", DEVICE] if device else
               [sys.executable, "-m", "tfpock.cli"]) + [str(a) for a in args]
    return subprocess.run(command, cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=300, **kw)


def start(*args, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tfpock.cli", *map(str, args)], cwd=cwd,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture(scope="package")
def work(tmp_path_factory):
    """``.dir``: a folder with the inputs; ``.runs``: the optimize runs' results."""
    import keras
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("cli")
    (folder / "mycustom.py").write_text(CUSTOM)
    sys.path.insert(0, str(folder))
    try:
        custom = importlib.import_module("mycustom")
    finally:
        sys.path.pop(0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((20,)),
                              keras.layers.Dense(16, activation=custom.scaled_tanh, name="h"),
                              keras.layers.Dense(5, name="logits")], name="small")
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  optimizer=keras.optimizers.Adam(0.01))
    model.save(folder / "model.keras")
    odd = keras.Sequential([keras.Input((20,)), keras.layers.Dense(8, name="d"),
                            keras.layers.Lambda(lambda t: t * 2.0, name="double"),
                            keras.layers.PReLU(name="prelu"),
                            keras.layers.Dense(5, name="out")], name="odd")
    odd.compile(loss="mse", optimizer="sgd")
    odd.save(folder / "odd.keras")
    (folder / "garbage.keras").write_bytes(b"not a zip file at all")
    runs = {  # every optimize run at once (each imports TensorFlow), while this goes on
        "ok": start("optimize", "model.keras", "-o", "model.tflite", "--custom-objects",
                    "mycustom", "--scheme", "last:2", "--batch-size", "4", "--report",
                    "report.txt", cwd=folder),
        "lambda": start("optimize", "odd.keras", "-o", "lambda.tflite", cwd=folder),
        "unsupported": start("optimize", "odd.keras", "-o", "odd.tflite", "--unsafe",
                             "--report", "odd.json", cwd=folder),
    }

    @tf.function(input_signature=[tf.TensorSpec((4, 8)), tf.TensorSpec((4, 8))])
    def relu_grad(dy, x):
        return {"out": tf.raw_ops.ReluGrad(gradients=dy, features=x)}

    for name, ops in (("flex", [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]),
                      ("foreign", None)):
        fn = relu_grad if name == "flex" else tf.function(
            lambda x: {"out": x * 2.0}, input_signature=[tf.TensorSpec((4, 20))])
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [fn.get_concrete_function()], fn)
        if ops:
            converter.target_spec.supported_ops = ops
        (folder / f"{name}.tflite").write_bytes(converter.convert())

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4002, 20)).astype(np.float32)
    y = rng.integers(0, 5, len(x)).astype(np.int32)
    np.savez(folder / "big.npz", x=x, y=y)
    np.savez(folder / "train.npz", x=x[:42], y=y[:42])
    np.savez(folder / "val.npz", x=x[42:52], y=y[42:52])
    np.save(folder / "x19.npy", x[:40, :19])
    np.save(folder / "y.npy", y[:40])
    np.save(folder / "x.npy", x[:40])
    np.save(folder / "yhalf.npy", y[:40] + 0.5)
    np.savetxt(folder / "train.csv", np.column_stack([x[:12], y[:12]]), delimiter=",",
               header=",".join([f"f{i}" for i in range(20)] + ["label"]), comments="")

    return types.SimpleNamespace(dir=folder, runs={k: finish(p) for k, p in runs.items()})
