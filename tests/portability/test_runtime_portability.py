"""The device side runs without TensorFlow, on ai-edge-litert and on tflite-runtime 2.14.

Models are compiled and exported on the host (TensorFlow; ``common.py``, shared with
``aarch64_check.py``), then run by ``device_protocol.py`` in a subprocess, the "device", with
the same protocol the test process runs in-process on ai-edge-litert (load, infer, train,
weights, save, train on, restore, restore into a fresh Trainer):

1. ``sys.executable`` with TensorFlow, Keras and tf_keras made unimportable (a meta-path
   finder installed before anything else): the results equal the in-process ones bit for bit
   (same runtime, same file, one thread).
2. A virtual environment with tflite-runtime 2.14.0 and numpy < 2 (what an older Raspberry Pi
   image runs), where TensorFlow is not installed at all. It is created once at
   ``$TFPOCK_TFLITE_RUNTIME_VENV`` or ``<repo>/.venv-tflite-runtime`` and reused. If it cannot
   be created (no network, no wheel for this platform) those tests are skipped with pip's last
   lines as the reason, and a warning says so; set ``TFPOCK_REQUIRE_TFLITE_RUNTIME=1`` to make
   that a failure instead. Losses match to 1e-5 relative, weights to 1e-5 absolute and
   inference outputs to 1e-4 relative (two builds of the kernels round differently: they are
   close, not bit-equal).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.portability import common
from tests.portability.device_protocol import decode, load_inputs, run_protocol
from tests.numerics import assert_close

REPO = Path(__file__).resolve().parents[2]
DEVICE_SCRIPT = REPO / "tests" / "portability" / "device_protocol.py"
SUBPROCESS_TIMEOUT = 300
PIP_TIMEOUT = 300

NO_TF_MODELS = ["mlp", "cnn"]
TFLITE_RUNTIME_MODELS = ["mlp", "cnn", "mobilenet_v2"]
NO_TF_STEPS = 3
TFLITE_RUNTIME_STEPS = 2


# ---------------------------------------------------------------- host side: models, batches

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> {"path", "inputs"}: exported model and an .npz of batches, made on first use."""
    cache = {}

    def get(name):
        if name not in cache:
            folder = tmp_path_factory.mktemp(f"portability-{name}")
            path, inputs = folder / "model.tflite", folder / "inputs.npz"
            common.export(name, path, inputs, max(NO_TF_STEPS, TFLITE_RUNTIME_STEPS) + 1)
            cache[name] = {"path": str(path), "inputs": str(inputs)}
        return cache[name]

    return get


@pytest.fixture(scope="module")
def in_process(exported, tmp_path_factory):
    """(name, steps) -> the protocol's results on ai-edge-litert in this process."""
    cache = {}

    def get(name, steps):
        if (name, steps) not in cache:
            files = exported(name)
            cache[name, steps] = run_protocol(
                files["path"], "ai-edge-litert", load_inputs(files["inputs"]), steps,
                tmp_path_factory.mktemp(f"host-{name}-{steps}"), num_threads=1)
        return cache[name, steps]

    return get


