"""The least time a step's weight updates take on builtin TFLite, whatever the compiler does.

Why: the depth sweep (issue 11) says a target is out of reach when the step's
multiply-accumulates alone, run at the forward floor's speed, exceed it. That bound ignores
the other thing a training step must do and a forward need not: write its trained weights.
With TFLite's builtin resource variables an SGD update of a tensor ``w`` of ``B`` bytes is at
least ``READ_VARIABLE`` (``w`` copied out of the variable: B read, B written), ``SUB``
(``w - lr*g`` with the learning rate already sunk into ``g``'s smaller factor, as the compiled
step does: 2B read, B written) and ``ASSIGN_VARIABLE`` (copied back: B read, B written): about
7B of memory traffic, none of which a builtin op can fuse away (no builtin updates a variable
in place). At batch 1 deep layers hold many weights for few activations (ResNet-18 half's
3x3 256->256 kernel: 2.25 MB for 5.3 M MACs over a 3x3 map), so this traffic, not the
arithmetic, bounds the step.

Method: from a tfpock ``train`` file, the shapes of the values its ``ASSIGN_VARIABLE``
operators write (every trained weight, optimizer slot and BatchNorm statistic). Two models are
built from the Keras model: its constant-weight forward (the floor), and the same forward plus
a resource variable of each shape that the call assigns ``v - g`` (``g`` an input), in the same
invoke, so the update meets the caches the forward leaves, as in a step. Both run on
ai-edge-litert, one thread, XNNPACK as shipped, in interleaved rounds; the update's cost is
the difference of the two minima over rounds of each round's median (a lower bound wants the
quietest round). Alone, with hot caches (:func:`time_update`), they cost less: ResNet-18 half
@96, the last 4 layers, BN frozen, 0.27 ms alone, 0.65 ms in context (quiet,
``bench/results/2026-12-07-x86_64-avx512-2core-depth-reach.md``). Not counted: the
non-finite guard (off with ``nonfinite="apply"``) and the optimizer's arithmetic beyond SGD's
subtraction.

Run: ``python -m bench.update_floor TRAIN.tflite [MODEL.keras]`` prints milliseconds (alone;
with the Keras model, in context).
"""
from __future__ import annotations

import functools
import sys

import numpy as np

from bench import cli


def assigned_shapes(content: bytes, signature: str = "train") -> list[tuple[int, ...]]:
    """Shapes of the float values ``signature``'s ASSIGN_VARIABLE operators write."""
    from tfpock.tflite import model_file
    sg = model_file.read(content).subgraph(signature)
    return [sg.tensors[op.inputs[-1]].shape for op in sg.operators
            if op.name == "ASSIGN_VARIABLE" and sg.tensors[op.inputs[-1]].dtype == "FLOAT32"]


def _convert(fn, module) -> bytes:
    import tensorflow as tf
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()],
                                                                module)
    converter.experimental_enable_resource_variables = True
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def update_model(shapes: list[tuple[int, ...]], forward=None, x_spec=None) -> bytes:
    """A .tflite file whose one signature does ``v_i <- v_i - g_i`` for each shape, after
    ``forward(x)`` (a frozen concrete function) when one is given."""
    import tensorflow as tf
    module = tf.Module()
    module.vs = [tf.Variable(tf.ones(s)) for s in shapes]
    specs = [tf.TensorSpec(s, tf.float32, name=f"g{i}") for i, s in enumerate(shapes)]

    @tf.function(input_signature=([x_spec] if forward else []) + specs, autograph=False)
    def update(*inputs):
        grads = inputs[1:] if forward else inputs
        out = {"done": tf.ones([1])}
        if forward:
            y = forward(inputs[0])
            out = {"output": y["output"] if isinstance(y, dict) else y[0]}
        for v, g in zip(module.vs, grads):
            v.assign(v.read_value() - g)
        return out

    return _convert(update, module)


@functools.lru_cache(maxsize=4)
def forward_model(keras_file: str, batch: int):
    """The Keras model's constant-weight forward as a frozen concrete function, and its
    input spec (as ``bench.prepare.export_forward`` builds the floor); loaded and frozen once
    per file (the depth sweep asks for it once per scheme)."""
    import keras
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2)
    model = keras.models.load_model(keras_file)
    spec = tf.TensorSpec((batch, *model.inputs[0].shape[1:]), tf.float32, name="x")
    concrete = tf.function(lambda x: {"output": model(x, training=False)}).get_concrete_function(
        spec)
    return convert_variables_to_constants_v2(concrete), spec


def _runner(content: bytes):
    from ai_edge_litert.interpreter import Interpreter
    runner = Interpreter(model_content=content, num_threads=1).get_signature_runner()
    feeds = {name: np.full(d["shape"], 1e-3, np.float32)
             for name, d in runner.get_input_details().items()}
    for _ in range(20):
        runner(**feeds)
    return runner, feeds


def time_update(content: bytes, rounds: int = 3, reps: int = 200) -> float:
    """Milliseconds of one call of a model: the minimum over rounds of the median of reps."""
    runner, feeds = _runner(content)
    return min(cli.median_ms(lambda: runner(**feeds), reps, warm=0) for _ in range(rounds))


def update_floor_ms(train_content: bytes, rounds: int = 3) -> float:
    """The least time the updates of a tfpock ``train`` file take alone (hot caches)."""
    shapes = assigned_shapes(train_content)
    return time_update(update_model(shapes), rounds) if shapes else 0.0


def update_in_context_ms(train_content: bytes, keras_file: str, batch: int,
                         rounds: int = 5, reps: int = 60) -> dict:
    """``forward_ms``, ``with_update_ms`` and their difference ``update_ms`` (module
    docstring), the two models timed in interleaved rounds."""
    shapes = assigned_shapes(train_content)
    forward, spec = forward_model(keras_file, batch)
    runners = [_runner(update_model([], forward, spec)),
               _runner(update_model(shapes, forward, spec))]
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, (runner, feeds) in enumerate(runners):
            best[i] = min(best[i], cli.median_ms(lambda: runner(**feeds), reps, warm=0))
    return {"forward_ms": best[0], "with_update_ms": best[1],
            "update_ms": max(0.0, best[1] - best[0])}


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as f:
        content = f.read()
    if len(sys.argv) > 2:
        print(update_in_context_ms(content, sys.argv[2], 1))
    else:
        print(f"{update_floor_ms(content):.3f} ms")
