"""Each subcommand end to end, in a subprocess as a user types it: what it writes, and its
error cases (exit code 2, one line naming the problem, no traceback, no output file).
``inspect``, ``train`` and ``memory`` run with TensorFlow blocked."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.cli.conftest import env, tfpock
from tests.numerics import assert_close


def assert_refused(result, command, *fragments, one_line=True):
    """Exit 2, no traceback, and (the last) stderr line ``tfpock COMMAND: ...``."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert lines and lines[-1].startswith(f"tfpock {command}: "), result.stderr
    if one_line:
        assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


def no_outputs(folder, *names):
    for name in names:
        assert not (folder / name).exists(), name
    assert not list(folder.glob(".tfpock-*.part"))


def test_optimize_writes_the_model_the_keras_file_describes(work):
    import keras
    result = work.runs["ok"]
    assert result.returncode == 0, result.stderr
    assert "wrote model.tflite" in result.stdout
    assert "trained weights: 4" in (work.dir / "report.txt").read_text()
    from tfpock.runtime import Trainer
    trainer = Trainer(work.dir / "model.tflite")
    model = keras.saving.load_model(work.dir / "model.keras")   # mycustom: imported by conftest
    x = np.random.default_rng(3).standard_normal((6, 20)).astype(np.float32)
    assert_close(trainer.predict(x), model.predict(x, verbose=0), atol=1e-5)
    assert trainer.metadata["optimizer"]["name"] == "Adam"
    assert trainer.metadata["scheme"] == {"default": "frozen",
                                          "layers": {"h": "full", "logits": "full"}}


def test_optimize_refusals(work):
    assert_refused(work.runs["lambda"], "optimize", "Lambda layer", "--unsafe", one_line=False)
    assert_refused(work.runs["unsupported"], "optimize", "layer 'prelu' (PReLU)",
                   "supported layers with weights", one_line=False)
    no_outputs(work.dir, "lambda.tflite", "odd.tflite", "odd.json")
    for args, fragment in [(["garbage.keras", "-o", "m.tflite"], "is not a Keras model file"),
                           (["missing.keras", "-o", "m.tflite"], "does not exist"),
                           (["model.keras"], "-o/--output OUT.tflite is required"),
                           (["model.keras", "-o", "m.onnx"], "must end with .tflite"),
                           (["model.keras", "-o", "m.tflite", "--optimizer", "rmsprop"],
                            "--optimizer"),
                           (["model.tflite", "-o", "m.tflite"], "expected a .keras file")]:
        assert_refused(tfpock("optimize", *args, cwd=work.dir, device=False), "optimize",
                       fragment)
    no_outputs(work.dir, "m.tflite")


def test_inspect_describes_any_file_without_tensorflow(work):
    text = tfpock("inspect", "model.tflite", cwd=work.dir)
    assert text.returncode == 0, text.stderr
    assert "signature train:" in text.stdout
    assert "inputs:  learning_rate: float32[1]; x: float32[4, 20]; y: int32[4]" in text.stdout
    assert "builtin-only: yes" in text.stdout
    assert "    h/kernel  float32[20, 16]" in text.stdout
    info = json.loads(tfpock("inspect", "model.tflite", "--json", cwd=work.dir).stdout)
    assert info["tfpock"]["model"] == "small"
    assert info["signatures"]["infer"]["outputs"] == [
        {"name": "output", "shape": [4, 5], "dtype": "float32"}]
    assert info["builtin_only"] and info["variables"]["count"] == 13   # 4 weights, Adam's 9
    flex = tfpock("inspect", "flex.tflite", cwd=work.dir)
    assert flex.returncode == 0, flex.stderr
    assert "builtin-only: NO: Flex (TF Select) ops FlexReluGrad" in flex.stdout
    assert_refused(tfpock("inspect", "nope.tflite", cwd=work.dir), "inspect", "does not exist")
    assert_refused(tfpock("inspect", "model.keras", cwd=work.dir), "inspect",
                   "is not a TFLite model")
    assert_refused(tfpock("inspect", "model.tflite", "--jsn", cwd=work.dir), "inspect",
                   "Unknown command line flag 'jsn'")


