"""Keras optimizers compiled into the training graph: class -> update rule table.

The optimizer object is read for its configuration only; its update is emitted as graph ops
that the converter lowers to builtins (READ_VARIABLE, MUL, SUB, SQRT, POW, ASSIGN_VARIABLE).
State (momentum, Adam's moments) lives in variables of the exported model that exist only for
what is trained: for a partial-channel weight, only for its trained channels. The learning rate
is an input of the ``train`` signature (defaulting to the optimizer's), so a device can follow
a schedule. The formulas are Keras 3's own (``keras/src/optimizers``), in the same order:

    weight decay (any optimizer):  w <- w - w * wd * lr           (before the update)
    SGD:                           w <- w - lr * g
    SGD + momentum:                m <- momentum * m - lr * g;  w <- w + m
    SGD + Nesterov:                m <- momentum * m - lr * g;  w <- w + momentum * m - lr * g
    Adam / AdamW (t = step + 1):   m <- m + (g - m)(1 - b1);  v <- v + (g^2 - v)(1 - b2)
                                   w <- w - lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)

Options with no rule (clipping, EMA, AMSGrad, gradient accumulation, schedules) are refused by
name rather than silently ignored.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import tensorflow as tf

from tfpock.errors import UnsupportedModelError

# options with no rule yet; each is "off" when falsy (0, None, False)
_REFUSED_OPTIONS = ("clipnorm", "clipvalue", "global_clipnorm", "use_ema", "loss_scale_factor",
                    "gradient_accumulation_steps", "amsgrad")


@dataclasses.dataclass(frozen=True)
class Update:
    """What one weight's update returns: its new value and its slots' new values."""
    weight: tf.Tensor
    slots: dict[str, tf.Tensor]


@dataclasses.dataclass(frozen=True)
class CompiledOptimizer:
    """An update rule over graph tensors, with the state it needs.

    ``apply(w, g, slots, lr, step)``: ``slots`` maps each name in ``slot_names`` to the slot's
    current value (same shape as ``w``), ``lr`` is the learning-rate tensor and ``step`` the
    number of steps taken so far (a float32 scalar; only read if ``uses_step``).
    """
    name: str
    config: dict
    learning_rate: float
    slot_names: tuple[str, ...]
    uses_step: bool
    apply: Callable[..., Update]


def _decayed(w, lr, weight_decay):
    if not weight_decay:
        return w
    return w - w * tf.constant(weight_decay, w.dtype) * lr


def _sgd(config: dict) -> CompiledOptimizer:
    momentum, nesterov, wd = float(config.get("momentum") or 0.0), bool(config.get("nesterov")), \
        config.get("weight_decay")

    def apply(w, g, slots, lr, step):
        w = _decayed(w, lr, wd)
        if not momentum:
            return Update(w - lr * g, {})
        mu = tf.constant(momentum, w.dtype)
        m = slots["momentum"] * mu - g * lr
        new_w = w + (m * mu - g * lr if nesterov else m)
        return Update(new_w, {"momentum": m})

    return CompiledOptimizer("SGD", {"momentum": momentum, "nesterov": nesterov,
                                     "weight_decay": wd},
                             config["learning_rate"], ("momentum",) if momentum else (),
                             False, apply)


def _adam(name: str) -> Callable[[dict], CompiledOptimizer]:
    def build(config: dict) -> CompiledOptimizer:
        b1, b2, eps = (float(config["beta_1"]), float(config["beta_2"]),
                       float(config["epsilon"]))
        wd = config.get("weight_decay")

        def apply(w, g, slots, lr, step):
            w = _decayed(w, lr, wd)
            t = step + 1.0
            beta_1, beta_2 = tf.constant(b1, w.dtype), tf.constant(b2, w.dtype)
            alpha = lr * tf.sqrt(1.0 - tf.pow(beta_2, t)) / (1.0 - tf.pow(beta_1, t))
            m = slots["m"] + (g - slots["m"]) * (1.0 - beta_1)
            v = slots["v"] + (tf.square(g) - slots["v"]) * (1.0 - beta_2)
            new_w = w - (m * alpha) / (tf.sqrt(v) + tf.constant(eps, w.dtype))
            return Update(new_w, {"m": m, "v": v})

        return CompiledOptimizer(name, {"beta_1": b1, "beta_2": b2, "epsilon": eps,
                                        "weight_decay": wd},
                                 config["learning_rate"], ("m", "v"), True, apply)
    return build


OPTIMIZERS: dict[type, Callable[[dict], CompiledOptimizer]] = {
    keras.optimizers.SGD: _sgd,
    keras.optimizers.Adam: _adam("Adam"),
    keras.optimizers.AdamW: _adam("AdamW"),
}


def compile_optimizer(optimizer) -> CompiledOptimizer:
    """Reads a Keras optimizer (object or name) into a graph update rule."""
    if isinstance(optimizer, str):
        optimizer = keras.optimizers.get(optimizer)
    builder = OPTIMIZERS.get(type(optimizer))
    if builder is None:
        supported = ", ".join(cls.__name__ for cls in OPTIMIZERS)
        raise UnsupportedModelError(f"optimizer {type(optimizer).__name__} is not supported "
                                    f"yet; supported: {supported}")
    config = optimizer.get_config()
    name = type(optimizer).__name__
    for option in _REFUSED_OPTIONS:
        if config.get(option):
            raise UnsupportedModelError(
                f"{name} option {option}={config[option]!r} is not supported yet; supported: "
                "learning_rate, momentum/nesterov (SGD), beta_1/beta_2/epsilon (Adam, AdamW), "
                "weight_decay")
    if getattr(optimizer, "_exclude_from_weight_decay", None) or \
            getattr(optimizer, "_exclude_from_weight_decay_pattern", None):
        raise UnsupportedModelError(f"{name}: exclude_from_weight_decay is not supported yet")
    lr = config["learning_rate"]
    if not isinstance(lr, (int, float)):
        raise UnsupportedModelError(
            f"{name} learning_rate must be a constant, got {type(lr).__name__}; follow a "
            "schedule on the device by passing learning_rate to each train step")
    config["learning_rate"] = float(lr)
    return builder(config)
