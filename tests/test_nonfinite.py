"""The non-finite guard: a step whose loss or any value it writes is not finite changes nothing.

``tfpock.optimize(..., nonfinite="skip")`` (the default) compiles the guard into the ``train``
signature (``tfpock.tracing.guard_nonfinite``): the step reports ``finite`` and, where it is
False, writes every variable back unchanged. The device test trains one Trainer on good
batches with a poisoned one (NaN, inf) in between and another on the good batches alone: their
states must be bit-identical. ``nonfinite="apply"`` writes the step anyway and says so.
"""
import keras
import numpy as np
import pytest

import tfpock
from tfpock.runtime import Trainer
from tfpock.testing import models


def compile_(model, nonfinite="skip", **kwargs):
    return tfpock.optimize(model, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), batch_size=4, nonfinite=nonfinite, **kwargs)


def batches(meta, n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.uniform(-1, 1, meta["x"]["shape"]).astype(np.float32),
             rng.integers(0, meta["output"]["shape"][-1], meta["y"]["shape"]).astype(np.int32))
            for _ in range(n)]


def poisoned(x, value):
    bad = x.copy()
    bad.flat[5] = value
    return bad


# BatchNorm in training mode (its moving statistics are written too), Adam (slots and the step
# counter), a partial-channel weight
SCHEME = {"default": "frozen", "layers": {"conv_a": "full", "bn_a": "full",
                                          "conv_b": {"weight_fraction": 0.5, "bias": True},
                                          "logits": "full"}}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    program = compile_(models.bn_cnn(), optimizer=keras.optimizers.Adam(1e-2), scheme=SCHEME,
                       frozen_batchnorm="batch_statistics")
    return program, program.export(tmp_path_factory.mktemp("guard") / "guarded.tflite")


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
def test_a_poisoned_batch_between_good_ones_changes_nothing_on_the_device(guarded, poison):
    _, path = guarded
    clean, hit = Trainer(path), Trainer(path)
    good = batches(clean.metadata, 3)
    x0, y0 = good[0]
    before = hit.state()
    out = hit.train(poisoned(x0, poison), y0)
    assert out["finite"] is False and out["applied"] is False and not np.isfinite(out["loss"])
    for key, value in hit.state().items():
        assert value.tobytes() == before[key].tobytes(), key
    for x, y in good:
        a, b = clean.train(x, y), hit.train(x, y)
        assert a == b and a["applied"] and a["finite"]
    sa, sb = clean.state(), hit.state()
    assert set(sa) == set(sb)
    for key in sa:   # weights, Adam's slots and counter, BatchNorm statistics
        assert sa[key].tobytes() == sb[key].tobytes(), key


def test_the_host_program_skips_the_same_way(guarded):
    program, _ = guarded
    (x, y), = batches(program.metadata, 1)
    before = program.state()
    out = program.train_step(poisoned(x, np.nan), y)
    assert out["finite"] is False and out["applied"] is False
    for key, value in program.state().items():
        assert value.tobytes() == before[key].tobytes(), key
    assert program.train_step(x, y)["applied"]


def test_apply_writes_a_step_that_is_not_finite_and_says_so(tmp_path):
    program = compile_(models.mlp(), nonfinite="apply", optimizer=keras.optimizers.SGD(0.1))
    trainer = Trainer(program.export(tmp_path / "apply.tflite"))
    (x, y), = batches(trainer.metadata, 1)
    out = trainer.train(poisoned(x, np.nan), y)
    assert out["finite"] is False and out["applied"] is True
    assert any(not np.all(np.isfinite(v)) for v in trainer.weights().values())
    assert trainer.metadata["nonfinite"] == "apply"


def test_a_finite_step_is_what_it_was_without_the_guard(tmp_path):
    """The guard selects the new values when the step is finite: same numbers as "apply"."""
    trainers = [Trainer(compile_(models.mlp(), nonfinite=mode, optimizer=keras.optimizers.SGD(
        0.1)).export(tmp_path / f"{mode}.tflite")) for mode in ("skip", "apply")]
    for x, y in batches(trainers[0].metadata, 3):
        assert [t.train(x, y) for t in trainers][0]["applied"]
    states = [t.state() for t in trainers]
    for key in states[0]:
        assert states[0][key].tobytes() == states[1][key].tobytes(), key


def test_an_unknown_mode_is_refused_before_tracing():
    with pytest.raises(tfpock.TfpockError, match="nonfinite must be one of skip, apply"):
        compile_(models.mlp(), nonfinite="ignore", optimizer=keras.optimizers.SGD(0.1))


def test_labels_outside_the_classes_are_refused_not_skipped(guarded):
    from tfpock.runtime.validate import InputError
    program, path = guarded
    trainer = Trainer(path)
    (x, y), = batches(trainer.metadata, 1)
    y = y.copy()
    y[2] = 4   # bn_cnn has 4 classes
    with pytest.raises(InputError, match=r"y holds label 4 at flat index 2; labels must be in "
                                         r"\[0, 4\)"):
        trainer.train(x, y)
    with pytest.raises(InputError, match="labels must be in"):
        program.train_step(x, np.where(y == 4, -1, y))
