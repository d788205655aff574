"""``Trainer.fit``, ``evaluate`` and ``predict`` over any number of rows, and their callbacks.

numpy and the :class:`~tfpock.runtime.Trainer` only, never TensorFlow. ``x`` is an array, or
a dict of arrays (a model with several inputs): batches slice every array alike.

**The final partial batch.** The signatures take a fixed batch of ``B`` rows; data of ``n``
rows ends with ``r = n mod B`` rows left over. The rule:

* ``predict`` and ``evaluate`` pad the last batch to ``B`` rows with copies of its last row
  and cut the padded rows' outputs off before anything is computed from them: ``infer`` is
  row-independent (inference mode), so the result is exactly that of ``n`` rows.
* ``fit``, when the ``train`` signature takes per-row weights (its metadata lists a
  ``sample_weight`` spec, and ``Trainer.train`` takes ``sample_weight=``): the last batch is
  padded the same way, padded rows get weight 0 and the ``r`` real rows weight ``B / r``, so
  that the step's loss, a mean over ``B`` rows as Keras' ``sum_over_batch_size`` reduces it,
  equals the mean over the ``r`` real rows: the step Keras takes on a batch of ``r`` rows (a
  BatchNorm trained on batch statistics still sees the padded rows: exact only without one).
  Compile with ``tfpock.optimize(..., sample_weight=True)`` (``tfpock optimize
  --sample-weight``) for it; ``tests/runtime/test_fit.py`` checks it against Keras' ``fit``.
* ``fit``, when it does not (``sample_weight=False``, the default): a
  padded row would be trained as a real one, so the ``r`` rows are not trained in that epoch,
  and not silently: the epoch's history counts them (``rows_skipped``), a warning says so
  once, and with ``shuffle=True`` (the default) each epoch leaves out other rows.
  ``partial_batch="error"`` refuses such data instead.

Position and resume: epoch ``e``'s order is ``np.random.default_rng([seed, e]).permutation(n)``
(no hidden random state), and :class:`ModelCheckpoint` saves, beside every variable, the
position (epoch, batch, step), the epoch's running sums, the history and each callback's
state, so ``fit(..., resume=path)`` continues as if never stopped (Dropout's masks excepted:
the interpreter's random state is not in a checkpoint).
"""
from __future__ import annotations

import logging
import math
import os
from typing import Callable

import numpy as np

from tfpock.runtime import checkpoint, losses
from tfpock.runtime.validate import InputError

logger = logging.getLogger(__name__)

PROGRESS = "tfpock-fit/1"


# ---------------------------------------------------------------- rows and batches

def num_rows(x, name: str = "x") -> int:
    """Rows of an array, or of every array of a dict (which must agree)."""
    if isinstance(x, dict):
        if not x:
            raise InputError(f"{name} is an empty dict")
        counts = {k: num_rows(v, f"{name}[{k!r}]") for k, v in x.items()}
        if len(set(counts.values())) != 1:
            raise InputError(f"the arrays of {name} have different numbers of rows: {counts}")
        return next(iter(counts.values()))
    shape = np.shape(x)
    if not shape:
        raise InputError(f"{name} is a scalar; it needs a first axis of rows")
    return int(shape[0])


def take(x, index):
    """Rows ``index`` (an index array or a slice) of an array or a dict of arrays."""
    if isinstance(x, dict):
        return {k: np.asarray(v)[index] for k, v in x.items()}
    return np.asarray(x)[index]


def pad(x, rows: int):
    """``x`` completed to ``rows`` rows with copies of its last row (valid input of the
    model, e.g. token ids in range)."""
    if isinstance(x, dict):
        return {k: pad(v, rows) for k, v in x.items()}
    x = np.asarray(x)
    missing = rows - x.shape[0]
    return x if missing <= 0 else np.concatenate([x, np.repeat(x[-1:], missing, axis=0)])


def batch_size(trainer) -> int:
    """The compiled batch size of ``trainer``'s model (:func:`compiled_batch`)."""
    return compiled_batch(trainer.metadata)


def compiled_batch(metadata: dict) -> int:
    """The compiled batch size: the first dimension of the inputs (each has it): of the
    metadata's ``inputs`` (files of models with several inputs, which have no ``x``), else
    of ``x`` (a spec, or a dict of them)."""
    inputs = metadata.get("inputs")
    spec = inputs[0] if inputs else metadata["x"]
    if "shape" not in spec:
        spec = next(iter(spec.values()))
    return int(spec["shape"][0])


