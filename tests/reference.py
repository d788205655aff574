"""The stock TensorFlow step tfpock must match: GradientTape + a Keras optimizer.

``tape_sgd_step`` is one SGD step on whole weights; ``Reference`` is any optimizer of
``OPTIMIZERS`` on a scheme's weights, partial-channel ones included (its docstring, and
``tests/test_sparse_updates.py``'s, say how), used by the sparse tests and ``tests/fuzz.py``.
"""
from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf


def freeze_as_scheme(model: keras.Model, trained_paths) -> None:
    """What a scheme means in Keras: a BatchNormalization that is trainable but of which
    nothing is trained gets ``trainable = False`` (inference mode), as tfpock runs it by
    default (mutates ``model``)."""
    trained = set(trained_paths)
    for layer in model.layers:
        if (isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
                and not any(v.path in trained for v in layer.weights)):
            layer.trainable = False


def tape_sgd_step(model: keras.Model, loss_fn, learning_rate: float, x, y,
                  trained_paths: list[str]) -> float:
    """One SGD step on ``model``'s weights named by ``trained_paths``, with the layers the
    scheme freezes frozen as Keras freezes them (mutates ``model``)."""
    freeze_as_scheme(model, trained_paths)
    by_path = {v.path: v for v in model.trainable_variables}
    watched = [by_path[p] for p in trained_paths]
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, watched)
    keras.optimizers.SGD(learning_rate).apply(grads, watched)
    return float(loss)


def weights_by_path(model: keras.Model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy()) for v in model.variables}


# A weight's update may be off by this much in relative L2 norm where single units crossing a
# ReLU6 kink move parts of it (tests/test_equivalence.py's docstring).
KINK_RELATIVE_NORM = 0.1


def assert_kink_tolerant(value, expected, start, sensitivity: float, where: str) -> None:
    """A value of a chaotic float32 step (MobileNetV2): every element within 0.05 plus four
    times the reference's own sensitivity, and either the 99.9th percentile of the error
    within 1e-4 plus four times the sensitivity, or the update within 10% in L2 norm.

    The percentile check alone depends on the CPU's kernels: which units sit within rounding
    of a kink, and whether the reference's 1e-6 nudge happens to flip the same ones, changes
    with them (with TF's default kernels, the full scheme on one batch is 3x over it while its
    update is 1.8% off in norm). A few flipped units move a weight's update by a few percent
    (measured worst 5%: Adam's first step, which turns each gradient element into +-lr); a
    wrong gradient (a transposed kernel, a lost term) moves it by its own size. Reproduce the
    figures: ``TF_ENABLE_ONEDNN_OPTS=0 python -m tests.kink_margins`` (and ``=1``)."""
    error = np.abs(np.asarray(value, np.float64) - expected)
    cap = 0.05 + 4 * sensitivity
    assert error.max() <= cap, f"{where}: off by {error.max():.3g} > {cap:.3g}"
    if np.percentile(error, 99.9) <= 1e-4 + 4 * sensitivity:
        return
    update = float(np.linalg.norm(np.asarray(expected, np.float64) - start))
    relative = float(np.linalg.norm(error)) / max(update, 1e-12)
    assert relative <= KINK_RELATIVE_NORM, (
        f"{where}: 99.9th percentile error {np.percentile(error, 99.9):.3g} > "
        f"{1e-4 + 4 * sensitivity:.3g} and the update is {relative:.1%} off in norm")


SGD_LR = 0.05
ADAM_LR = 1e-3

OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(SGD_LR),
    "momentum": lambda: keras.optimizers.SGD(SGD_LR, momentum=0.9),
    "nesterov": lambda: keras.optimizers.SGD(SGD_LR, momentum=0.9, nesterov=True),
    "adam": lambda: keras.optimizers.Adam(ADAM_LR),
    "adamw": lambda: keras.optimizers.AdamW(ADAM_LR, weight_decay=0.01),
}


# ---- what a policy trains, from its documented meaning ----------------------------------
_KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")
_BIASES = ("bias", "beta")


def expected_trained(model: keras.Model, scheme: dict) -> dict[str, int | None]:
    """path -> trained input channels (None: all of it), in model.trainable_variables order."""
    out = {}
    for layer in model.layers:
        policy = scheme["layers"].get(layer.name, scheme["default"])
        # (last path component, weight): MultiHeadAttention has several "kernel"s and "bias"es
        names = [(w.path.rsplit("/", 1)[-1], w) for w in layer.trainable_weights]
        if policy == "full":
            out.update({w.path: None for _, w in names})
        elif policy == "bias":
            out.update({w.path: None for n, w in names if n in _BIASES})
        elif isinstance(policy, dict):
            if policy.get("bias", True):
                out.update({w.path: None for n, w in names if n in _BIASES})
            for n, w in names:
                if n in _KERNELS:
                    total = w.shape[-2]
                    k = policy.get("weight_channels") or max(
                        1, math.floor(policy["weight_fraction"] * total + 1e-9))
                    out[w.path] = None if k == total else k
    order = [v.path for v in model.trainable_variables]
    return {p: out[p] for p in order if p in out}