def run_device(python, names, exported, runtime, steps, workdir, block_tensorflow):
    """Runs the device script with ``python`` on the exported ``names``; returns its JSON."""
    request = {"runtime": runtime, "num_threads": 1, "steps": steps, "workdir": str(workdir),
               "models": {n: exported(n) for n in names}}
    request_file = Path(workdir) / "request.json"
    request_file.write_text(json.dumps(request))
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = str(REPO)  # tfpock need not be installed on the device
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    cmd = [str(python), str(DEVICE_SCRIPT)]
    if block_tensorflow:
        cmd.append("--block-tensorflow")
    cmd.append(str(request_file))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(workdir),
                          timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, (f"device script failed ({proc.returncode}):\n"
                                  f"{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def model_result(report, name):
    """The model's results; a model the runtime could not run fails the test (pytest.fail, not
    an AssertionError, so that an xfail for wrong numbers cannot hide it)."""
    result = report["results"][name]
    if "error" in result:
        pytest.fail(f"{name} on {report['runtime_version']}: {result['error']}\n"
                    f"{result.get('traceback', '')}")
    return result


def assert_restore_works(result, where):
    """Checkpoint semantics, checked on one runtime (so exactly)."""
    assert result["weights_moved_after_save"], f"{where}: the step after save moved nothing"
    assert result["restored_equal"], f"{where}: restore did not bring back the saved weights"
    assert result["fresh_restored_equal"], f"{where}: a fresh Trainer restored other weights"
    assert result["loss_after_restore"] == result["loss_after_save"], where
    for key in ("infer_restored", "infer_fresh_restored"):
        assert decode(result[key]).tobytes() == decode(result["infer_after"]).tobytes(), \
            f"{where}: {key}"


# ---------------------------------------------------------------- 1. no TensorFlow, same runtime

@pytest.fixture(scope="module")
def without_tensorflow(exported, tmp_path_factory):
    return run_device(sys.executable, NO_TF_MODELS, exported, "ai-edge-litert", NO_TF_STEPS,
                      tmp_path_factory.mktemp("device-no-tf"), block_tensorflow=True)


def test_device_process_never_had_tensorflow(without_tensorflow):
    report = without_tensorflow
    # the blocker works: TensorFlow is installed here, yet it cannot be imported there
    assert "is blocked" in (report["tensorflow_import_error"] or ""), report
    assert report["blocked_attempts"] == [], "the runtime tried to import " \
                                             f"{report['blocked_attempts']}"
    assert report["tf_modules_loaded"] == []
    assert Path(report["tfpock_runtime_file"]).resolve().is_relative_to(REPO)


@pytest.mark.parametrize("name", NO_TF_MODELS)
def test_without_tensorflow_equals_in_process(name, without_tensorflow, in_process):
    device = model_result(without_tensorflow, name)
    host = in_process(name, NO_TF_STEPS)
    assert device["runtime"] == host["runtime"] == "ai-edge-litert"
    assert len(device["losses"]) == NO_TF_STEPS
    assert all(np.isfinite(device["losses"]))
    assert device["losses"] == host["losses"]  # floats through JSON round-trip exactly
    assert device["loss_after_save"] == host["loss_after_save"]
    assert sorted(device["weights"]) == sorted(host["weights"])
    for path in host["weights"]:
        assert decode(device["weights"][path]).tobytes() == \
            decode(host["weights"][path]).tobytes(), path
    for key in common.ARRAYS:
        assert decode(device[key]).tobytes() == decode(host[key]).tobytes(), key
    # training did something, so the comparison is not vacuous
    assert decode(device["infer_after"]).tobytes() != decode(device["infer_before"]).tobytes()
    assert_restore_works(device, f"{name} without TensorFlow")


# ---------------------------------------------------------------- 2. tflite-runtime 2.14 venv

def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _venv_works(venv: Path) -> tuple[bool, str]:
    python = _venv_python(venv)
    if not python.exists():
        return False, f"{python} does not exist"
    check = ("import numpy, tflite_runtime, tflite_runtime.interpreter; "
             "assert int(numpy.__version__.split('.')[0]) < 2, numpy.__version__; "
             "assert tflite_runtime.__version__ == '2.14.0', tflite_runtime.__version__")
    proc = subprocess.run([str(python), "-c", check], capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in os.environ.items()
                                            if k not in ("PYTHONPATH", "PYTHONHOME")})
    return proc.returncode == 0, (proc.stderr or proc.stdout)[-2000:]


