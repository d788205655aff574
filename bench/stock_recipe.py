"""Contender 4: TensorFlow's documented on-device training recipe, without tfpock.

The recipe (tensorflow.org/lite/examples/on_device_training): a ``tf.Module`` holding the
weights, ``@tf.function`` signatures ``train(x, y) -> loss`` and ``infer(x) -> output``,
``tf.saved_model.save``, ``TFLiteConverter.from_saved_model`` with
``experimental_enable_resource_variables``. The weights are plain ``tf.Variable``s made from
the Keras model's values (a Keras 3 model held by the module converts, but its variables are
never initialised in the .tflite); the forward pass is the Keras
model's ``stateless_call`` on them, the update plain SGD on the scheme's weights. The
recipe's ``save``/``restore`` signatures are left out: they need Flex (``Save``, ``Restore``)
on every model and would hide the gradient ops this report is about.

First with TFLITE_BUILTINS only; if the converter refuses, the refused op names are parsed
from its error, then the model is converted with SELECT_TF_OPS to show whether a runtime here
can run it (the caller times or records the failure in a worker process).
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile

import keras
import tensorflow as tf

_REFUSED = re.compile(r"(?:TF Select|Custom) ops: ([\w, ]+)")


@contextlib.contextmanager
def quiet_stderr():
    """The converter's MLIR diagnostics go to file descriptor 2; keep the progress readable."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def refused_ops(error: BaseException) -> list[str]:
    """Op names the converter lists as needing TF Select (or custom ops) in its error."""
    return sorted({op.strip() for group in _REFUSED.findall(str(error))
                   for op in group.split(",") if op.strip()})


def build_module(model: keras.Model, trained_paths: list[str], batch: int,
                 learning_rate: float = 0.01) -> tf.Module:
    """The recipe's module for ``model`` training ``trained_paths`` at a static batch."""
    module = tf.Module()
    module.tv = [tf.Variable(v.numpy(), name=f"t{i}") for i, v in
                 enumerate(model.trainable_variables)]
    module.ntv = [tf.Variable(v.numpy(), trainable=False, name=f"n{i}") for i, v in
                  enumerate(model.non_trainable_variables)]
    chosen = set(trained_paths)
    trained = [mv for kv, mv in zip(model.trainable_variables, module.tv) if kv.path in chosen]
    if len(trained) != len(chosen):
        raise ValueError(f"{len(chosen) - len(trained)} of the trained paths are not "
                         f"variables of {model.name!r}")
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x_spec = tf.TensorSpec((batch, *model.inputs[0].shape[1:]), tf.float32, name="x")
    y_spec = tf.TensorSpec((batch,), tf.int32, name="y")

    def forward(x):
        out, _ = model.stateless_call([v.read_value() for v in module.tv],
                                      [v.read_value() for v in module.ntv], x, training=True)
        return out

    @tf.function(input_signature=[x_spec, y_spec])
    def train(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, forward(x))
        for var, grad in zip(trained, tape.gradient(loss, trained)):
            var.assign_sub(learning_rate * grad)
        return {"loss": loss}

    @tf.function(input_signature=[x_spec])
    def infer(x):
        return {"output": forward(x)}

    module.train, module.infer = train, infer
    return module


def _convert_saved(folder: str, select_tf_ops: bool) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(folder,
                                                         signature_keys=["train", "infer"])
    converter.experimental_enable_resource_variables = True
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS] + (
        [tf.lite.OpsSet.SELECT_TF_OPS] if select_tf_ops else [])
    with quiet_stderr():
        return converter.convert()


def try_convert(model: keras.Model, trained_paths: list[str], batch: int) -> dict:
    """What the recipe gives for this model and scheme: ``{"builtins_only": bool,
    "flex_ops": [...], "content": bytes or None, "error": str}``; ``content`` is the builtins
    model, else the SELECT_TF_OPS one (the SavedModel is written once for both)."""
    module = build_module(model, trained_paths, batch)
    with tempfile.TemporaryDirectory() as folder:
        with quiet_stderr():
            tf.saved_model.save(module, folder, signatures={
                "train": module.train.get_concrete_function(),
                "infer": module.infer.get_concrete_function()})
        try:
            return {"builtins_only": True, "flex_ops": [],
                    "content": _convert_saved(folder, False), "error": ""}
        except Exception as exc:  # noqa: BLE001 - the converter's error lists the ops
            ops = refused_ops(exc)
            result = {"builtins_only": False, "flex_ops": ops,
                      "error": "" if ops else f"{type(exc).__name__}: {str(exc)[:300]}"}
        try:
            result["content"] = _convert_saved(folder, True)
        except Exception as exc:  # noqa: BLE001 - recorded in the report
            result["content"] = None
            result["error"] += (f" SELECT_TF_OPS conversion failed: {type(exc).__name__}: "
                                f"{str(exc)[:300]}")
    return result
