"""``Trainer.fit/evaluate/predict`` and callbacks: equal to the manual ``Trainer.train`` calls
they stand for, and to Keras' ``predict``/``evaluate`` of the same model; the final partial
batch's rule (``tfpock/runtime/fit.py``); resume from a checkpoint mid-epoch."""
from __future__ import annotations

import logging

import keras
import numpy as np
import pytest

import tfpock
from tests.numerics import assert_close
from tfpock.runtime import InputError, Trainer
from tfpock.runtime import fit as fitting
from tfpock.runtime import losses as np_losses
from tfpock.testing import models

B = 4


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(path of the exported mlp, the Keras model compiled like it)."""
    model = models.mlp()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    program = tfpock.optimize(model, loss=loss, optimizer=keras.optimizers.SGD(0.1),
                              batch_size=B)
    path = str(tmp_path_factory.mktemp("fit") / "mlp.tflite")
    program.export(path)
    model.compile(loss=loss, metrics=["accuracy"])
    return path, model


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 20)).astype(np.float32),
            rng.integers(0, 5, n).astype(np.int32))


def manual(path, x, y, epochs, shuffle, lrs=None, seed=0):
    """The Trainer.train calls fit stands for: full batches of each epoch's order."""
    t = Trainer(path)
    losses, step = [], 0
    for epoch in range(epochs):
        order = (np.random.default_rng([seed, epoch]).permutation(len(x)) if shuffle
                 else np.arange(len(x)))
        epoch_losses = []
        for b in range(len(x) // B):
            i = order[b * B:(b + 1) * B]
            lr = None if lrs is None else lrs(step)
            epoch_losses.append(t.train(x[i], y[i], learning_rate=lr)["loss"])
            step += 1
        losses.append(float(np.mean(epoch_losses)))
    return t, losses


@pytest.mark.parametrize("shuffle", [False, True])
def test_fit_equals_manual_train_steps(compiled, shuffle):
    path, _ = compiled
    x, y = data(12)
    t = Trainer(path)
    history = t.fit(x, y, epochs=3, shuffle=shuffle, train_accuracy=False)
    reference, losses = manual(path, x, y, 3, shuffle)
    assert_close(t.state(), reference.state())          # bit-identical: the same steps
    assert_close(history["loss"], losses, rtol=1e-12)
    assert history["rows_skipped"] == [0, 0, 0]
    assert history["lr"] == [pytest.approx(0.1)] * 3


def test_partial_batch_without_sample_weights_is_left_out_and_counted(compiled, caplog):
    path, _ = compiled
    x, y = data(14)                                     # 3 batches of 4, 2 rows over
    t = Trainer(path)
    with caplog.at_level(logging.WARNING, logger="tfpock.runtime.fit"):
        history = t.fit(x, y, epochs=2)
    assert "2 rows over" in caplog.text
    assert history["rows_skipped"] == [2, 2]
    reference, losses = manual(path, x, y, 2, shuffle=True)
    assert_close(t.state(), reference.state())
    assert_close(history["loss"], losses, rtol=1e-12)
    with pytest.raises(InputError, match="partial batch of 2"):
        Trainer(path).fit(x, y, partial_batch="error")
    with pytest.raises(InputError, match="compiled for batches of 4"):
        Trainer(path).fit(x, y, batch_size=8)


def test_predict_and_evaluate_equal_keras_over_any_rows(compiled):
    path, model = compiled
    x, y = data(11)                                     # 2 full batches and 3 rows
    t = Trainer(path)
    assert_close(t.predict(x), model.predict(x, verbose=0), atol=1e-5)
    result = t.evaluate(x, y)
    keras_loss, keras_accuracy = model.evaluate(x, y, verbose=0, batch_size=11)
    assert_close(result["loss"], keras_loss, rtol=1e-5)
    assert result["accuracy"] == pytest.approx(keras_accuracy)


@pytest.mark.parametrize("loss", [
    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    keras.losses.SparseCategoricalCrossentropy(),
    keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
    keras.losses.CategoricalCrossentropy(),
    keras.losses.BinaryCrossentropy(from_logits=True),
    keras.losses.BinaryCrossentropy(label_smoothing=0.2),
    keras.losses.MeanSquaredError(), keras.losses.MeanAbsoluteError(),
    keras.losses.Huber(delta=0.5)], ids=lambda l: l.name + str(l.get_config()))
def test_numpy_losses_equal_keras(loss):
    from tfpock.losses import loss_config
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((6, 5)).astype(np.float32)
    name = type(loss).__name__
    config = loss_config(loss)
    probabilities = not config.get("from_logits", True)
    if name == "BinaryCrossentropy" and probabilities:
        out = 1 / (1 + np.exp(-logits))
    elif probabilities:
        out = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    else:
        out = logits
    y = (rng.integers(0, 5, 6).astype(np.int32) if name == "SparseCategoricalCrossentropy"
         else np.eye(5, dtype=np.float32)[rng.integers(0, 5, 6)])
    meta = {"loss": name, "loss_config": config}
    assert_close(np_losses.loss_value(meta, y, out), float(loss(y, out)), rtol=2e-6)


def test_learning_rate_schedule_is_followed_step_by_step(compiled):
    path, _ = compiled
    x, y = data(12)
    schedule = fitting.cosine(0.2, total_steps=9, final=0.01)
    t = Trainer(path)
    history = t.fit(x, y, epochs=3, callbacks=[fitting.LearningRateScheduler(schedule)])
    reference, _ = manual(path, x, y, 3, shuffle=True, lrs=schedule)
    assert_close(t.state(), reference.state())
    assert_close(history["lr"], [schedule(2), schedule(5), schedule(8)], rtol=1e-12)
    assert schedule(0) == pytest.approx(0.2) and schedule(9) == pytest.approx(0.01)
    assert fitting.step_decay(1.0, every=2, factor=0.1)(5) == pytest.approx(0.01)


def test_early_stopping_stops_when_the_monitor_stalls(compiled):
    path, _ = compiled
    x, y = data(8)
    stop = fitting.EarlyStopping("val_loss", patience=2)
    history = Trainer(path).fit(x, y, epochs=10, learning_rate=0.0, validation_data=(x, y),
                                callbacks=[stop])
    assert len(history["val_loss"]) == 3               # best at 1, no gain at 2 and 3
    assert history["val_loss"][0] == history["val_loss"][2]
    with pytest.raises(InputError, match="val_\\* needs validation_data"):
        Trainer(path).fit(x, y, epochs=2, callbacks=[fitting.EarlyStopping("val_loss")])


class _Interrupt(Exception):
    pass


class _KillAt(fitting.Callback):
    def __init__(self, step):
        self.at = step

    def on_batch_end(self, loop, logs):
        if loop.step == self.at:
            raise _Interrupt


def test_resume_mid_epoch_equals_an_uninterrupted_fit(compiled, tmp_path):
    path, _ = compiled
    x, y = data(12)
    options = dict(epochs=3, validation_data=(x[:5], y[:5]),
                   learning_rate=fitting.cosine(0.2, 9))

    def callbacks(ckpt):
        return [fitting.ModelCheckpoint(ckpt, every=2), fitting.EarlyStopping(patience=5)]
    whole = Trainer(path)
    expected = whole.fit(x, y, callbacks=callbacks(tmp_path / "a.npz"), **options)
    ckpt = tmp_path / "b.npz"
    with pytest.raises(_Interrupt):                    # dies at step 5: checkpoint at step 4
        Trainer(path).fit(x, y, callbacks=callbacks(ckpt) + [_KillAt(5)], **options)
    resumed = Trainer(path)
    history = resumed.fit(x, y, callbacks=callbacks(ckpt), resume=ckpt, **options)
    assert history == expected
    assert_close(resumed.state(), whole.state())
    with pytest.raises(InputError, match="seed=0, this fit has seed=1"):
        Trainer(path).fit(x, y, callbacks=callbacks(ckpt), resume=ckpt, seed=1, **options)


class _FakeTrainer:
    """A trainer whose train signature takes sample weights, with dict inputs (what issue
    13's models will be); records what fit passes."""

    def __init__(self):
        self.metadata = {"x": {"ids": {"shape": [B, 3], "dtype": "int32"}},
                         "sample_weight": {"shape": [B], "dtype": "float32"},
                         "loss": "MeanSquaredError"}
        self.learning_rate, self.calls = 0.1, []

    def train(self, x, y, sample_weight=None, learning_rate=None):
        self.calls.append((x, y, sample_weight))
        return {"loss": 1.0, "finite": True, "applied": True}

    def infer(self, x):
        return x["ids"].astype(np.float32) * 2


def test_partial_batch_with_sample_weights_is_padded_and_masked():
    t = _FakeTrainer()
    x = {"ids": np.arange(18, dtype=np.int32).reshape(6, 3)}
    history = fitting.fit(t, x, np.zeros((6, 3), np.float32), epochs=1, shuffle=False)
    (x0, _, w0), (x1, y1, w1) = t.calls
    assert_close(w0, np.ones(B, np.float32))
    assert_close(w1, np.array([2, 2, 0, 0], np.float32))        # B / r for the real rows
    assert_close(x1["ids"], np.array([[12, 13, 14], [15, 16, 17], [15, 16, 17], [15, 16, 17]]))
    assert history["rows_skipped"] == [0]
    assert_close(fitting.predict(t, x), x["ids"] * 2.0)         # dict x, padded, cut back


def test_fit_tracks_keras_fit(compiled):
    """Keras' own fit of the same model, same batches (shuffle off): the same per-epoch loss
    and accuracy (of each batch before its update), the same weights after."""
    path, model = compiled
    x, y = data(16)
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    reference.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    expected = reference.fit(x, y, batch_size=B, epochs=3, shuffle=False, verbose=0).history
    t = Trainer(path)
    history = t.fit(x, y, epochs=3, shuffle=False, validation_data=(x, y))
    assert_close(history["loss"], expected["loss"], rtol=1e-5)
    assert history["accuracy"] == pytest.approx(expected["accuracy"])
    weights = {v.path: v.numpy() for v in reference.weights}
    assert_close(t.weights(), {k: weights[k] for k in t.weights()}, atol=1e-6)
    keras_loss, keras_accuracy = reference.evaluate(x, y, verbose=0, batch_size=16)
    assert_close(history["val_loss"][-1], keras_loss, rtol=1e-5)
    assert history["val_accuracy"][-1] == pytest.approx(keras_accuracy)


def test_partial_batch_on_a_sample_weighted_file_equals_keras_fit(tmp_path):
    """A file compiled with ``sample_weight=True``: the final partial batch (2 of 4 rows) is
    padded and weighted B/r, so its step is Keras' step on those 2 rows alone; after 2 epochs
    of 18 rows (shuffle off) the weights equal Keras' fit of the same model."""
    model = models.mlp()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    program = tfpock.optimize(model, loss=loss, optimizer=keras.optimizers.SGD(0.1),
                              batch_size=B, sample_weight=True)
    path = str(tmp_path / "weighted.tflite")
    program.export(path)
    x, y = data(18, seed=3)
    reference = models.mlp()
    reference.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    reference.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0)
    t = Trainer(path)
    history = t.fit(x, y, epochs=2, shuffle=False)
    assert history["rows_skipped"] == [0, 0]
    weights = {v.path: v.numpy() for v in reference.weights}
    assert set(t.weights()) == {v.path for v in model.trainable_weights}
    assert_close(t.weights(), {k: weights[k] for k in t.weights()}, atol=1e-6)
    # the partial batch counted: without its 2 rows Keras ends elsewhere
    without = models.mlp()
    without.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    without.fit(x[:16], y[:16], batch_size=B, epochs=2, shuffle=False, verbose=0)
    apart = max(float(np.abs(v.numpy() - weights[v.path]).max()) for v in without.weights)
    assert apart > 1e-4


