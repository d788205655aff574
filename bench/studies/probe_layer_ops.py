"""Probe: which TF ops of a Keras layer's training step the TFLite converter refuses.

For each layer kind, builds a tiny Keras 3 model around it, traces one SGD training step the
way tfpock does (``stateless_call`` under ``GradientTape``, fully static shapes), converts it
with TFLITE_BUILTINS only and prints a table of the op types the converter refuses.
Writes nothing. Run from the repository root:
``python -m bench.studies.probe_layer_ops [name-substring ...]``.
"""
from __future__ import annotations

import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from keras import layers  # noqa: E402

from bench.stock_recipe import quiet_stderr, refused_ops  # noqa: E402
from tfpock.testing.litert import convert_builtins_only  # noqa: E402

N_CLASSES = 3
BATCH = 2


def _head(x):
    """Flatten + Dense to logits, so every probe ends in the same loss."""
    if len(x.shape) > 2:
        x = layers.Flatten()(x)
    return layers.Dense(N_CLASSES)(x)


def _single(shape, *body):
    """Input -> Dense over the last axis -> body -> head. The leading Dense (a MatMul, which
    converts) makes the step need the gradient with respect to the body's *input*, as it
    would inside a real network."""
    def build():
        inp = keras.Input(shape, batch_size=BATCH)
        x = layers.Dense(shape[-1])(inp)
        for layer in body:
            x = layer(x)
        return keras.Model(inp, _head(x))
    return build


def _two_branch(shape, merge):
    def build():
        inp = keras.Input(shape, batch_size=BATCH)
        a = layers.Dense(4)(inp)
        b = layers.Dense(4)(inp)
        return keras.Model(inp, _head(merge([a, b])))
    return build


IMG = (9, 9, 3)
SEQ = (10, 3)
VEC = (6,)
PROBES = {
    "Dense": _single(VEC, layers.Dense(4)),
    "Conv1D": _single(SEQ, layers.Conv1D(4, 3)),
    "Conv2D 3x3 s1 valid": _single(IMG, layers.Conv2D(4, 3)),
    "Conv2D 3x3 s2 same": _single(IMG, layers.Conv2D(4, 3, strides=2, padding="same")),
    "Conv2D 3x3 dil2 same": _single(IMG, layers.Conv2D(4, 3, dilation_rate=2, padding="same")),
    "DepthwiseConv2D": _single(IMG, layers.DepthwiseConv2D(3, padding="same")),
    "SeparableConv2D": _single(IMG, layers.SeparableConv2D(4, 3)),
    "BatchNormalization(trainable=False)": _single(IMG, layers.BatchNormalization(trainable=False)),
    "BatchNormalization(trainable=True)": _single(IMG, layers.BatchNormalization()),
    "ReLU": _single(VEC, layers.ReLU()),
    "ReLU6": _single(VEC, layers.ReLU(max_value=6.0)),
    "LeakyReLU": _single(VEC, layers.LeakyReLU(0.2)),
    "ELU": _single(VEC, layers.ELU()),
    "SELU": _single(VEC, layers.Activation("selu")),
    "sigmoid": _single(VEC, layers.Activation("sigmoid")),
    "tanh": _single(VEC, layers.Activation("tanh")),
    "SiLU/swish": _single(VEC, layers.Activation("silu")),
    "GELU approximate=True": _single(
        VEC, layers.Lambda(lambda t: keras.activations.gelu(t, approximate=True))),
    "GELU approximate=False": _single(
        VEC, layers.Lambda(lambda t: keras.activations.gelu(t, approximate=False))),
    "softmax": _single(VEC, layers.Softmax()),
    "MaxPooling1D": _single(SEQ, layers.MaxPooling1D(2)),
    "MaxPooling2D 2x2": _single(IMG, layers.MaxPooling2D(2)),
    "MaxPooling2D 3x3 s2 same": _single(IMG, layers.MaxPooling2D(3, 2, padding="same")),
    "AveragePooling2D valid": _single(IMG, layers.AveragePooling2D(2)),
    "AveragePooling2D same": _single(IMG, layers.AveragePooling2D(3, 2, padding="same")),
    "GlobalAveragePooling1D": _single(SEQ, layers.GlobalAveragePooling1D()),
    "GlobalAveragePooling2D": _single(IMG, layers.GlobalAveragePooling2D()),
    "Flatten": _single(IMG, layers.Flatten()),
    "Dense on 3-D input": _single(SEQ, layers.Dense(5)),
    "Reshape": _single(IMG, layers.Reshape((27, 9))),
    "Dropout (training)": _single(VEC, layers.Dropout(0.5)),
    "Add": _two_branch(VEC, layers.Add()),
    "Multiply": _two_branch(VEC, layers.Multiply()),
    "Concatenate": _two_branch(VEC, layers.Concatenate()),
    "ZeroPadding2D": _single(IMG, layers.ZeroPadding2D(1)),
    "Rescaling": _single(IMG, layers.Rescaling(1 / 255.0, offset=-0.5)),
}


def training_step(model):
    """The step tfpock traces (kept identical to the brief) and its argument specs."""
    tv, ntv = model.trainable_variables, model.non_trainable_variables

    def step(x, y, *ws):
        t, n = list(ws[:len(tv)]), list(ws[len(tv):])
        with tf.GradientTape() as tape:
            tape.watch(t)
            out, _ = model.stateless_call(t, n, x, training=True)
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, out)
        grads = tape.gradient(loss, t)
        return [loss] + [w - 0.05 * g for w, g in zip(t, grads)]

    x_spec = tf.TensorSpec(model.input.shape, tf.float32)
    y_spec = tf.TensorSpec((BATCH,), tf.int32)
    w_specs = [tf.TensorSpec(v.shape, v.dtype) for v in tv + ntv]
    return step, [x_spec, y_spec, *w_specs]


def probe(build) -> tuple[list[str], list[str]]:
    """Returns (refused op types, op types of the traced graph that look suspicious)."""
    model = build()
    step, specs = training_step(model)
    graph_def = tf.function(step).get_concrete_function(*specs).graph.as_graph_def(add_shapes=True)
    ops = {n.op for n in graph_def.node}
    interesting = sorted(o for o in ops if re.search("Grad|Random|Erf|Concat|Offset", o))
    try:
        with quiet_stderr():
            convert_builtins_only(step, specs)
        return [], interesting
    except Exception as err:  # the converter's error lists the refused ops
        refused = refused_ops(err)
        return refused or [f"<error: {type(err).__name__}: {str(err)[:200]}>"], interesting


def main(argv: list[str]) -> None:
    filters = argv[1:]
    rows = []
    for name, build in PROBES.items():
        if filters and not any(f.lower() in name.lower() for f in filters):
            continue
        refused, seen = probe(build)
        rows.append((name, ", ".join(refused) or "-", ", ".join(seen) or "-"))
    width = max(len(r[0]) for r in rows)
    print(f"{'layer':<{width}}  refused by converter (builtins only)  |  related ops in graph")
    for name, refused, seen in rows:
        print(f"{name:<{width}}  {refused:<36}  |  {seen}")


if __name__ == "__main__":
    app.run(main)
