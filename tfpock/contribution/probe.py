"""The probe: one compiled host program that fine-tunes any set of layers/channels briefly.

For a set of options S it runs, from the model's weights, ``steps`` optimizer steps on fixed
batches (any number: the batches' leading axis, not the trace) and returns the validation
loss and outputs. Which weights train is an *input*, not
the trace: every trainable weight ``w`` gets a selection ``sel`` (1 where S trains it, 0
elsewhere; along the input-channel axis for a partial-channel kernel, as the compiler's
``TrainedWeight`` says), and a step is

    u, slots' = optimizer(w, g, slots, lr, t);   w <- w + sel * (u - w);
    slots <- slots + sel * (slots' - slots)

which equals training exactly the selected entries (the optimizer's rules are elementwise),
weight decay included. So one ``tf.function`` trace serves every candidate and every
combination the selection wants re-measured, instead of a compile per candidate.

The forward runs in inference mode (``training=False``): frozen BatchNorm layers on their
moving statistics, as tfpock's compiled step runs them; dropout off (a brief probe compares
options, and dropout's noise would have to be averaged away). Runs on the host in TF.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tfpock.losses import resolve_loss
from tfpock.optimizers import compile_optimizer
from tfpock.scheme import Scheme


class Probe:
    """Brief fine-tuning runs of ``model`` with the trained weights as inputs.

    Example:
        >>> probe = Probe(model, loss, optimizer, x_val, y_val)
        >>> val_loss, val_out = probe.run(Scheme(layers={"logits": "full"}), xb, yb)
    """

    def __init__(self, model: keras.Model, loss, optimizer, x_val: np.ndarray,
                 y_val: np.ndarray, learning_rate: float | None = None):
        self._model = model
        self._loss = resolve_loss(loss)
        self._opt = compile_optimizer(optimizer)
        self.learning_rate = float(self._opt.learning_rate if learning_rate is None
                                   else learning_rate)
        self._paths = [v.path for v in model.trainable_variables]
        self._init = [tf.constant(v.numpy()) for v in model.trainable_variables]
        self._non_trainable = [tf.constant(v.numpy()) for v in model.non_trainable_variables]
        self._x_val = tf.constant(x_val)
        self._y_val = tf.constant(y_val)
        self._fn = None
        self.traces = 0

    def selections(self, scheme: Scheme) -> list[np.ndarray]:
        """Per trainable weight, the 0/1 selection ``scheme`` trains (broadcastable shape)."""
        trained = {w.path: w for w in scheme.resolve(self._model)}
        out = []
        for path, init in zip(self._paths, self._init):
            w = trained.get(path)
            rank = len(init.shape)
            # one shape per weight whatever the scheme (one trace): the input-channel axis
            # (rank - 2, the compiler's TrainedWeight.axis) of every kernel is spelled out
            shape = [1] * rank
            if rank >= 2:
                shape[rank - 2] = init.shape[rank - 2]
            sel = np.zeros(shape, np.float32)
            if w is not None:
                index = [slice(None)] * rank
                if w.channels is not None:
                    index[w.axis] = slice(0, w.channels)
                sel[tuple(index)] = 1.0
            out.append(sel)
        return out

    def run(self, scheme: Scheme, xb: np.ndarray, yb: np.ndarray) -> tuple[float, np.ndarray]:
        """Trains what ``scheme`` selects on batches ``xb[s], yb[s]`` (s < steps) from the
        model's weights; returns the validation loss and outputs after the last step."""
        sels = [tf.constant(s) for s in self.selections(scheme)]
        if self._fn is None:
            self._fn = self._build(xb, yb, sels)
        loss, out = self._fn(tf.constant(xb), tf.constant(yb), sels,
                             tf.constant(self.learning_rate, tf.float32))
        return float(loss), out.numpy()

    def _build(self, xb, yb, sels):
        model, loss_fn, opt = self._model, self._loss, self._opt
        init, non_trainable = self._init, self._non_trainable
        x_val, y_val = self._x_val, self._y_val
        # the number of steps is left open: one trace serves the short screening probe and
        # the search's longer confirmation probe (core.search's ``confirm_epochs``)
        specs = [tf.TensorSpec((None,) + xb.shape[1:], tf.as_dtype(xb.dtype)),
                 tf.TensorSpec((None,) + yb.shape[1:], tf.as_dtype(yb.dtype)),
                 [tf.TensorSpec(s.shape, tf.float32) for s in sels],
                 tf.TensorSpec((), tf.float32)]

        @tf.function(input_signature=specs, reduce_retracing=True)
        def probe(xb, yb, sels, lr):
            self.traces += 1   # runs only while tracing
            slots0 = [[tf.zeros_like(w) for _ in opt.slot_names] for w in init]

            def body(s, ws, slots):
                with tf.GradientTape() as tape:
                    tape.watch(ws)
                    out, _ = model.stateless_call(ws, non_trainable, xb[s], training=False)
                    value = loss_fn(yb[s], out)
                grads = tape.gradient(value, ws,
                                      unconnected_gradients=tf.UnconnectedGradients.ZERO)
                step = tf.cast(s, tf.float32)
                new_ws, new_slots = [], []
                for w, g, sl, sel in zip(ws, grads, slots, sels):
                    upd = opt.apply(w, g, dict(zip(opt.slot_names, sl)), lr, step)
                    new_ws.append(w + sel * (upd.weight - w))
                    new_slots.append([old + sel * (upd.slots[name] - old)
                                      for name, old in zip(opt.slot_names, sl)])
                return s + 1, new_ws, new_slots

            _, ws, _ = tf.while_loop(lambda s, ws, slots: s < tf.shape(xb)[0], body,
                                     (tf.constant(0), list(init), slots0))
            out, _ = model.stateless_call(ws, non_trainable, x_val, training=False)
            return loss_fn(y_val, out), out

        return probe


def accuracy(out: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of outputs against integer labels or one-hot targets (NaN for outputs
    of one unit, where no class argmax exists)."""
    if out.ndim != 2 or out.shape[1] < 2:
        return float("nan")
    labels = y if y.ndim == 1 else np.argmax(y, axis=-1)
    return float(np.mean(np.argmax(out, axis=-1) == labels))