# ---- the stock TF reference ---------------------------------------------------------------
class Reference:
    """GradientTape + a fresh Keras optimizer; partial weights through slice variables."""

    def __init__(self, model: keras.Model, scheme: dict, optimizer, loss_fn):
        """``model`` (mutated: it is the one trained), ``scheme`` in its JSON form with
        ``"default"``, ``"layers"`` and optionally ``"frozen_batchnorm"``, a fresh Keras
        ``optimizer``, a Keras ``loss_fn``."""
        self.model = model
        self.loss_fn = loss_fn
        self.trained = expected_trained(self.model, scheme)
        if scheme.get("frozen_batchnorm", "inference") == "inference":
            freeze_as_scheme(self.model, self.trained)   # frozen BatchNorms: inference mode
        by_path = {v.path: v for v in self.model.variables}
        self.watched = [by_path[p] for p in self.trained]
        self.targets = []   # what the optimizer updates: the weight, or its trained slice
        for path, k in self.trained.items():
            var = by_path[path]
            self.targets.append(var if k is None else keras.Variable(
                var.numpy()[..., :k, :], name=path.replace("/", "_") + "_trained"))
        self.optimizer = optimizer

    def step(self, x, y, learning_rate=None, sample_weight=None) -> float:
        """One step; ``x`` as the model takes it (a dict for several inputs), ``sample_weight``
        passed to the loss as Keras' ``fit`` does."""
        if learning_rate is not None:
            self.optimizer.learning_rate = learning_rate
        with tf.GradientTape() as tape:
            loss = self.loss_fn(y, self.model(x, training=True), sample_weight=sample_weight)
        grads = tape.gradient(loss, self.watched)
        grads = [g if k is None else g[..., :k, :] for g, k in zip(grads, self.trained.values())]
        self.optimizer.apply(grads, self.targets)
        for var, target, k in zip(self.watched, self.targets, self.trained.values()):
            if k is not None:
                var.assign(tf.concat([target.value, var.value[..., k:, :]], axis=-2))
        return float(loss)

    def weights(self) -> dict[str, np.ndarray]:
        return {v.path: np.array(v.numpy()) for v in self.model.variables}

    def _slot_variables(self) -> dict[str, keras.Variable]:
        opt, out = self.optimizer, {}
        opt.build(self.targets)
        if isinstance(opt, keras.optimizers.Adam):   # AdamW too
            named = {"m": opt._momentums, "v": opt._velocities}
            out["optimizer/iterations"] = opt.iterations
        else:
            named = {"momentum": opt.momentums} if opt.momentum else {}
        for slot, variables in named.items():
            for path, target in zip(self.trained, self.targets):
                out[f"optimizer/{slot}/{path}"] = variables[opt._get_variable_index(target)]
        return out

    def slots(self) -> dict[str, np.ndarray]:
        """The optimizer's state under tfpock's checkpoint keys."""
        return {k: np.array(v.numpy(), np.float32) for k, v in self._slot_variables().items()}

    def load(self, state: dict[str, np.ndarray]) -> None:
        """Takes over a tfpock state (``Trainer.state()``): weights, statistics, slots."""
        by_path = {v.path: v for v in self.model.variables}
        for path, value in state.items():
            if path in by_path:
                by_path[path].assign(value)
        for path, target, k in zip(self.trained, self.targets, self.trained.values()):
            if k is not None:
                target.assign(state[path][..., :k, :])
        for key, var in self._slot_variables().items():
            var.assign(np.asarray(state[key]).astype(var.dtype))


def nudge_sensitivity(references, state, x, y, ref_after):
    """The kink allowance's sensitivity: the largest change of each value of the reference's
    step when its input is scaled by 1 + 1e-6 and by 1 - 1e-6, from ``state`` (on two spare
    references)."""
    out = {}
    for factor, nudged in zip((1 + 1e-6, 1 - 1e-6), references):
        nudged.load(state)
        nudged.step(x * np.float32(factor), y)
        values = {**nudged.weights(), **nudged.slots()}
        for key, value in values.items():
            out[key] = max(out.get(key, 0.0), float(np.abs(value - ref_after[key]).max()))
    return out
