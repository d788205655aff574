"""Bad input gets a clear error naming what is at fault, and leaves no partial file."""
from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfpock
from tfpock.runtime import CheckpointError, InputError, ModelFileError, Trainer
from tests.numerics import assert_close
from tfpock.testing import models

SGD = keras.optimizers.SGD(0.1)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compile_mlp(**kwargs):
    args = dict(loss=LOSS, optimizer=SGD, scheme="full", batch_size=4)
    args.update(kwargs)
    return tfpock.optimize(models.mlp(), **args)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("mlp") / "mlp.tflite"
    program = compile_mlp()
    program.export(path)
    return program, str(path)


# ---- compile-time input -------------------------------------------------------------------
@pytest.mark.parametrize("scheme, words", [
    ("everything", ["unknown scheme 'everything'", '"full", "last:N"']),
    ("last:0", ["last:0"]),
    ("last:9", ["last:9", "only 3 layers"]),
    (tfpock.Scheme(layers={"hiden_1": "full"}), ["hiden_1", "did you mean hidden_1"]),
    (tfpock.Scheme(), ["leaves nothing to train"]),
])
def test_bad_scheme_is_named(scheme, words):
    with pytest.raises(tfpock.SchemeError) as info:
        compile_mlp(scheme=scheme)
    for word in words:
        assert word in str(info.value)


def test_bias_scheme_without_biases_is_refused():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, use_bias=False)])
    with pytest.raises(tfpock.SchemeError, match="leaves nothing to train"):
        tfpock.optimize(model, loss=LOSS, optimizer=SGD, scheme="bias", batch_size=2)
    with pytest.raises(tfpock.SchemeError, match="no trainable bias"):
        tfpock.optimize(model, loss=LOSS, optimizer=SGD, batch_size=2,
                        scheme=tfpock.Scheme(layers={model.layers[0].name: "bias"}))


@pytest.mark.parametrize("optimizer, words", [
    (keras.optimizers.RMSprop(), ["RMSprop", "supported: SGD, Adam, AdamW"]),
    (keras.optimizers.SGD(0.1, clipnorm=1.0), ["clipnorm=1.0"]),
    (keras.optimizers.Adam(amsgrad=True), ["amsgrad=True"]),
    (keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)),
     ["learning_rate must be a constant", "passing learning_rate"]),
])
def test_unsupported_optimizer_is_named(optimizer, words):
    with pytest.raises(tfpock.UnsupportedModelError) as info:
        compile_mlp(optimizer=optimizer)
    for word in words:
        assert word in str(info.value)


def test_missing_loss_and_bad_batch_size():
    with pytest.raises(tfpock.TfpockError, match="no loss"):
        tfpock.optimize(models.mlp(), optimizer=SGD, batch_size=4)
    with pytest.raises(tfpock.TfpockError, match="batch_size"):
        compile_mlp(batch_size=0)


def test_compiled_model_supplies_loss_and_optimizer():
    model = models.mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.2), loss="sparse_categorical_crossentropy")
    program = tfpock.optimize(model, batch_size=4)
    assert program.metadata["optimizer"]["name"] == "SGD"
    assert program.metadata["learning_rate"] == pytest.approx(0.2)
    assert program.metadata["loss"] == "SparseCategoricalCrossentropy"


def test_unknown_weighted_layer_is_refused_by_name():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
                              keras.layers.PReLU(name="learned_slope"), keras.layers.Dense(2)])
    with pytest.raises(tfpock.UnsupportedModelError) as info:
        tfpock.optimize(model, loss=LOSS, optimizer=SGD, batch_size=2)
    assert "learned_slope" in str(info.value) and "PReLU" in str(info.value)
    assert "Conv2D" in str(info.value)  # lists what is supported


def test_layer_that_cannot_be_lowered_names_op_and_layer_and_writes_nothing(tmp_path):
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    h = keras.layers.Dense(4, name="first")(inp)
    h = keras.layers.Lambda(lambda t: tf.math.lgamma(tf.abs(t) + 1.0), name="lgamma_layer")(h)
    model = keras.Model(inp, keras.layers.Dense(3, name="head")(h))
    program = tfpock.optimize(model, loss=LOSS, optimizer=SGD, batch_size=2)
    target = tmp_path / "m.tflite"
    target.write_bytes(b"previous model")
    with pytest.raises(tfpock.ExportError) as info:
        program.export(target)
    message = str(info.value)
    # lgamma's gradient, Digamma, has neither a builtin nor a lowering rule
    assert "Digamma" in message and "lgamma_layer" in message
    assert "Conv2DBackpropFilter" in message  # says what tfpock can lower
    assert target.read_bytes() == b"previous model"  # untouched
    assert os.listdir(tmp_path) == ["m.tflite"]       # no temporary left behind


