"""The benchmark machinery end to end on a tiny CNN, once: prepare, the TFLite contenders in
their worker processes (1 round of 1-2 steps), the result document and its report. Checks
the document's structure and that the stock recipe names the Flex ops a CNN needs; never
a time (the TF contenders are left out: four TF workers would take longer than this test
may). The report and its plots are checked too (matplotlib is in the test extra)."""
from __future__ import annotations

import json

import keras
import pytest
from keras import layers

from bench import contenders, harness, prepare, report
from bench.models import BenchModel
from bench.run import document, measure

RESULT_KEYS = {"id", "scheme", "status", "error", "model", "batch", "threads"}
TIMED_KEYS = {"step_ms", "round_medians_ms", "steps_per_round", "peak_rss_mb", "ru_maxrss_mb"}


def tiny_cnn() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        layers.Conv2D(4, 3, activation="relu", name="conv"),
        layers.GlobalAveragePooling2D(name="gap"),
        layers.Dense(3, name="logits"),
    ], name="tiny_cnn")


def test_suite_machinery_on_a_tiny_cnn(tmp_path):
    spec = BenchModel("tiny_cnn", tiny_cnn, (8, 8, 3), 3, 1, "tiny CNN for the smoke test")
    models = {"tiny_cnn": prepare.prepare_model(spec, [2], str(tmp_path / "tiny_cnn"),
                                                log=lambda *_: None)}
    timing = harness.Timing(rounds=1, warmup=1, round_s=0.0, min_steps=1, max_steps=2)
    results = measure(models, [2], [1], timing, tflite_runtime=None, include_tf=False)
    doc = json.loads(json.dumps(document("smoke", {"name": "test", "cpu": "?", "cores": 1,
                                                    "platform": "?", "python": "?",
                                                    "tensorflow": "?", "keras": "?",
                                                    "ai_edge_litert": "?", "taskset": True},
                                         timing, [2], [1], models, results)))

    assert doc["schema"] == "tfpock-bench/1"
    assert {"date", "mode", "machine", "timing", "batches", "threads", "models",
            "results"} <= set(doc)
    rows = {(r["id"], r["scheme"]): r for r in doc["results"]}
    assert set(rows) == {("stock_tflite", "last"), ("stock_tflite", "full"),
                         ("tfpock_litert", "last"), ("tfpock_litert", "full"),
                         ("tfpock_tflite_runtime", "last"), ("tfpock_tflite_runtime", "full"),
                         ("tfpock_infer", "last"), ("forward", "-")}
    for row in doc["results"]:
        assert RESULT_KEYS <= set(row), row
        assert row["id"] in contenders.LABELS
    for key in [("tfpock_litert", "last"), ("tfpock_litert", "full"), ("tfpock_infer", "last"),
                ("forward", "-")]:
        row = rows[key]
        assert row["status"] == "ok", row["error"]
        assert TIMED_KEYS <= set(row)
        assert {"median", "q1", "q3", "min", "max", "n"} == set(row["step_ms"])
        assert row["step_ms"]["n"] == row["steps_per_round"] and row["peak_rss_mb"] > 0
    assert rows[("tfpock_tflite_runtime", "full")]["status"] == "not installed"

    # the stock recipe: refused with builtins, the Flex ops named, the runtime's error kept
    stock = doc["models"]["tiny_cnn"]["stock"]
    assert not stock["full"]["builtins_only"]
    assert {"Conv2DBackpropFilter", "ReluGrad"} <= set(stock["full"]["flex_ops"])
    assert stock["last"]["builtins_only"] and stock["last"]["flex_ops"] == []  # Dense only
    assert rows[("stock_tflite", "full")]["status"] == "failed"
    assert "Select TensorFlow op" in rows[("stock_tflite", "full")]["error"]
    assert rows[("stock_tflite", "last")]["status"] == "ok"

    tfp = doc["models"]["tiny_cnn"]["tfpock"]["last"]["2"]
    assert {"compile_s", "export_s", "file_bytes", "train_ops_traced", "train_ops_final",
            "gradient_ops_removed", "trained_parameters"} <= set(tfp)

    report.write(doc, str(tmp_path / "report"))
    text = (tmp_path / "report.md").read_text()
    assert "Conv2DBackpropFilter" in text and "## tiny_cnn" in text
    assert (tmp_path / "report-tiny_cnn-latency.png").stat().st_size > 0
    assert (tmp_path / "report-memory.png").stat().st_size > 0


def test_op_profile_times_or_skips_every_op(tmp_path):
    import tfpock
    from bench import op_profile

    path = str(tmp_path / "tiny.tflite")
    tfpock.optimize(tiny_cnn(), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    optimizer=keras.optimizers.SGD(0.01), scheme="full",
                    batch_size=2).export(path)
    result = op_profile.profile(path, "train", reps=2)

    assert result["ops"] and result["variables"]["counts"]["READ_VARIABLE"] > 0
    assert result["variables"]["bytes_copied"] > 0
    for row in result["ops"]:
        assert row["type"] not in op_profile.VARIABLE_OPS
        assert ("ms" in row) != ("skipped" in row), row
        assert row.get("ms", 0.0) >= 0 and (row.get("skipped") or "ms" in row)
    by_type = result["by_type"]
    assert sum(e["count"] for e in by_type.values()) == len(result["ops"])
    assert abs(sum(e["ms"] for e in by_type.values()) - result["sum_ms"]) < 1e-9
    assert abs(sum(e["share"] for e in by_type.values()) - 1.0) < 1e-6
    assert result["signature_ms"] > 0
    assert "sum of per-op medians" in op_profile.report(result)


