"""The compiled loss and accuracy in numpy, for ``Trainer.evaluate`` (no TensorFlow).

The ``train`` signature returns the loss of a step it takes; evaluation must not take one, so
it runs ``infer`` (inference mode: Dropout off, BatchNorm on its moving statistics, as Keras'
``evaluate``) and computes the loss here from the outputs, with the formulas of Keras 3's
losses (``keras/src/losses/losses.py``), in float64. The metadata's ``loss_config`` (the loss
object's config, written by ``tfpock.optimize``) says which loss and its options; a file
without it (compiled before it was recorded) gives accuracy only.

Reduction: Keras' ``sum_over_batch_size``, i.e. the mean over every element the loss yields
(one per row for a ``(batch, classes)`` output), which over several batches is the mean over
all rows: padded rows are cut off before the loss, so they never count.
"""
from __future__ import annotations

import numpy as np

EPSILON = 1e-7   # keras.backend.epsilon(): where probabilities are clipped
CLASSIFIERS = ("SparseCategoricalCrossentropy", "CategoricalCrossentropy", "BinaryCrossentropy")


class UnsupportedLossError(ValueError):
    """A loss or loss option this module does not evaluate."""


def _log_softmax(o):
    shifted = o - o.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _log_probabilities(o, from_logits):
    if from_logits:
        return _log_softmax(o)
    p = o / o.sum(axis=-1, keepdims=True)
    return np.log(np.clip(p, EPSILON, 1 - EPSILON))


def _sparse_ce(y, o, cfg):
    if cfg.get("ignore_class") is not None:
        raise UnsupportedLossError("SparseCategoricalCrossentropy(ignore_class=...)")
    logp = _log_probabilities(o, cfg.get("from_logits", False))
    return -np.take_along_axis(logp, y.astype(np.int64)[..., None], axis=-1)[..., 0]


def _ce(y, o, cfg):
    smoothing = cfg.get("label_smoothing", 0.0)
    if smoothing:
        y = y * (1 - smoothing) + smoothing / o.shape[-1]
    return -(y * _log_probabilities(o, cfg.get("from_logits", False))).sum(axis=-1)


def _bce(y, o, cfg):
    smoothing = cfg.get("label_smoothing", 0.0)
    if smoothing:
        y = y * (1 - smoothing) + 0.5 * smoothing
    if cfg.get("from_logits", False):
        values = np.maximum(o, 0) - o * y + np.log1p(np.exp(-np.abs(o)))
    else:
        p = np.clip(o, EPSILON, 1 - EPSILON)
        values = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return values.mean(axis=-1)


def _huber(y, o, cfg):
    delta = cfg.get("delta", 1.0)
    error = np.abs(o - y)
    return np.where(error <= delta, 0.5 * error ** 2,
                    delta * error - 0.5 * delta ** 2).mean(axis=-1)


LOSSES = {
    "SparseCategoricalCrossentropy": _sparse_ce,
    "CategoricalCrossentropy": _ce,
    "BinaryCrossentropy": _bce,
    "MeanSquaredError": lambda y, o, cfg: ((o - y) ** 2).mean(axis=-1),
    "MeanAbsoluteError": lambda y, o, cfg: np.abs(o - y).mean(axis=-1),
    "Huber": _huber,
}


def loss_value(metadata: dict, y: np.ndarray, output: np.ndarray,
               weight: np.ndarray | None = None) -> float | None:
    """The compiled loss of ``output`` against ``y`` (all rows), or None when the file does
    not record its loss's options (``loss_config``). ``weight`` (per row or per label):
    Keras' weighted ``sum_over_batch_size``, the mean over every loss value of weight x
    value."""
    cfg = metadata.get("loss_config")
    if cfg is None:
        return None
    name = metadata.get("loss")
    if name not in LOSSES:
        raise UnsupportedLossError(f"loss {name!r}; evaluated: {', '.join(LOSSES)}")
    if cfg.get("reduction", "sum_over_batch_size") not in ("sum_over_batch_size", "mean"):
        raise UnsupportedLossError(f"{name}(reduction={cfg['reduction']!r}); evaluated: "
                                   f"'sum_over_batch_size'")
    if cfg.get("axis", -1) != -1:
        raise UnsupportedLossError(f"{name}(axis={cfg['axis']!r}); evaluated: axis=-1")
    values = LOSSES[name](np.asarray(y, np.float64) if name != "SparseCategoricalCrossentropy"
                          else np.asarray(y), np.asarray(output, np.float64), cfg)
    if weight is not None:
        values = values * weight.reshape(weight.shape + (1,) * (values.ndim - weight.ndim))
    return float(np.mean(values))


def correct(metadata: dict, y: np.ndarray, output: np.ndarray,
            weight: np.ndarray | None = None) -> float | None:
    """How many rows the classifier gets right (Keras' accuracy metrics: argmax for the
    categorical losses; for binary cross-entropy, output above 0.5, or above 0 from logits,
    against ``y > 0.5`` per element, every element of a row right); None for a regression.
    With ``weight`` (per row, or per label of a row: a padding mask), the weighted count of
    what is right at the weight's granularity: a token-level accuracy for a language model."""
    name = metadata.get("loss")
    if name == "SparseCategoricalCrossentropy":
        hit = output.argmax(axis=-1) == y
    elif name == "CategoricalCrossentropy":
        hit = output.argmax(axis=-1) == y.argmax(axis=-1)
    elif name == "BinaryCrossentropy":
        threshold = 0.0 if metadata.get("loss_config", {}).get("from_logits") else 0.5
        hit = (output > threshold) == (y > 0.5)
    else:
        return None
    if weight is not None:
        right = hit.reshape(hit.shape[:weight.ndim] + (-1,)).all(axis=-1)
        return float((right * weight).sum())
    return int(hit.reshape(hit.shape[0], -1).all(axis=1).sum())
