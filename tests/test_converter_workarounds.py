"""Patterns TF 2.21's converter gets wrong, checked end to end on ai-edge-litert.

A Relu/Relu6 right after a matmul of two runtime tensors is dropped by the converter (it fuses
the activation into a BATCH_MATMUL, which has none); the lower pass rewrites such activations
as selects (graph_passes/lowering/activations.py). Trained layers are where both matmul
operands are runtime tensors: a Dense without bias, and a 1x1 Conv2D, which WeightConv2DRule
turns into a matmul.
"""
from __future__ import annotations

import keras
import numpy as np
import pytest

import tfpock
from tests.numerics import assert_close
from tfpock.errors import ExportError
from tfpock.runtime import Trainer


def _model(kind: str, activation: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    if kind == "dense":
        body = [keras.Input((6,)), keras.layers.Dense(8, use_bias=False, activation=activation)]
    else:
        body = [keras.Input((2, 2, 4)),  # kernel (128) >= input (64): WeightConv2DRule applies
                keras.layers.Conv2D(32, 1, use_bias=False, activation=activation),
                keras.layers.Flatten()]
    return keras.Sequential(body + [keras.layers.Dense(3)])


@pytest.mark.parametrize("kind", ["dense", "conv1x1"])
@pytest.mark.parametrize("activation", ["relu", "relu6"])
def test_activation_after_a_trained_matmul_survives_conversion(kind, activation, tmp_path):
    model = _model(kind, activation)
    program = tfpock.optimize(model, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), optimizer=keras.optimizers.SGD(0.1), scheme="full", batch_size=4)
    trainer = Trainer(program.export(tmp_path / "m.tflite"))
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal((4, *model.input_shape[1:]))).astype(np.float32)
    y = np.array([0, 1, 2, 1], np.int32)
    expected = model(x).numpy()
    assert (model.layers[0](x).numpy() <= 0).any()  # the activation matters for this batch
    # rtol=1e-7 here and below: np.testing.assert_allclose's default, which these checks had
    assert_close(trainer.infer(x), expected, rtol=1e-7, atol=1e-5, where="infer")
    host = program.train_step(x, y)["loss"]
    assert_close(trainer.train(x, y)["loss"], host, rtol=1e-6, where="loss")
    for key, value in program.weights().items():
        assert_close(trainer.weights()[key], value, rtol=1e-7, atol=1e-6, where=key)


def _conv1d_added_to_its_input() -> keras.Model:
    keras.utils.set_random_seed(0)
    inp = keras.Input((10, 1))
    h = keras.layers.Add()([keras.layers.Conv1D(1, 1, name="conv")(inp), inp])
    return keras.Model(inp, keras.layers.Dense(2, name="logits")(keras.layers.Flatten()(h)))


def test_one_channel_conv1d_added_to_its_input_at_batch_1_is_refused_clearly(tmp_path):
    """TF 2.21's converter fails here (stock TFLiteConverter too; found by tests/fuzz.py,
    seed 1): tfpock names the case and what converts instead, and writes no file."""
    program = tfpock.optimize(_conv1d_added_to_its_input(), loss=keras.losses.
                              SparseCategoricalCrossentropy(from_logits=True),
                              optimizer=keras.optimizers.SGD(0.1), scheme="bias", batch_size=1)
    with pytest.raises(ExportError, match=r"Conv1D with one output channel .* batch size 1 .*"
                                          r"compile with batch_size >= 2"):
        program.export(tmp_path / "m.tflite")
    assert not list(tmp_path.iterdir())


def test_the_same_model_at_batch_2_converts_and_matches(tmp_path):
    model = _conv1d_added_to_its_input()
    program = tfpock.optimize(model, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), optimizer=keras.optimizers.SGD(0.1), scheme="bias", batch_size=2)
    trainer = Trainer(program.export(tmp_path / "m.tflite"))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 10, 1)).astype(np.float32)
    y = np.array([1, 0], np.int32)
    assert_close(trainer.infer(x), model(x).numpy(), rtol=1e-5, atol=1e-5, where="infer")
    host = program.train_step(x, y)["loss"]
    assert_close(trainer.train(x, y)["loss"], host, rtol=1e-6, where="loss")