# ---- batches ------------------------------------------------------------------------------
BAD_BATCHES = [
    (np.zeros((3, 20), np.float32), np.zeros(4, np.int32), "x has shape (3, 20)"),
    (np.zeros((4, 21), np.float32), np.zeros(4, np.int32), "x has shape (4, 21)"),
    (np.zeros((4, 20), np.int32), np.zeros(4, np.int32), "x has dtype int32"),
    (np.zeros((4, 20), np.float32), np.zeros((4, 1), np.int32), "y has shape (4, 1)"),
    (np.zeros((4, 20), np.float32), np.zeros(4, np.float32), "y has dtype float32"),
]


@pytest.mark.parametrize("x, y, words", BAD_BATCHES)
def test_bad_batch_in_train_step(exported, x, y, words):
    program, _ = exported
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        program.train_step(x, y)


@pytest.mark.parametrize("x, y, words", BAD_BATCHES)
def test_bad_batch_in_trainer(exported, x, y, words):
    _, path = exported
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        Trainer(path).train(x, y)


def test_float64_batch_is_accepted_as_float32(exported):
    _, path = exported
    trainer = Trainer(path)
    loss64 = trainer.train(np.ones((4, 20)), np.arange(4))["loss"]
    assert np.isfinite(loss64)


# ---- files --------------------------------------------------------------------------------
def test_missing_and_corrupt_checkpoints(exported, tmp_path):
    _, path = exported
    trainer = Trainer(path)
    before = trainer.weights()
    with pytest.raises(CheckpointError, match="does not exist"):
        trainer.restore(tmp_path / "nope.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(CheckpointError, match="not a readable .npz"):
        trainer.restore(corrupt)
    partial = tmp_path / "partial.npz"
    np.savez(partial, **{"mlp/hidden_1/kernel": before["mlp/hidden_1/kernel"]})
    with pytest.raises(CheckpointError, match="format-1 checkpoint"):
        trainer.restore(partial)   # no checksum: refused unless asked for
    with pytest.raises(CheckpointError, match="missing") as info:
        trainer.restore(partial, accept_v1=True)
    assert "mlp/logits/bias" in str(info.value)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, **{k: (v if k != "mlp/logits/bias" else np.zeros(7, np.float32))
                       for k, v in before.items()})
    with pytest.raises(CheckpointError, match="mlp/logits/bias"):
        trainer.restore(wrong, accept_v1=True)
    for k, v in trainer.weights().items():  # nothing was loaded
        assert_close(v, before[k], where=k)


def test_checkpoint_round_trip_and_atomic_save(exported, tmp_path):
    _, path = exported
    trainer = Trainer(path)
    ckpt = tmp_path / "ckpt.npz"
    trainer.save(ckpt)
    saved = trainer.weights()
    x, y = np.ones((4, 20), np.float32), np.arange(4, dtype=np.int32)
    first = trainer.train(x, y)["loss"]
    trainer.train(x, y)
    trainer.restore(ckpt)
    for k, v in trainer.weights().items():
        assert_close(v, saved[k], where=k)
    assert trainer.train(x, y)["loss"] == first
    with pytest.raises(CheckpointError, match="does not exist"):
        trainer.save(tmp_path / "no_such_dir" / "c.npz")
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]


def test_trainer_refuses_files_that_are_not_tfpock_models(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        Trainer(tmp_path / "absent.tflite")
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError):
        Trainer(garbage)
    plain = tmp_path / "plain.tflite"
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x * 2.0},
                           input_signature=[tf.TensorSpec((2,), tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.f.get_concrete_function()], module)
    plain.write_bytes(converter.convert())
    with pytest.raises(ModelFileError, match="lacks signatures"):
        Trainer(plain)


def test_user_model_is_not_mutated():
    model = models.mlp()
    before = [v.numpy().copy() for v in model.variables]
    flags = [l.trainable for l in model.layers]
    program = tfpock.optimize(model, loss=LOSS, optimizer=SGD, scheme="last:1", batch_size=4)
    program.train_step(np.ones((4, 20), np.float32), np.arange(4, dtype=np.int32))
    for v, b in zip(model.variables, before):
        assert_close(v.numpy(), b, where=v.path)
    assert [l.trainable for l in model.layers] == flags


def test_interpreter_options_pass_through(exported):
    _, path = exported
    x, y = np.ones((4, 20), np.float32), np.arange(4, dtype=np.int32)
    plain = Trainer(path).train(x, y)["loss"]
    unclustered = Trainer(path, experimental_disable_delegate_clustering=True)
    assert unclustered.train(x, y)["loss"] == plain
    with pytest.raises(ValueError, match="does not take interpreter options"):
        Trainer(path, no_such_option=1)