def test_depth_sweep_ratios_and_report():
    """bench/studies/depth_sweep.py's arithmetic and report on hand-made rows (the sweep itself
    takes minutes): ratios per scheme, targets at batch 1 only, a failed contender named."""
    from bench.studies import depth_sweep

    def ok(cid, scheme, ms, rss=50.0):
        return {"id": cid, "scheme": scheme, "status": "ok", "error": "",
                "step_ms": {"median": ms}, "peak_rss_mb": rss}
    rows = [ok("forward", "-", 1.0), ok("keras_full", "full", 20.0, 700.0),
            ok("tfpock", "last:1", 1.2), ok("tf_function", "last:1", 6.0),
            ok("tfpock", "last:2", 1.5),
            {"id": "tf_function", "scheme": "last:2", "status": "failed", "error": "boom"}]
    ratios = depth_sweep.ratios(rows)
    assert [r["depth"] for r in ratios] == [1, 2]
    assert ratios[0]["over_floor"] == pytest.approx(1.2)
    assert ratios[0]["vs_keras_full"] == pytest.approx(20 / 1.2)
    assert ratios[0]["vs_tf_function"] == pytest.approx(5.0)
    assert ratios[1]["vs_tf_function"] is None
    assert depth_sweep.verdicts(ratios[0]) == "floor PASS Keras PASS tf.function PASS"
    schemes = {"last:1": {"trained_parameters": 10}, "last:2": {"trained_parameters": 20}}
    doc = {"date": "2026-12-03", "machine": "test", "groups": [
        {"model": "m", "bn": "frozen", "batch": b, "rows": rows, "schemes": schemes,
         "ratios": ratios} for b in (1, 8)]}
    text = depth_sweep.markdown(doc)
    assert text.count("floor PASS Keras PASS tf.function PASS") == 1   # batch 1 only
    assert "failed: tf_function last:2: boom" in text


def test_language_model_study_runs_a_tfpock_worker(tmp_path):
    """bench/studies/lm_steps.py's machinery: the ``lm_tfpock`` worker kind trains the tiny
    Llama (tests/test_keras_hub.py's file) on the study's weighted batches, and the ratios
    and the report come from its rows (the TF kinds are left out, as above)."""
    from bench.studies import lm_steps
    from tests.test_keras_hub import BATCH, SEQ, VOCAB, exported
    path = tmp_path / "llama.tflite"
    path.write_bytes(exported("full")[1])
    spec = {"kind": "lm_tfpock", "config": {"vocabulary_size": VOCAB}, "seq": SEQ,
            "batch": BATCH, "threads": 1, "scheme": "full", "model_file": str(path)}
    timing = harness.Timing(rounds=1, warmup=1, round_s=0.0, min_steps=1, max_steps=1)
    [row] = harness.run_group([harness.Contender("tfpock", "full", spec)], timing)
    assert row["status"] == "ok", row["error"]
    keras_row = dict(row, id="keras_full", step_ms={"median": 4 * row["step_ms"]["median"]},
                     peak_rss_mb=3 * row["peak_rss_mb"])
    tf_row = dict(row, id="tf_function", step_ms={"median": 2 * row["step_ms"]["median"]})
    [ratio] = lm_steps.ratios([keras_row, row, tf_row], ["full"])
    assert ratio == {"scheme": "full", "keras_speed": pytest.approx(4.0),
                     "keras_memory": pytest.approx(3.0), "tf_function_speed": pytest.approx(2.0)}
    for r in (keras_row, row, tf_row):
        r["tokens_per_s"] = 1.0
    text = lm_steps.steps_markdown({
        "date": "d", "machine": "m", "command": "c", "config": {}, "parameters": 1,
        "timing": {"rounds": 1}, "load_start": [0], "load_end": [0],
        "groups": [{"seq": SEQ, "batch": BATCH, "rows": [keras_row, row, tf_row],
                    "ratios": [ratio]}]})
    assert "| full | 4.00 | 2.00 | 3.00 |" in text


def test_update_floor_reads_what_the_step_writes_and_times_it(tmp_path):
    """bench/update_floor.py: the shapes it updates are those the step assigns (the trained
    kernel and bias), and its in-context model adds those updates to the forward."""
    import numpy as np

    import tfpock
    from bench import update_floor
    model = tiny_cnn()
    program = tfpock.optimize(model, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), optimizer=keras.optimizers.SGD(0.1), scheme="last:1", batch_size=2)
    path = str(tmp_path / "step.tflite")
    program.export(path)
    with open(path, "rb") as f:
        content = f.read()
    assert sorted(update_floor.assigned_shapes(content)) == [(3,), (4, 3)]
    keras_file = str(tmp_path / "model.keras")
    model.save(keras_file)
    timed = update_floor.update_in_context_ms(content, keras_file, 2, rounds=1, reps=3)
    assert set(timed) == {"forward_ms", "with_update_ms", "update_ms"}
    assert np.isfinite(list(timed.values())).all() and timed["update_ms"] >= 0