def _token_model(seed=0):
    """A next-token model in miniature: Embedding then a per-token Dense, [rows, 6] ids."""
    keras.utils.set_random_seed(seed)
    ids = keras.Input((6,), dtype="int32", name="ids")
    h = keras.layers.Embedding(12, 8, name="embed")(ids)
    return keras.Model(ids, keras.layers.Dense(12, name="logits")(h))


def test_fit_and_evaluate_with_per_token_weights_equal_keras(tmp_path):
    """Per-label sample weights (a padding mask over the tokens of each row, as a language
    model trains): fit over 10 rows at batch 4 (the last batch of 2 padded and reweighted)
    ends with Keras' fit(sample_weight=mask) weights and losses; evaluate(sample_weight=)
    equals Keras' weighted evaluate (loss and token accuracy)."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    program = tfpock.optimize(_token_model(), loss=loss, optimizer=keras.optimizers.SGD(0.5),
                              batch_size=B, sample_weight=True)
    path = str(tmp_path / "tokens.tflite")
    program.export(path)
    rng = np.random.default_rng(7)
    x = rng.integers(0, 12, (10, 6)).astype(np.int32)
    y = rng.integers(0, 12, (10, 6)).astype(np.int32)
    mask = (np.arange(6)[None, :] < rng.integers(2, 7, (10, 1))).astype(np.float32)
    reference = _token_model()
    reference.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss,
                      weighted_metrics=["accuracy"])    # Keras' "metrics" ignore the weights
    expected = reference.fit(x, y, sample_weight=mask, batch_size=B, epochs=2, shuffle=False,
                             verbose=0).history
    t = Trainer(path)
    history = t.fit(x, y, sample_weight=mask, epochs=2, shuffle=False,
                    validation_data=(x, y, mask))
    assert_close(history["loss"], expected["loss"], rtol=1e-5)
    assert history["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
    weights = {v.path: v.numpy() for v in reference.weights}
    assert_close(t.weights(), {k: weights[k] for k in t.weights()}, atol=1e-6)
    keras_loss, keras_accuracy = reference.evaluate(x, y, sample_weight=mask, batch_size=16,
                                                    verbose=0)
    assert_close(history["val_loss"][-1], keras_loss, rtol=1e-5)
    assert history["val_accuracy"][-1] == pytest.approx(keras_accuracy, abs=1e-6)
    unweighted = t.evaluate(x, y)["loss"]
    assert abs(unweighted - keras_loss) > 1e-3            # the weights changed the loss
    with pytest.raises(InputError, match=r"sample_weight has shape \(10, 5\)"):
        t.fit(x, y, sample_weight=mask[:, :5])