def _check_batch_size(trainer, requested) -> int:
    compiled = batch_size(trainer)
    if requested is not None and requested != compiled:
        raise InputError(f"batch_size={requested}: the model was compiled for batches of "
                         f"{compiled} (tfpock.optimize(batch_size=...)); leave it out or pass "
                         f"{compiled}")
    return compiled


def _cut(output, rows: int):
    if isinstance(output, dict):
        return {k: v[:rows] for k, v in output.items()}
    return output[:rows]


def _concat(outputs: list):
    if isinstance(outputs[0], dict):
        return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    return np.concatenate(outputs)


def predict(trainer, x, batch_size: int | None = None) -> np.ndarray:
    """``infer`` over every row of ``x``; the last batch padded and its padding cut off."""
    size = _check_batch_size(trainer, batch_size)
    n = num_rows(x)
    if n == 0:
        raise InputError("predict: x has no rows")
    outputs = []
    for start in range(0, n, size):
        rows = min(size, n - start)
        outputs.append(_cut(trainer.infer(pad(take(x, slice(start, start + rows)), size)), rows))
    return _concat(outputs)


def evaluate(trainer, x, y, batch_size: int | None = None, sample_weight=None) -> dict:
    """``{"loss": ..., "accuracy": ...}`` over every row, in inference mode (as Keras'
    ``evaluate``); accuracy for classifiers only, loss when the file records its loss's
    options (``tfpock/runtime/losses.py``). ``sample_weight``: per-label weights as in
    :func:`fit` (e.g. a padding mask): the loss is Keras' weighted ``sum_over_batch_size``
    (the mean of weight x loss over every label), the accuracy the weighted fraction right
    (Keras' ``weighted_metrics=["accuracy"]``; its plain ``metrics`` ignore the weights)."""
    if num_rows(y, "y") != num_rows(x):
        raise InputError(f"x has {num_rows(x)} rows, y has {num_rows(y, 'y')}")
    weight = label_weights(sample_weight, y, "evaluate")
    output = predict(trainer, x, batch_size)
    y = np.asarray(y)
    result = {}
    loss = losses.loss_value(trainer.metadata, y, output, weight)
    if loss is not None:
        result["loss"] = loss
    hits = losses.correct(trainer.metadata, y, output, weight)
    if hits is not None:
        result["accuracy"] = hits / (len(y) if weight is None else max(float(weight.sum()),
                                                                       1e-30))
    return result


def label_weights(sample_weight, y, where: str) -> np.ndarray | None:
    """``sample_weight`` checked as per-label weights of ``y``: float32, finite, >= 0, of
    ``y``'s leading shape (one per row, or one per label of a row: ``[rows, seq]`` for a
    next-token loss); None stays None."""
    if sample_weight is None:
        return None
    w, y = np.asarray(sample_weight), np.asarray(y)
    if w.dtype.kind not in "biuf" or w.ndim == 0 or w.shape != y.shape[:w.ndim]:
        raise InputError(f"{where}: sample_weight has shape {w.shape} ({w.dtype}); it takes "
                         f"numbers of y's leading shape: {y.shape[:1]} (a weight a row) up to "
                         f"{y.shape} (a weight a label)")
    w = w.astype(np.float32)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InputError(f"{where}: sample_weight must be finite and >= 0")
    return w


# ---------------------------------------------------------------- schedules and callbacks

def constant(learning_rate: float) -> Callable[[int], float]:
    """The same rate at every step."""
    return lambda step: float(learning_rate)


def cosine(learning_rate: float, total_steps: int, final: float = 0.0) -> Callable[[int], float]:
    """Cosine decay from ``learning_rate`` at step 0 to ``final`` at ``total_steps`` (as
    ``keras.optimizers.schedules.CosineDecay`` with ``alpha = final / learning_rate``)."""
    if total_steps < 1:
        raise ValueError(f"cosine: total_steps must be >= 1, got {total_steps}")

    def schedule(step):
        t = min(step, total_steps) / total_steps
        return float(final + (learning_rate - final) * 0.5 * (1 + math.cos(math.pi * t)))
    return schedule


