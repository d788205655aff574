"""Test and benchmark helpers: convert a TF function with builtins only and run it on
ai-edge-litert."""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter


def convert_builtins_only(fn, specs: list[tf.TensorSpec]) -> bytes:
    """Converts ``fn`` (traced at ``specs``) to TFLite with TFLITE_BUILTINS only, with one
    signature ``serving_default`` whose inputs are ``in00, in01, ...`` and outputs
    ``out00, out01, ...``. Raises the converter's error if any op would need Flex."""

    def wrapped(*args):
        out = fn(*args)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        return {f"out{i:02d}": t for i, t in enumerate(out)}

    module = tf.Module()
    named = [tf.TensorSpec(s.shape, s.dtype, name=f"in{i:02d}") for i, s in enumerate(specs)]
    module.f = tf.function(wrapped, input_signature=named, autograph=False)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.f.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def run_on_litert(fn, *arrays: np.ndarray) -> list[np.ndarray]:
    """Runs ``fn(*arrays)`` through the TFLite converter (builtins only) and ai-edge-litert;
    returns the outputs in the order ``fn`` returned them."""
    specs = [tf.TensorSpec(a.shape, tf.as_dtype(a.dtype)) for a in arrays]
    interpreter = Interpreter(model_content=convert_builtins_only(fn, specs))
    runner = interpreter.get_signature_runner("serving_default")
    outputs = runner(**{f"in{i:02d}": a for i, a in enumerate(arrays)})
    return [outputs[k] for k in sorted(outputs)]
