"""Acceptance: one tfpock step (TFLite runtime and host TF) equals one stock TF step.

For each model x scheme: the exported model's ``train`` on ai-edge-litert and
``Program.train_step`` in TF both match ``GradientTape`` + ``keras.optimizers.SGD`` on the
same batch: loss to 1e-5 relative, every updated weight to 1e-4 absolute; frozen weights are
constants of the file (only trained weights are variables) and bit-identical in the program.

One allowance, measured rather than assumed: the early-layer gradients of a deep ReLU6
network (MobileNetV2, full scheme) are chaotic in float32. Scaling the input by (1 + 1e-6)
changes TF's own first-layer update by up to ~0.02 with TF's oneDNN CPU kernels and up to
~0.095 with its default ones (gradients ~30, units crossing the ReLU kinks), and folding the frozen
BatchNorm constants (which the converter and Grappler do) changes the rounding by as much. So each
updated weight's tolerance is 1e-4 plus four times the reference's own change under that
perturbation; for every weight of the MLP, the CNN and the sparse schemes that sensitivity is <
1e-6, so 1e-4 is what is checked there.

For MobileNetV2 that is still not enough: a unit whose pre-activation
lies within rounding of a ReLU6 kink flips its gradient when the frozen BatchNorm is folded
into the convolution, and the whole output channel of the kernel gradient moves (measured:
67 of 143,360 elements of Conv_1/kernel, all in one channel, off by up to 5.5e-4). There the
check is on the 99.9th percentile of each weight's error or, where that fails, on the update's
relative L2 error (10%), and every element within 0.05 plus the same four times the
sensitivity (``tests.reference.assert_kink_tolerant``: which units flip depends on the CPU's
kernels, so a check that a fixed set of elements agrees would be tuned to one machine).
"""
from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
import pytest

import tfpock
from tests.reference import assert_kink_tolerant, tape_sgd_step, weights_by_path
from tests.numerics import assert_close
from tfpock.tflite import model_file
from tfpock.runtime import Trainer
from tfpock.testing import models

LR = 0.05
BATCH = 4
BUILDERS = {
    "mlp": models.mlp,
    "cnn": lambda: models.every_layer_cnn(dropout=0.0),
    "mobilenet_v2": models.mobilenet_v2,
}
SCHEMES = ["full", "last:2", "bias"]


class Case(NamedTuple):
    model: str     # a key of BUILDERS
    scheme: str


CASES = [Case(m, s) for m in BUILDERS for s in SCHEMES]
KINK_TOLERANT = {Case("mobilenet_v2", s) for s in SCHEMES}  # see the module docstring


def loss_fn():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def batch_for(model, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (BATCH, *model.inputs[0].shape[1:])).astype(np.float32)
    y = rng.integers(0, model.outputs[0].shape[-1], BATCH).astype(np.int32)
    return x, y


@pytest.fixture(scope="module", params=CASES, ids=lambda case: f"{case.model}-{case.scheme}")
def compiled(request, tmp_path_factory):
    name, scheme = request.param
    model = BUILDERS[name]()
    program = tfpock.optimize(model, loss=loss_fn(), optimizer=keras.optimizers.SGD(LR),
                              scheme=scheme, batch_size=BATCH, debug=True)
    path = tmp_path_factory.mktemp(f"{name}-{scheme.replace(':', '')}") / "model.tflite"
    program.export(path)
    return name, scheme, model, program, path


def reference_after_step(name, trained_paths, x, y):
    """The stock TF step, plus its own sensitivity: the largest change of each updated
    weight when the input is scaled by (1 + 1e-6)."""
    ref = BUILDERS[name]()
    before = weights_by_path(ref)
    loss = tape_sgd_step(ref, loss_fn(), LR, x, y, trained_paths)
    after = weights_by_path(ref)
    nudged = BUILDERS[name]()
    tape_sgd_step(nudged, loss_fn(), LR, x * np.float32(1 + 1e-6), y, trained_paths)
    sensitivity = {p: float(np.abs(v - after[p]).max()) for p, v in weights_by_path(nudged).items()}
    return ref, before, loss, after, sensitivity