def step_decay(learning_rate: float, every: int, factor: float = 0.5) -> Callable[[int], float]:
    """``learning_rate * factor ** (step // every)``."""
    if every < 1:
        raise ValueError(f"step_decay: every must be >= 1, got {every}")
    return lambda step: float(learning_rate * factor ** (step // every))


class Callback:
    """Called by :func:`fit` (Keras' callback methods, on a :class:`Loop`). ``state`` and
    ``load_state`` carry what a callback must remember across a resume (JSON)."""

    def on_train_begin(self, loop: "Loop") -> None: ...
    def on_batch_begin(self, loop: "Loop") -> None: ...
    def on_batch_end(self, loop: "Loop", logs: dict) -> None: ...
    def on_epoch_end(self, loop: "Loop", logs: dict) -> None: ...
    def on_train_end(self, loop: "Loop") -> None: ...

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        del state


class LearningRateScheduler(Callback):
    """Sets the learning rate of every step: ``schedule(step) -> rate`` (step counted from 0
    over the whole fit), e.g. :func:`cosine`, :func:`step_decay`."""

    def __init__(self, schedule: Callable[[int], float]):
        self.schedule = schedule

    def on_batch_begin(self, loop):
        loop.learning_rate = float(self.schedule(loop.step))


class ModelCheckpoint(Callback):
    """Saves every variable and the fit's position to ``path`` (an .npz, atomically) every
    ``every`` steps and when the fit ends; ``fit(..., resume=path)`` continues from it."""

    def __init__(self, path: str | os.PathLike, every: int = 100):
        if every < 1:
            raise ValueError(f"ModelCheckpoint: every must be >= 1, got {every}")
        self.path, self.every = os.fspath(path), every

    def on_batch_end(self, loop, logs):
        if loop.step % self.every == 0:
            loop.save(self.path)
            logger.info("checkpoint %s: epoch %d, step %d", self.path, loop.epoch + 1, loop.step)

    def on_train_end(self, loop):
        loop.save(self.path)
        logger.info("checkpoint %s: the end, step %d", self.path, loop.step)


class EarlyStopping(Callback):
    """Stops the fit when ``monitor`` (a history key, e.g. ``val_loss``, ``val_accuracy``)
    has not improved by more than ``min_delta`` for ``patience`` epochs; ``mode`` "min",
    "max" or "auto" (max for accuracies). ``restore_best_weights`` sets the best epoch's
    weights back at the end (kept in memory: not across a resume)."""

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping: mode must be auto, min or max, got {mode!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, abs(min_delta)
        self.sign = -1.0 if mode == "max" or (mode == "auto" and "acc" in monitor) else 1.0
        self.restore_best_weights = restore_best_weights
        self.best, self.wait, self.best_state = None, 0, None

    def on_epoch_end(self, loop, logs):
        if self.monitor not in logs:
            raise InputError(f"EarlyStopping monitors {self.monitor!r}, the epoch logged "
                             f"{sorted(logs)} (val_* needs validation_data)")
        value = self.sign * logs[self.monitor]
        if self.best is None or value < self.best - self.min_delta:
            self.best, self.wait = value, 0
            if self.restore_best_weights:
                self.best_state = loop.trainer.state()
            return
        self.wait += 1
        if self.wait >= self.patience:
            loop.stop_training = True

    def on_train_end(self, loop):
        if self.best_state is not None:
            loop.trainer.set_state(self.best_state)

    def state(self):
        return {"best": self.best, "wait": self.wait}

    def load_state(self, state):
        self.best, self.wait = state["best"], state["wait"]


# ---------------------------------------------------------------- the loop

class Loop:
    """Where a fit is: what callbacks read and set (``learning_rate``, ``stop_training``)."""

    def __init__(self, trainer, callbacks, n: int, seed: int, shuffle: bool, learning_rate):
        self.trainer, self.callbacks = trainer, callbacks
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.learning_rate = learning_rate
        self.epoch = self.batch = self.step = 0
        self.sums = _new_sums()
        self.history: dict[str, list] = {}
        self.stop_training = False

    def progress(self) -> dict:
        return {"format": PROGRESS, "rows": self.n, "seed": self.seed, "shuffle": self.shuffle,
                "epoch": self.epoch, "batch": self.batch, "step": self.step,
                "learning_rate": self.learning_rate, "sums": self.sums, "history": self.history,
                "callbacks": {k: c.state() for k, c in self._keyed().items() if c.state()}}

    def _keyed(self) -> dict:
        """Callbacks by class name and occurrence (``EarlyStopping``, ``EarlyStopping#2``):
        a resume gives each the state of its namesake; callbacks without state may differ."""
        keyed, seen = {}, {}
        for c in self.callbacks:
            name = type(c).__name__
            seen[name] = seen.get(name, 0) + 1
            keyed[name if seen[name] == 1 else f"{name}#{seen[name]}"] = c
        return keyed

    def restore(self, path: str) -> None:
        """Loads the variables (``Trainer.restore``'s checks) and the position."""
        progress = checkpoint.read_extra(path).get("fit")
        if not progress or progress.get("format") != PROGRESS:
            raise checkpoint.CheckpointError(
                f"checkpoint {path!r} holds no fit position ({PROGRESS}); it was not written "
                f"by fit's ModelCheckpoint, so there is nothing to resume")
        for key, now in (("rows", self.n), ("seed", self.seed), ("shuffle", self.shuffle)):
            if progress[key] != now:
                raise InputError(f"resume from {path!r}: it was trained with {key}="
                                 f"{progress[key]!r}, this fit has {key}={now!r}; a resume "
                                 f"needs the same data and order")
        self.trainer.restore(path)
        self.epoch, self.batch, self.step = progress["epoch"], progress["batch"], progress["step"]
        self.learning_rate = progress["learning_rate"]
        self.sums, self.history = progress["sums"], progress["history"]
        for key, callback in self._keyed().items():
            if key in progress["callbacks"]:
                callback.load_state(progress["callbacks"][key])
        logger.info("resumed from %s: epoch %d, batch %d, step %d", path, self.epoch + 1,
                    self.batch, self.step)

    def save(self, path: str) -> str:
        t = self.trainer
        return checkpoint.save(path, t.state(), t.fingerprint, checkpoint.describe(t.metadata),
                               extra={"fit": self.progress()})

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)


def _new_sums() -> dict:
    return {"loss": 0.0, "rows": 0, "correct": 0, "skipped_steps": 0}


def _takes_sample_weight(trainer) -> bool:
    return "sample_weight" in trainer.metadata


def fit(trainer, x, y, epochs: int = 1, batch_size: int | None = None, validation_data=None,
        shuffle: bool = True, callbacks=None, learning_rate=None, seed: int = 0,
        partial_batch: str = "auto", train_accuracy: bool = True,
        resume: str | os.PathLike | None = None, sample_weight=None) -> dict[str, list]:
    """Trains ``epochs`` passes over ``(x, y)``; returns the history, per epoch: ``loss``
    (mean over the rows trained), ``accuracy`` for classifiers (of each batch's ``infer``
    just before its step, as Keras measures a batch before its update; ``train_accuracy=
    False`` saves that forward), ``val_loss``/``val_accuracy`` with ``validation_data``,
    ``lr`` (the last step's), ``skipped_steps`` (non-finite steps the model refused) and
    ``rows_skipped`` (the final partial batch's rule: module docstring).

    ``learning_rate``: a number or ``schedule(step) -> rate`` (default: the optimizer's);
    a :class:`LearningRateScheduler` callback does the same. ``resume``: a checkpoint of
    :class:`ModelCheckpoint` to continue from (same data, seed and shuffle).
    ``sample_weight``: the loss's weight of each row or label (a padding mask for a language
    model; files compiled with ``sample_weight=True``), batched with ``x`` and ``y``;
    ``validation_data`` may then be ``(x, y, sample_weight)``; the accuracies are then
    weighted, as Keras' ``weighted_metrics`` (``tests/runtime/test_fit.py`` compares)."""
    size = _check_batch_size(trainer, batch_size)
    if not isinstance(epochs, int) or epochs < 1:
        raise InputError(f"epochs must be a positive int, got {epochs!r}")
    if partial_batch not in ("auto", "error"):
        raise InputError(f"partial_batch must be 'auto' or 'error', got {partial_batch!r}")
    n = num_rows(x)
    if num_rows(y, "y") != n:
        raise InputError(f"x has {n} rows, y has {num_rows(y, 'y')}")
    masked = _takes_sample_weight(trainer)
    weight = label_weights(sample_weight, y, "fit")
    if weight is not None and not masked:
        raise InputError("fit: sample_weight given, but the model was compiled without one; "
                         "compile with tfpock.optimize(..., sample_weight=True)")
    if n < size and not masked:
        raise InputError(f"fit: {n} rows are fewer than one batch of {size}; the model's train "
                         f"signature takes no sample weights to mask padding with")
    if n % size and not masked:
        if partial_batch == "error":
            raise InputError(f"fit: {n} rows leave a partial batch of {n % size} (batches of "
                             f"{size}) and the train signature takes no sample weights")
        logger.warning("fit: %d rows are %d batches of %d and %d rows over; the train signature "
                       "takes no sample weights, so those rows are left out of each epoch "
                       "(other rows each epoch when shuffled; history 'rows_skipped')",
                       n, n // size, size, n % size)
    schedule = learning_rate if callable(learning_rate) else constant(
        trainer.learning_rate if learning_rate is None else learning_rate)
    callbacks = list(callbacks or [])
    loop = Loop(trainer, callbacks, n, seed, shuffle, None)
    if resume is not None:
        loop.restore(os.fspath(resume))
    classifier = trainer.metadata.get("loss") in losses.CLASSIFIERS
    batches = n // size + (1 if n % size and masked else 0)
    for c in callbacks:
        c.on_train_begin(loop)
    while loop.epoch < epochs and not loop.stop_training:
        order = loop.order(loop.epoch)
        while loop.batch < batches and not loop.stop_training:
            index = order[loop.batch * size:(loop.batch + 1) * size]
            loop.learning_rate = schedule(loop.step)
            for c in callbacks:
                c.on_batch_begin(loop)
            logs = _train_batch(trainer, take(x, index), np.asarray(y)[index],
                                None if weight is None else weight[index], size,
                                loop.learning_rate, masked, classifier and train_accuracy,
                                loop.sums)
            loop.batch += 1
            loop.step += 1
            for c in callbacks:
                c.on_batch_end(loop, logs)
        logs = _epoch_logs(loop, n, n if masked else n // size * size,
                           classifier and train_accuracy)
        if validation_data is not None:
            vx, vy, *vw = validation_data
            logs.update({f"val_{k}": v for k, v in evaluate(
                trainer, vx, vy, batch_size=size, sample_weight=vw[0] if vw else None).items()})
        for key, value in logs.items():
            loop.history.setdefault(key, []).append(value)
        loop.epoch, loop.batch, loop.sums = loop.epoch + 1, 0, _new_sums()
        for c in callbacks:
            c.on_epoch_end(loop, logs)
    for c in callbacks:
        c.on_train_end(loop)
    return loop.history


def _train_batch(trainer, xb, yb, wb, size, lr, masked, accuracy, sums) -> dict:
    rows = num_rows(xb)
    if accuracy:
        out = _cut(trainer.infer(pad(xb, size)), rows)
        sums["correct"] += losses.correct(trainer.metadata, yb, out, wb)
        if wb is not None:
            sums["weight"] = sums.get("weight", 0.0) + float(wb.sum())
    if masked:
        weight = np.zeros(tuple(trainer.metadata["sample_weight"]["shape"]), np.float32)
        weight[:rows] = (1.0 if wb is None else wb) * np.float32(size / rows)
        result = trainer.train(pad(xb, size), pad(yb, size), sample_weight=weight,
                               learning_rate=lr)
    else:
        result = trainer.train(xb, yb, learning_rate=lr)
    if result["finite"]:
        sums["loss"] += result["loss"] * rows
        sums["rows"] += rows
    if not result["applied"]:
        sums["skipped_steps"] += 1
    return {**result, "lr": lr}


def _epoch_logs(loop, n, trained_rows, accuracy) -> dict:
    sums = loop.sums
    logs = {"loss": sums["loss"] / sums["rows"] if sums["rows"] else float("nan")}
    if accuracy:   # of the rows trained (the weights' sum, with sample_weight)
        total = sums.get("weight", trained_rows)
        logs["accuracy"] = sums["correct"] / total if total else float("nan")
    logs.update(lr=loop.learning_rate, skipped_steps=sums["skipped_steps"],
                rows_skipped=n - trained_rows)
    return logs
