"""Dropout in training mode: a fresh mask every step, the same on the host and the device.

Keras 3 draws dropout masks with stateless random ops seeded by a SeedGenerator variable;
tfpock lowers them to TFLite's RANDOM_UNIFORM (graph_passes/lowering/random_ops.py), which
advances its own state every call. A fresh TFLite interpreter and a fresh TF program draw the
same first numbers, so their first steps agree exactly.
"""
from __future__ import annotations

import keras
import numpy as np
import pytest

import tfpock
from tfpock.runtime import Trainer
from tests.numerics import assert_close
from tfpock.testing import models

BATCH = 4


def compile_cnn(tmp_path, learning_rate, dropout=0.5):
    program = tfpock.optimize(models.every_layer_cnn(dropout=dropout),
                              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                              optimizer=keras.optimizers.SGD(learning_rate), batch_size=BATCH)
    path = tmp_path / "cnn.tflite"
    program.export(path)
    return program, path


def batch():
    rng = np.random.default_rng(3)
    return (rng.uniform(-1, 1, (BATCH, 16, 16, 3)).astype(np.float32),
            rng.integers(0, 4, BATCH).astype(np.int32))


def test_first_step_on_device_equals_host_program(tmp_path):
    program, path = compile_cnn(tmp_path, 0.05)
    x, y = batch()
    host = program.train_step(x, y)
    device = Trainer(path)
    assert_close(device.train(x, y)["loss"], host["loss"], rtol=1e-5, where="loss")
    on_device = device.weights()
    for p, value in program.weights().items():
        assert_close(on_device[p], value, atol=1e-4, where=p)


@pytest.mark.parametrize("dropout, masks_differ", [(0.5, True), (0.0, False)])
def test_each_step_draws_a_new_mask(tmp_path, dropout, masks_differ):
    _, path = compile_cnn(tmp_path, 0.0, dropout)  # learning rate 0: weights never change
    x, y = batch()
    trainer = Trainer(path)
    losses = [trainer.train(x, y)["loss"] for _ in range(4)]
    assert (len(set(losses)) == 4) == masks_differ, losses
    # inference is deterministic and dropout-free either way
    assert_close(trainer.infer(x), trainer.infer(x), where="infer")