def _unavailable(reason: str):
    if os.environ.get("TFPOCK_REQUIRE_TFLITE_RUNTIME") == "1":
        pytest.fail(reason)
    warnings.warn(reason, pytest.PytestWarning)
    pytest.skip(reason)


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@pytest.fixture(scope="session")
def tflite_runtime_python() -> Path:
    """The Python of a venv with tflite-runtime 2.14.0 and numpy < 2 (created or reused)."""
    venv = Path(os.environ.get("TFPOCK_TFLITE_RUNTIME_VENV") or REPO / ".venv-tflite-runtime")
    with common.locked(venv.parent / (venv.name + ".lock")):
        ok, _ = _venv_works(venv)
        if ok:
            return _venv_python(venv)
        if venv.exists() and any(venv.iterdir()) and not (venv / "pyvenv.cfg").exists():
            _unavailable(f"{venv} exists and is not a virtual environment; not touching it")
        steps = [("python -m venv", [sys.executable, "-m", "venv", "--clear", str(venv)]),
                 ('pip install "numpy<2" tflite-runtime==2.14.0',
                  [str(_venv_python(venv)), "-m", "pip", "install",
                   "--disable-pip-version-check", "numpy<2", "tflite-runtime==2.14.0"])]
        for label, cmd in steps:
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT)
            except (subprocess.TimeoutExpired, OSError) as exc:
                _unavailable(f"cannot build the tflite-runtime 2.14 venv at {venv}: "
                             f"{label}: {exc}")
            if proc.returncode != 0:
                _unavailable(f"cannot build the tflite-runtime 2.14 venv at {venv}: {label} "
                             f"exited {proc.returncode}:\n{_tail(proc.stdout + proc.stderr)}")
        ok, why = _venv_works(venv)
        if not ok:
            _unavailable(f"the tflite-runtime 2.14 venv at {venv} was built but does not "
                         f"import: {_tail(why)}")
        return _venv_python(venv)


@pytest.fixture(scope="module")
def on_tflite_runtime(tflite_runtime_python, exported, tmp_path_factory):
    return run_device(tflite_runtime_python, TFLITE_RUNTIME_MODELS, exported, "tflite-runtime",
                      TFLITE_RUNTIME_STEPS, tmp_path_factory.mktemp("device-tflite-runtime"),
                      block_tensorflow=False)


def test_tflite_runtime_venv_is_a_device_without_tensorflow(on_tflite_runtime,
                                                            tflite_runtime_python):
    report = on_tflite_runtime
    assert report["runtime_version"] == "2.14.0"
    assert int(report["numpy"].split(".")[0]) < 2, report["numpy"]
    assert Path(report["prefix"]).resolve() == tflite_runtime_python.parent.parent.resolve()
    # nothing blocks it there: TensorFlow simply is not installed
    assert (report["tensorflow_import_error"] or "").startswith("ModuleNotFoundError"), report
    assert report["tf_modules_loaded"] == []


# Found by this test: TFLite 2.14's REVERSE_V2 kernel reverses only the first axis of a
# multi-axis reverse, silently, while LiteRT reverses all of them (the TF 2.21 converter emits
# REVERSE_V2 version 1 either way). The depthwise lowering used tf.reverse(w, axis=[0, 1]) and
# gave wrong gradients before DepthwiseConv2D layers on 2.14; it now reverses one axis at a
# time, and tfpock.export.verify refuses a multi-axis REVERSE_V2.


@pytest.mark.parametrize("name", TFLITE_RUNTIME_MODELS)
def test_tflite_runtime_matches_ai_edge_litert(name, on_tflite_runtime, in_process):
    device = model_result(on_tflite_runtime, name)
    host = in_process(name, TFLITE_RUNTIME_STEPS)
    assert device["runtime"] == "tflite-runtime" and host["runtime"] == "ai-edge-litert"
    assert all(np.isfinite(device["losses"]))
    assert_close(device["losses"], host["losses"], rtol=common.LOSS_RTOL, where="losses")
    assert_close(device["loss_after_save"], host["loss_after_save"], rtol=common.LOSS_RTOL,
                 where="loss_after_save")
    assert sorted(device["weights"]) == sorted(host["weights"])
    for path in host["weights"]:
        assert_close(decode(device["weights"][path]), decode(host["weights"][path]),
                     atol=common.WEIGHT_ATOL, where=path)
    for key in common.ARRAYS:  # the whole frozen forward: MobileNetV2's logits (|x| ~4)
        # measured 2.1e-5 apart, 2e-7 relative for its loss and 3e-7 for its weights
        assert_close(decode(device[key]), decode(host[key]), rtol=common.OUTPUT_RTOL,
                     atol=common.OUTPUT_ATOL, where=key)
    assert_restore_works(device, f"{name} on tflite-runtime 2.14")
