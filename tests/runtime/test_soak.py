"""The soak of issue 15, short: 1,000 device-side steps of ``every_layer_cnn`` with a checkpoint
every 250 (every 2nd restored), through the study's own code (``bench/studies/soak.py``; its
20,000-step run writes ``bench/results/<date>-<machine>-soak.{json,md,png}``). The device runs
in a fresh process with TensorFlow blocked; the test asserts the study's criteria: every loss
finite, no fd leak, checkpoints restored bit-equal, no TensorFlow loaded, no exception, and the
RSS slope after warm-up under ``CI_SLOPE_BOUND``; and that the loss fell.

Why the slope bound is looser than the study's 64 bytes/step: RSS grows in steps of pages,
most of them at the first checkpoints and restores; fitted over 20,000 steps those are ~10
bytes a step, over the 800 steps after the warm-up here ~265 (measured 262-270 on
x86_64-2core, 188 KB at checkpoints). 1 KB/step (< 1 MB over the run) still catches a leak
of a batch (8 x 16 x 16 x 3 floats, 24 KB) or a copy of the trained weights (19 KB) a step.
The train steps' own share is held to the study's bound: the RSS growth over the sample
intervals without a checkpoint (8-12 KB here) must stay under 64 bytes a step after the
warm-up (51 KB).
"""
from __future__ import annotations

from bench.studies import soak

STEPS, CHECKPOINT_EVERY, RESTORE_EVERY, SAMPLE_EVERY, WARMUP = 1000, 250, 2, 10, 200
CI_SLOPE_BOUND = 1024.0


def test_soak_1000_steps(tmp_path):
    model_path = tmp_path / "every_layer_cnn.tflite"
    model = soak.export_model(model_path)
    summary = soak.run_device(model_path, model, steps=STEPS,
                              checkpoint_every=CHECKPOINT_EVERY, restore_every=RESTORE_EVERY,
                              sample_every=SAMPLE_EVERY, warmup=WARMUP, workdir=tmp_path)

    failed = [f"{name}: {text}" for name, ok, text in soak.criteria(summary, CI_SLOPE_BOUND)
              if not ok]
    assert not failed, failed
    assert summary["steps"] == STEPS
    assert summary["checkpoints"] == STEPS // CHECKPOINT_EVERY
    assert summary["restores"] == STEPS // CHECKPOINT_EVERY // RESTORE_EVERY
    assert summary["rss"]["growth_between_checkpoints_bytes"] < (
        soak.RSS_SLOPE_BOUND * (STEPS - WARMUP)), summary["rss"]
    assert summary["loss"]["last_100_mean"] < 0.5 * summary["loss"]["first_100_mean"]