def assert_step_matches(loss, weights, ref_loss, ref_weights, sensitivity, where, start,
                        kink_tolerant=False, check_updates=True):
    """``start``: every weight before the step. ``check_updates`` also checks each update
    relative to its size (where kinks are not tolerated)."""
    assert_close(loss, ref_loss, rtol=1e-5, where=f"{where}: loss")
    for path, value in weights.items():
        if kink_tolerant:
            assert_kink_tolerant(value, ref_weights[path], start[path], sensitivity[path],
                                 f"{where}: weight {path}")
            continue
        if check_updates:
            # the update itself, relative to its size: early layers of the CNN move by only
            # ~1e-5 in one step, which a 1e-4 absolute check alone could not tell from zero
            update, ref_update = value - start[path], ref_weights[path] - start[path]
            scale = float(np.abs(ref_update).max())
            assert_close(update, ref_update, atol=1e-3 * scale + 1e-7 + 4 * sensitivity[path],
                         where=f"{where}: update of {path}")
        assert_close(value, ref_weights[path], atol=1e-4 + 4 * sensitivity[path],
                     where=f"{where}: weight {path}")


def test_trainer_step_matches_gradient_tape(compiled):
    name, scheme, model, program, path = compiled
    x, y = batch_for(model)
    ref, before, ref_loss, after, sensitivity = reference_after_step(
        name, program.trained_paths, x, y)
    trainer = Trainer(path)
    assert_close(trainer.infer(x), BUILDERS[name]()(x, training=False).numpy(), rtol=1e-4,
                 atol=1e-4, where="infer before the step")
    out = trainer.train(x, y)
    weights = trainer.weights()
    assert sorted(weights) == sorted(program.trained_paths)
    kinks = (name, scheme) in KINK_TOLERANT
    assert_step_matches(out["loss"], weights, ref_loss, after, sensitivity, "ai-edge-litert",
                        before, kink_tolerant=kinks)
    # the step moved most trained weights (the test can fail)
    moved = [p for p in weights if not np.array_equal(weights[p], before[p])]
    assert len(moved) >= max(1, len(weights) // 2), f"only {moved} changed"
    if not kinks:  # frozen weights intact: the file's forward after the step is the reference's
        assert_close(trainer.infer(x), ref(x, training=False).numpy(), rtol=1e-4, atol=1e-4,
                     where="infer after the step")


def test_program_step_matches_gradient_tape(compiled):
    name, scheme, model, _, _ = compiled
    x, y = batch_for(model)
    # a fresh program: the fixture's may have been stepped by another test
    fresh = tfpock.optimize(BUILDERS[name](), loss=loss_fn(), optimizer=keras.optimizers.SGD(LR),
                            scheme=scheme, batch_size=BATCH)
    _, before, ref_loss, after, sensitivity = reference_after_step(
        name, fresh.trained_paths, x, y)
    out = fresh.train_step(x, y)
    assert_step_matches(out["loss"], fresh.weights(), ref_loss, after, sensitivity,
                        "TF program", before, kink_tolerant=(name, scheme) in KINK_TOLERANT)
    frozen = fresh.frozen_weights()
    if fresh.frozen_paths:  # the forward reads every frozen weight: all are constants
        assert sorted(frozen) == sorted(fresh.frozen_paths)
    for path, value in frozen.items():
        assert value.tobytes() == before[path].tobytes(), f"frozen {path} changed"


def test_tflite_and_tf_program_agree(compiled):
    """The two tfpock engines run the same optimised graph: loss to 1e-5 relative, every
    updated weight to 1e-4 plus four times the function's own sensitivity to rounding (the
    module docstring). Where that sensitivity is nil (MLP, CNN, sparse schemes) this is 1e-4.
    In MobileNetV2's early layers under the full scheme it is not: with TF's default CPU
    kernels (no oneDNN) the host and the device differ there by up to 0.025 (Conv1 ~0.01),
    while the head's layers agree to 1e-7 and a 1e-6 nudge of the input moves TF's own update
    by up to 0.095: chaos of the float32 function, not a difference between the engines
    (``python -m tests.kink_margins``)."""
    name, scheme, model, _, path = compiled
    x, y = batch_for(model, seed=1)
    fresh = tfpock.optimize(BUILDERS[name](), loss=loss_fn(), optimizer=keras.optimizers.SGD(LR),
                            scheme=scheme, batch_size=BATCH)
    trainer = Trainer(path)
    host, device = fresh.train_step(x, y), trainer.train(x, y)
    _, start, _, _, sensitivity = reference_after_step(name, fresh.trained_paths, x, y)
    assert_step_matches(device["loss"], trainer.weights(), host["loss"], fresh.weights(),
                        sensitivity, "ai-edge-litert vs TF program", start,
                        kink_tolerant=(name, scheme) in KINK_TOLERANT, check_updates=False)


def test_only_trained_weights_are_variables(compiled):
    _, _, model, program, path = compiled
    parsed = model_file.read(path.read_bytes())
    shapes = sorted(tuple(v.shape) for v in model.trainable_variables
                    if v.path in set(program.trained_paths))
    assert sorted(parsed.variables()) == shapes
    assert parsed.custom_ops() == []
