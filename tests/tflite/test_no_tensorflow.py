"""The tflite room runs where TensorFlow cannot be imported: a device, or a tool on one.

Every module of ``tfpock.tflite`` is imported in a fresh interpreter with TensorFlow, Keras and
tf_keras blocked (``tests/portability/device_protocol.py``'s blocker), and the file pipeline
(fuse, reorder, inplace) runs there on an exported model: its file and records must equal the
host's.
"""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import keras
import pytest

import tfpock
from tfpock.testing import models
from tfpock.pipeline import build_file_pipeline
from tfpock.tflite.ir import TfliteFile

REPO = Path(__file__).resolve().parents[2]

DEVICE = """
import hashlib, importlib, json, pkgutil, sys
from tests.portability import device_protocol as device
device._block_tensorflow()
import tfpock.tflite
from graph_passes.pass_base import Sequential
from tfpock.tflite.fuse import Fuse
from tfpock.tflite.inplace import Inplace
from tfpock.tflite.ir import TfliteFile
from tfpock.tflite.reorder import Reorder
modules = [m.name for m in pkgutil.iter_modules(tfpock.tflite.__path__, "tfpock.tflite.")]
for name in modules:
    importlib.import_module(name)
content = open(sys.argv[1], "rb").read()
ir, records = Sequential([Fuse(), Reorder(), Inplace()],
                             check_invariants=True)(TfliteFile(content, "train"))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in device.BLOCKED)
print(json.dumps({"modules": modules, "sha": hashlib.sha256(ir.content).hexdigest(),
                  "records": [[r.name, r.ops_before, r.ops_after, r.peak_live_before,
                               r.peak_live_after] for r in records],
                  "blocked": device.BLOCKED_ATTEMPTS, "loaded": loaded}))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("no-tf") / "cnn.tflite"
    tfpock.optimize(models.every_layer_cnn(dropout=0.0),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    optimizer=keras.optimizers.SGD(0.05), scheme="full", batch_size=4,
                    passes={"fuse": False}, nonfinite="apply").export(path)
    return path


def test_every_module_imports_and_the_file_passes_run_without_tensorflow(exported):
    proc = subprocess.run([sys.executable, "-c", DEVICE, str(exported)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    device = json.loads(proc.stdout.strip().splitlines()[-1])
    assert device["blocked"] == [] and device["loaded"] == []
    assert {"tfpock.tflite.fuse", "tfpock.tflite.reorder", "tfpock.tflite.inplace",
            "tfpock.tflite.memory", "tfpock.tflite.memory_cli",
            "tfpock.tflite.model_file"} <= set(device["modules"])
    host, records = build_file_pipeline(passes={"reorder": True})(
        TfliteFile(exported.read_bytes(), "train"))
    assert device["sha"] == hashlib.sha256(host.content).hexdigest()
    assert device["records"] == [[r.name, r.ops_before, r.ops_after, r.peak_live_before,
                                  r.peak_live_after] for r in records]
    assert records[1].modified   # reorder found a lower peak: the check is not vacuous
