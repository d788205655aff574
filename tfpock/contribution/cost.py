"""Exact cost of a scheme: compile, export, read the file's memory timeline, time a step.

Training memory = ``memory.timeline(file, "train").peak_bytes`` (live activations of the
exported ``train`` signature: the least any arena plan for its operator order needs) + the
bytes of the exported model's variables (trained weights, optimizer state, BatchNorm
statistics; the frozen weights are constants of the file, read-only, not counted, as
PockEngine counts training memory; a partial-channel weight's variable is its k trained
channels, :func:`tfpock.runtime.slices.stored_shape`, though its metadata ``shape`` is
whole). Step time = median of one-thread ``Trainer.train`` calls on ai-edge-litert
(``bench.cli.median_ms``'s loop, here in-process).
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time

import keras
import numpy as np

from tfpock.runtime.slices import stored_shape
from tfpock.scheme import Scheme


@dataclasses.dataclass(frozen=True)
class Cost:
    activation_bytes: int    # peak live activations of the exported train signature
    variable_bytes: int      # bytes of every variable of the exported model
    step_ms: float | None    # median one-thread train step on the device runtime (None: not timed)

    @property
    def memory_bytes(self) -> int:
        return self.activation_bytes + self.variable_bytes

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "memory_bytes": self.memory_bytes}


def exact_cost(model: keras.Model, scheme: Scheme, loss, optimizer, batch_size: int,
               time_steps: int = 0, x=None, y=None) -> Cost:
    """Compiles ``scheme`` (tfpock.optimize), exports it, and measures it (module docstring).
    ``time_steps`` > 0 also times that many ``train`` calls on ai-edge-litert, one thread,
    after two warm-up calls, on the batch ``x[:batch_size], y[:batch_size]``."""
    from tfpock.api import optimize
    program = optimize(model, loss=loss, optimizer=optimizer, scheme=scheme,
                       batch_size=batch_size)
    return program_cost(program, time_steps, x, y)


def layout_variables(model: keras.Model, scheme: Scheme, optimizer) -> list[dict]:
    """The variables ``scheme``'s exported model holds, as its metadata lists them (name,
    layer, shape, dtype: what :func:`program_cost` counts), from the compiler's own parameter
    layout (``tfpock.tracing.param_layout``, which decides them) without tracing: a few
    milliseconds instead of a compile (tests/search/test_estimate.py checks it against the
    compiled metadata). Shapes are as the file stores them: a partial-channel weight and its
    slots are their k trained channels (the frozen channels are constants), the count
    :func:`program_cost` makes with :func:`tfpock.runtime.slices.stored_shape`."""
    from tfpock.optimizers import compile_optimizer
    from tfpock.tracing import param_layout
    layout = param_layout(model, scheme.resolve(model), compile_optimizer(optimizer))
    weights = {w.path: w for w in layout.weights}
    out = []
    for v in layout.variables:
        w = weights.get(v.key)
        out.append({"name": v.key, "kind": v.kind, "layer": w.layer if w is not None else "",
                    "shape": [int(d) for d in v.value.shape], "dtype": str(v.value.dtype)})
    return out


def program_cost(program, time_steps: int = 0, x=None, y=None) -> Cost:
    """The :class:`Cost` of a compiled ``tfpock.Program`` (see :func:`exact_cost`)."""
    from tfpock.tflite import memory, model_file
    batch_size = program.metadata["x"]["shape"][0]
    content = program.to_tflite()
    parsed = model_file.read(content)
    activations = memory.timeline(parsed, "train").peak_bytes
    variables = sum(int(np.prod(stored_shape(v), dtype=np.int64)) * np.dtype(v["dtype"]).itemsize
                    for v in program.metadata["variables"])
    step = None
    if time_steps > 0:
        step = _time_step(content, x[:batch_size], y[:batch_size], time_steps)
    return Cost(int(activations), int(variables), step)


def _time_step(content: bytes, x, y, steps: int) -> float:
    from tfpock.runtime import Trainer
    with tempfile.TemporaryDirectory(prefix="tfpock-search-") as tmp:
        path = os.path.join(tmp, "model.tflite")
        with open(path, "wb") as f:
            f.write(content)
        trainer = Trainer(path, runtime="ai-edge-litert", num_threads=1)
        for _ in range(2):
            trainer.train(x, y)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            trainer.train(x, y)
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)
