"""Keras optimizers compiled into the training graph: class -> update rule table.

The optimizer object is read for its configuration only; the update is emitted as graph ops
(``w - lr * g`` for SGD) so the converter lowers it to READ_VARIABLE, MUL, SUB and
ASSIGN_VARIABLE builtins. Options with no rule yet (momentum, clipping, weight decay, EMA)
are refused by name rather than silently ignored.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import tensorflow as tf

from tfpock.errors import UnsupportedModelError


@dataclasses.dataclass(frozen=True)
class CompiledOptimizer:
    """An update rule ``apply(weight, gradient) -> new weight`` and its configuration."""
    name: str
    config: dict
    apply: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


# options with no update rule yet; each is "off" when falsy (0, None, False)
_REFUSED_OPTIONS = ("momentum", "weight_decay", "clipnorm", "clipvalue", "global_clipnorm",
                    "use_ema", "loss_scale_factor", "gradient_accumulation_steps")


def _sgd(optimizer: keras.optimizers.SGD) -> CompiledOptimizer:
    config = optimizer.get_config()
    for option in _REFUSED_OPTIONS:
        if config.get(option):
            raise UnsupportedModelError(
                f"SGD option {option}={config[option]!r} is not supported yet; supported: "
                "SGD with a constant learning_rate and momentum=0")
    lr = config["learning_rate"]
    if not isinstance(lr, (int, float)):
        raise UnsupportedModelError(
            f"SGD learning_rate must be a constant, got {type(lr).__name__}; "
            "learning-rate schedules are not supported yet")
    lr = float(lr)
    return CompiledOptimizer("SGD", {"learning_rate": lr},
                             lambda w, g: w - tf.constant(lr, w.dtype) * g)


OPTIMIZERS: dict[type, Callable[[keras.optimizers.Optimizer], CompiledOptimizer]] = {
    keras.optimizers.SGD: _sgd,
}


def compile_optimizer(optimizer) -> CompiledOptimizer:
    if isinstance(optimizer, str):
        optimizer = keras.optimizers.get(optimizer)
    builder = OPTIMIZERS.get(type(optimizer))
    if builder is None:
        supported = ", ".join(cls.__name__ for cls in OPTIMIZERS)
        raise UnsupportedModelError(f"optimizer {type(optimizer).__name__} is not supported "
                                    f"yet; supported: {supported}")
    return builder(optimizer)
