"""A layer the scheme freezes is frozen as Keras freezes it (issue 11, part 1).

A BatchNormalization that is trainable in Keras but of which the scheme trains nothing runs
in inference mode (moving statistics, constants of the file); ``frozen_batchnorm=
"batch_statistics"`` keeps it in training mode. Each mode is checked against its Keras
reference, one step on the host and on ai-edge-litert: ``GradientTape`` with the frozen
BatchNorm set ``trainable=False``, or left trainable.
"""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfpock
from tests.reference import tape_sgd_step, weights_by_path
from tests.numerics import assert_close
from tfpock.runtime import Trainer
from tfpock.testing import models

LR = 0.05
BATCH = 4
SCHEME = {"default": "frozen", "layers": {"conv_a": "full", "bn_a": "full", "bn_b": "bias",
                                          "conv_c": "full", "logits": "full"}}
FROZEN_BN = "bn_c"   # trainable in Keras, nothing of it trained by SCHEME


def loss_fn():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, (BATCH, 12, 12, 3)).astype(np.float32),
            rng.integers(0, 4, BATCH).astype(np.int32))


def reference_step(x, y, trained_paths, frozen_bn_trainable):
    """The Keras step: the scheme's frozen BatchNorm frozen (inference) or left trainable."""
    model = models.bn_cnn()
    if frozen_bn_trainable:
        by_path = {v.path: v for v in model.trainable_variables}
        watched = [by_path[p] for p in trained_paths]
        with tf.GradientTape() as tape:
            loss = loss_fn()(y, model(x, training=True))
        keras.optimizers.SGD(LR).apply(tape.gradient(loss, watched), watched)
        return float(loss), weights_by_path(model)
    loss = tape_sgd_step(model, loss_fn(), LR, x, y, trained_paths)
    assert not model.get_layer(FROZEN_BN).trainable  # the reference froze it
    return loss, weights_by_path(model)


@pytest.fixture(scope="module", params=["inference", "batch_statistics"])
def compiled(request, tmp_path_factory):
    model = models.bn_cnn()
    program = tfpock.optimize(model, loss=loss_fn(), optimizer=keras.optimizers.SGD(LR),
                              scheme=SCHEME, batch_size=BATCH, frozen_batchnorm=request.param)
    path = tmp_path_factory.mktemp(request.param) / "model.tflite"
    program.export(path)
    return request.param, model, program, path


def test_the_users_model_is_left_as_it_was(compiled):
    _, model, _, _ = compiled
    assert all(l.trainable for l in model.layers)


def test_frozen_batchnorm_statistics_are_constants_or_variables(compiled):
    mode, model, program, _ = compiled
    bn = model.get_layer(FROZEN_BN)
    stats = {bn.moving_mean.path, bn.moving_variance.path}
    variables = {v.key for v in program._module.specs}
    if mode == "inference":
        assert stats <= set(program.frozen_paths) and not stats & variables
    else:
        assert stats <= variables
    # trained BatchNorms update their statistics in both modes
    assert {model.get_layer("bn_a").moving_mean.path} <= variables
    expected = "moving statistics" if mode == "inference" else "batch statistics"
    table = program.layer_table()
    assert table[FROZEN_BN]["batchnorm"] == expected
    assert table["bn_a"]["batchnorm"] == table["bn_b"]["batchnorm"] == "batch statistics"
    assert f"{FROZEN_BN} " in program.report() and expected in program.report()


@pytest.mark.parametrize("engine", ["host", "ai-edge-litert"])
def test_step_matches_keras_in_that_mode(compiled, engine):
    mode, _, _, path = compiled
    x, y = batch()
    fresh = tfpock.optimize(models.bn_cnn(), loss=loss_fn(), optimizer=keras.optimizers.SGD(LR),
                            scheme=SCHEME, batch_size=BATCH, frozen_batchnorm=mode)
    ref_loss, ref = reference_step(x, y, fresh.trained_paths, mode == "batch_statistics")
    if engine == "host":
        loss, weights = fresh.train_step(x, y)["loss"], fresh.weights()
    else:
        trainer = Trainer(path)
        loss, weights = trainer.train(x, y)["loss"], trainer.weights()
    assert_close(loss, ref_loss, rtol=1e-5, where="loss")
    assert set(weights) <= set(ref)
    for p, value in weights.items():
        assert_close(value, ref[p], atol=1e-4, where=p)


def test_the_two_modes_differ():
    """The test above can fail: the frozen BatchNorm's mode changes the loss."""
    x, y = batch()
    losses = [tfpock.optimize(models.bn_cnn(), loss=loss_fn(),
                              optimizer=keras.optimizers.SGD(LR), scheme=SCHEME,
                              batch_size=BATCH, frozen_batchnorm=m).train_step(x, y)["loss"]
              for m in ("inference", "batch_statistics")]
    assert abs(losses[0] - losses[1]) > 1e-3 * abs(losses[0])


def test_scheme_field_and_bad_mode():
    scheme = tfpock.Scheme.from_dict({**SCHEME, "frozen_batchnorm": "batch_statistics"})
    assert scheme.to_dict()["frozen_batchnorm"] == "batch_statistics"
    assert "frozen_batchnorm" not in tfpock.Scheme.from_dict(SCHEME).to_dict()
    program = tfpock.optimize(models.bn_cnn(), loss=loss_fn(),
                              optimizer=keras.optimizers.SGD(LR), scheme=scheme,
                              batch_size=BATCH)
    assert program.layer_table()[FROZEN_BN]["batchnorm"] == "batch statistics"
    with pytest.raises(tfpock.SchemeError, match="frozen_batchnorm must be one of"):
        tfpock.optimize(models.bn_cnn(), loss=loss_fn(), optimizer=keras.optimizers.SGD(LR),
                        scheme=SCHEME, batch_size=BATCH, frozen_batchnorm="moving")
