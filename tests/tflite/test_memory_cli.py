"""The memory command line (``python -m tfpock.tflite.memory_cli``) and ``memory.live_tensors``.

The CLI runs in subprocesses, as a user runs it, on one small tfpock training model; every
figure it prints or writes must equal what the ``tfpock.tflite.memory`` API computes.
"""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import keras
import pytest
import tensorflow as tf

import tfpock
from tfpock.testing import models
from tfpock.testing.litert import convert_builtins_only
from tfpock.tflite import memory, model_file

REPO = Path(__file__).resolve().parents[2]
SIGNATURES = ["infer", "load", "metadata", "train", "weights"]
PEAK_LINE = re.compile(r"^signature (\S+): (\d+) operators\n  graph peak: [\d.]+ MB "
                       r"\((\d+) bytes\) at op (\d+) (\S+)$", re.M)
TABLE_ROW = re.compile(r"^    +(\d+)  +(\S+) +(\S+) +(.*)$")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("memory-cli") / "mlp.tflite"
    tfpock.optimize(models.mlp(), loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), optimizer=keras.optimizers.SGD(0.05), scheme="full",
        batch_size=4).export(path)
    return path


@pytest.fixture(scope="module")
def parsed(model_path) -> model_file.ModelFile:
    return model_file.read(model_path.read_bytes())


def cli(*args, prelude: str = "") -> subprocess.CompletedProcess:
    """Runs the CLI in a fresh interpreter; ``prelude`` is Python run before it is imported."""
    code = (f"{prelude}\nimport runpy, sys\nsys.argv[0] = 'tfpock-memory'\n"
            "runpy.run_module('tfpock.tflite.memory_cli', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_prints_the_api_peak_of_every_signature(model_path, parsed):
    proc = cli(model_path)
    assert proc.returncode == 0, proc.stderr
    printed = {m[0]: m[1:] for m in PEAK_LINE.findall(proc.stdout)}
    assert sorted(printed) == SIGNATURES
    for name, (n_ops, peak, index, op) in printed.items():
        t = memory.timeline(parsed, name)
        assert (int(n_ops), int(peak)) == (len(t.ops), t.peak_bytes), name
        assert (int(index), op) == (t.peak_op.index, t.peak_op.op), name
    assert "measured arena" not in proc.stdout


def test_json_matches_the_api(model_path, parsed, tmp_path):
    out = tmp_path / "memory.json"
    proc = cli(model_path, "--signature", "train", "--signature", "infer", "--json", out)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert list(doc["signatures"]) == ["train", "infer"]   # in the order asked
    for name, sig in doc["signatures"].items():
        t = memory.timeline(parsed, name)
        assert sig["peak_bytes"] == t.peak_bytes
        assert sig["peak_op"] == dataclasses.asdict(t.peak_op)
        assert sig["timeline"] == [dataclasses.asdict(o) for o in t.ops]
        live = memory.live_tensors(parsed, name, t.peak_op.index)
        assert sig["peak_tensors"] == [dict(dataclasses.asdict(x), shape=list(x.shape))
                                       for x in live]
        assert sig["measured_arena_bytes"] is None
    assert not list(tmp_path.glob(".tfpock-*"))   # the atomic write left no temporary file


def test_timeline_has_one_row_per_operator(model_path, parsed):
    proc = cli(model_path, "--signature", "train", "--timeline")
    assert proc.returncode == 0, proc.stderr
    rows = [re.match(r"^ +(\d+)  (\S+) +([\d.]+)$", line)
            for line in proc.stdout.split("  timeline:\n")[1].splitlines()[1:]]
    ops = memory.timeline(parsed, "train").ops
    assert [(int(r[1]), r[2]) for r in rows] == [(o.index, o.op) for o in ops]
    assert [float(r[3]) for r in rows] == [round(o.live_bytes / 1e6, 3) for o in ops]


def test_top_lists_the_largest_tensors_alive_at_the_peak(model_path, parsed):
    proc = cli(model_path, "--signature", "train", "--top", "3")
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("largest tensors alive at op ")[1].splitlines()[2:]
    rows = [TABLE_ROW.match(line) for line in table]
    sizes = [int(r[1]) for r in rows]
    t = memory.timeline(parsed, "train")
    assert len(sizes) == 3
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) <= t.peak_bytes
    live = memory.live_tensors(parsed, "train", t.peak_op.index)
    assert [(int(r[1]), r[2], r[4]) for r in rows] == [(x.bytes, x.dtype, x.name)
                                                       for x in live[:3]]