def test_train_trains_logs_and_plots_without_tensorflow(work):
    args = ["train", "model.tflite", "--data", "train.npz", "--val", "val.npz", "--epochs", "3",
            "--lr-schedule", "cosine", "--checkpoint", "t.npz", "--every", "4", "--log",
            "t.csv", "--plot", "t.png"]
    result = tfpock(*args, cwd=work.dir)
    assert result.returncode == 0, result.stderr
    epochs = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 3 and "val_accuracy" in epochs[0]     # a line per epoch, no bar
    assert "\r" not in result.stderr
    log = (work.dir / "t.csv").read_text().splitlines()
    assert log[0] == "epoch,loss,accuracy,val_loss,val_accuracy,lr,rows_skipped,skipped_steps"
    assert len(log) == 4 and log[1].endswith(",2,0")            # 42 rows: 2 over each epoch
    assert (work.dir / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same fit through the Python API: the same weights
    from tfpock.runtime import Trainer, fit
    data, val = np.load(work.dir / "train.npz"), np.load(work.dir / "val.npz")
    trainer = Trainer(work.dir / "model.tflite")
    history = trainer.fit(data["x"], data["y"], epochs=3, validation_data=(val["x"], val["y"]),
                          learning_rate=fit.cosine(trainer.learning_rate, 30))
    saved = Trainer(work.dir / "model.tflite")
    saved.restore(work.dir / "t.npz")
    assert_close(saved.state(), trainer.state())
    assert [float(line.split(",")[3]) for line in log[1:]] == history["val_loss"]
    csv = tfpock("train", "model.tflite", "--data", "train.csv", "--epochs", "1", cwd=work.dir)
    assert csv.returncode == 0 and "no --checkpoint: weights not kept" in csv.stderr


@pytest.mark.parametrize("args, fragments", [
    (["nope.tflite", "--data", "train.npz"], ["FILE 'nope.tflite' does not exist"]),
    (["model.keras", "--data", "train.npz"], ["is not a TFLite model"]),
    (["foreign.tflite", "--data", "train.npz"], ["not a tfpock training model"]),
    (["flex.tflite", "--data", "train.npz"], ["FlexReluGrad", "tfpock optimize"]),
    (["model.tflite"], ["--data is required"]),
    (["model.tflite", "--data", "missing.npz"], ["data file 'missing.npz' does not exist"]),
    (["model.tflite", "--data", "x19.npy,y.npy"],
     ["x has shape (40, 19); the model takes x of shape (rows, 20), float32"]),
    (["model.tflite", "--data", "x.npy,yhalf.npy"], ["y has dtype float64", "int32"]),
    (["model.tflite", "--data", "x.npy,y.npy", "--batch-size", "8"],
     ["compiled for batches of 4"]),
    (["model.tflite", "--data", "train.npz", "--epochs", "0"], ["--epochs"]),
    (["model.tflite", "--data", "train.npz", "--lr-schedule", "linear"], ["--lr-schedule"]),
    (["model.tflite", "--data", "train.npz", "--resume"], ["--resume needs --checkpoint"]),
    (["model.tflite", "--data", "train.npz", "--log", "no/such/log.csv"], ["does not exist"]),
], ids=lambda v: v[0] if isinstance(v, list) and v and v[0].startswith("-") else None)
def test_train_refuses_bad_input(work, args, fragments):
    result = tfpock("train", *args, "--checkpoint", "never.npz", "--plot", "never.png",
                    cwd=work.dir) if "--resume" not in args else tfpock("train", *args,
                                                                         cwd=work.dir)
    assert_refused(result, "train", *fragments)
    no_outputs(work.dir, "never.npz", "never.png")


def test_resume_from_a_checkpoint_of_another_model_is_refused(work, tmp_path):
    from tfpock.runtime import Trainer, checkpoint
    trainer = Trainer(work.dir / "model.tflite")
    other = tmp_path / "other.npz"
    checkpoint.save(other, trainer.state(), "0" * 64, "other (scheme full)")
    before = other.read_bytes()
    result = tfpock("train", "model.tflite", "--data", "train.npz", "--checkpoint", other,
                    "--resume", cwd=work.dir)
    assert_refused(result, "train", "is of another model", "other (scheme full)",
                   "nothing was loaded")
    assert other.read_bytes() == before


def test_train_resumes_after_kill_9_mid_epoch_as_if_never_stopped(work, tmp_path):
    """1000 steps an epoch; the run is killed (SIGKILL) once its first checkpoint (step 50)
    is there, and the same command with --resume ends where an uninterrupted run ends."""
    def args(name):
        return ["train", "model.tflite", "--data", "big.npz", "--epochs", "2", "--val",
                "val.npz", "--lr-schedule", "step", "--lr-every", "300", "--checkpoint",
                tmp_path / f"{name}.npz", "--every", "50", "--log", tmp_path / f"{name}.csv"]
    whole = tfpock(*args("whole"), cwd=work.dir)
    assert whole.returncode == 0, whole.stderr
    from tests.cli.conftest import DEVICE
    child = subprocess.Popen([sys.executable, "-c", DEVICE, *map(str, args("cut"))],
                             cwd=work.dir, env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (tmp_path / "cut.npz").exists() and child.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    child.wait()
    from tfpock.runtime import checkpoint
    position = checkpoint.read_extra(tmp_path / "cut.npz")["fit"]
    assert child.returncode == -signal.SIGKILL
    assert position["epoch"] == 0 and 0 < position["batch"] < 1000     # mid-epoch
    resumed = tfpock(*args("cut"), "--resume", cwd=work.dir)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at epoch 1, step {position['step']}" in resumed.stderr
    from tfpock.runtime import Trainer
    states = []
    for name in ("whole", "cut"):
        t = Trainer(work.dir / "model.tflite")
        t.restore(tmp_path / f"{name}.npz")
        states.append(t.state())
    assert_close(states[1], states[0])                                  # bit-identical
    assert (tmp_path / "cut.csv").read_text() == (tmp_path / "whole.csv").read_text()


def test_memory_and_its_old_name(work):
    new = tfpock("memory", "model.tflite", "--signature", "train", cwd=work.dir)
    assert new.returncode == 0, new.stderr
    old = subprocess.run([sys.executable, "-m", "tfpock.tflite.memory_cli", "model.tflite",
                          "--signature", "train"], cwd=work.dir, env=env(), capture_output=True,
                         text=True, timeout=120)
    assert new.stdout == old.stdout and "signature train:" in new.stdout
    bad = tfpock("memory", "model.tflite", "--signature", "nope", cwd=work.dir)
    assert_refused(bad, "memory", "--signature 'nope' is not in")


def test_top_level_help_and_unknown_commands(work):
    listing = tfpock("--help", cwd=work.dir)
    assert listing.returncode == 0
    for name in ("bench", "inspect", "memory", "optimize", "train"):
        assert f"\n  {name} " in listing.stdout
    assert tfpock(cwd=work.dir).returncode == 2
    unknown = tfpock("trian", cwd=work.dir)
    assert unknown.returncode == 2 and "unknown command 'trian'" in unknown.stderr
    for name in ("optimize", "inspect", "train", "memory", "bench"):
        help_ = tfpock(name, "--help", cwd=work.dir, device=name != "optimize")
        assert help_.returncode == 0 and "Example" in help_.stdout, (name, help_.stderr)


def test_bench_runs_the_checkout_script_and_says_when_there_is_none(tmp_path,
                                                                     monkeypatch):
    from tfpock.cli import _common, bench
    assert bench.script().endswith(os.path.join("bench", "run.py"))
    with pytest.raises(_common.UsageError, match="needs a checkout"):
        bench.script(str(tmp_path / "site-packages" / "tfpock"))
    calls = []
    monkeypatch.setattr(bench.subprocess, "call", lambda command, cwd: calls.append(
        (command, cwd)) or 0)
    assert bench.main(["--quick", "--models", "mobilenet_v2"]) == 0
    assert calls == [([sys.executable, bench.script(), "--quick", "--models", "mobilenet_v2"],
                      os.path.dirname(os.path.dirname(bench.script())))]
    assert "bench/run.py" in tfpock("bench", "--help", cwd=tmp_path, device=False).stdout


def test_search_writes_a_scheme_optimize_takes_and_refuses_a_budget_nothing_fits(work,
                                                                                  tmp_path):
    """``tfpock search`` (issue 12's search behind issue 14's command): its scheme.json is
    what ``optimize --scheme`` takes; a budget below the base alone, or a missing --val, is
    one line and no folder."""
    data = np.load(work.dir / "big.npz")
    np.savez(tmp_path / "tr.npz", x=data["x"][:160], y=data["y"][:160])
    np.savez(tmp_path / "va.npz", x=data["x"][160:200], y=data["y"][160:200])
    common = ["model.keras", "--custom-objects", "mycustom", "--data", tmp_path / "tr.npz",
              "--val", tmp_path / "va.npz", "--batch-size", "4", "--steps", "5", "--seeds", "1"]
    result = tfpock("search", *common, "-o", tmp_path / "found", cwd=work.dir, device=False)
    assert result.returncode == 0, result.stderr
    scheme = json.loads((tmp_path / "found" / "scheme.json").read_text())
    assert scheme["layers"], scheme
    assert {"table.csv", "report.md", "summary.json"} <= {p.name for p in
                                                          (tmp_path / "found").iterdir()}
    refused = tfpock("search", *common, "--memory-budget", "10", "-o", tmp_path / "none",
                     cwd=work.dir, device=False)
    assert_refused(refused, "search", "fits no scheme", "needs")
    no_val = tfpock("search", "model.keras", "--data", tmp_path / "tr.npz", "-o",
                    tmp_path / "none", cwd=work.dir, device=False)
    assert_refused(no_val, "search", "--val is required")
    assert not (tmp_path / "none").exists()


def test_train_takes_several_inputs_and_sample_weights_from_an_npz(tmp_path):
    """A model with two named inputs compiled with ``sample_weight=True``: ``tfpock train``
    (TensorFlow blocked) reads an array per input, ``y`` and ``sample_weight`` from the .npz
    and ends where ``Trainer.fit`` with the same weights ends; an .npz without one of the
    inputs is one line naming it."""
    import keras

    from tfpock import optimize
    from tfpock.runtime import Trainer

    keras.utils.set_random_seed(0)
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    h = keras.layers.Dense(4, activation="relu", name="h")(keras.layers.Concatenate()([a, b]))
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(3, name="out")(h))
    program = optimize(model, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), optimizer=keras.optimizers.SGD(0.2), batch_size=4,
        sample_weight=True)
    program.export(tmp_path / "two.tflite")
    rng = np.random.default_rng(0)
    x = {"a": rng.standard_normal((10, 3)).astype(np.float32),
         "b": rng.standard_normal((10, 2)).astype(np.float32)}
    y, w = rng.integers(0, 3, 10).astype(np.int32), rng.uniform(0, 2, 10).astype(np.float32)
    np.savez(tmp_path / "d.npz", **x, y=y, sample_weight=w)
    done = tfpock("train", "two.tflite", "--data", "d.npz", "--epochs", "2", "--checkpoint",
                  "c.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    expected = Trainer(tmp_path / "two.tflite")
    expected.fit(x, y, sample_weight=w, epochs=2)
    trained = Trainer(tmp_path / "two.tflite")
    trained.restore(tmp_path / "c.npz")
    assert_close(trained.weights(), expected.weights())
    assert not np.allclose(expected.weights()["h/kernel"], model.get_layer("h").kernel.numpy())
    np.savez(tmp_path / "no_b.npz", a=x["a"], y=y)
    refused = tfpock("train", "two.tflite", "--data", "no_b.npz", cwd=tmp_path)
    assert_refused(refused, "train", "missing ['b']")