def test_measure_reports_a_positive_arena(model_path, tmp_path):
    out = tmp_path / "memory.json"
    proc = cli(model_path, "--signature", "infer", "--measure", "--runtime", "ai_edge_litert",
               "--json", out)
    assert proc.returncode == 0, proc.stderr
    arena = json.loads(out.read_text())["signatures"]["infer"]["measured_arena_bytes"]
    assert arena > 0
    assert f"measured arena: {arena / 1e6:.2f} MB ({arena} bytes; runtime ai-edge-litert" \
        in proc.stdout


@pytest.mark.parametrize("case, message", [
    ("missing", r"MODEL '.*absent\.tflite': cannot read it \(No such file or directory\)"),
    ("text", r"MODEL '.*notes\.txt' is not a TFLite file"),
    ("signature", r"--signature 'trian' is not in '.*'; available: " + ", ".join(SIGNATURES)),
])
def test_bad_arguments_exit_2_with_one_line(case, message, model_path, tmp_path):
    (tmp_path / "notes.txt").write_text("not a model\n" * 10)
    args = {"missing": [tmp_path / "absent.tflite"], "text": [tmp_path / "notes.txt"],
            "signature": [model_path, "--signature", "trian"]}[case]
    out = tmp_path / "memory.json"
    proc = cli(*args, "--json", out)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert re.search(message, proc.stderr), proc.stderr
    assert proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no JSON, no .part


def test_runs_where_tensorflow_cannot_be_imported(model_path, tmp_path):
    # tests/portability/device_protocol.py's blocker: TF, Keras and tf_keras raise ImportError
    blocker = """
import atexit, sys
from tests.portability import device_protocol as device
device._block_tensorflow()
loaded = lambda: [m for m in sys.modules if m.split(".")[0] in device.BLOCKED]
atexit.register(lambda: sys.stderr.write(f"blocked: {device.BLOCKED_ATTEMPTS}, loaded: {loaded()}"))
"""
    out = tmp_path / "memory.json"
    proc = cli(model_path, "--top", "2", "--json", out, prelude=blocker)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.endswith("blocked: [], loaded: []")
    assert sorted(json.loads(out.read_text())["signatures"]) == SIGNATURES


# ---------------------------------------------------------------- memory.live_tensors

def test_live_tensors_are_the_activations_largest_first():
    # input (1, 8) = 32 bytes, output (1, 1000) = 4000 bytes; the constant is not alive
    content = convert_builtins_only(lambda x: tf.matmul(x, tf.ones((8, 1000))),
                                    [tf.TensorSpec((1, 8), tf.float32)])
    live = memory.live_tensors(content, "serving_default", 0)
    assert [(x.shape, x.dtype, x.bytes) for x in live] == [((1, 1000), "FLOAT32", 4000),
                                                           ((1, 8), "FLOAT32", 32)]
    with pytest.raises(IndexError, match="has 1 operators"):
        memory.live_tensors(content, "serving_default", 1)


def test_live_tensors_add_up_to_the_timeline(parsed):
    for name in SIGNATURES:
        for op in memory.timeline(parsed, name).ops:
            live = memory.live_tensors(parsed, name, op.index)
            assert sum(x.bytes for x in live) == op.live_bytes, (name, op)
