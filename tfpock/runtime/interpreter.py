"""Which TFLite interpreter the device has: ai-edge-litert first, then tflite-runtime.

Imports nothing from TensorFlow: on a Raspberry Pi the runtime is ``pip install
ai-edge-litert numpy`` (or tflite-runtime 2.14 with numpy < 2 on older images).
"""
from __future__ import annotations

import importlib

RUNTIMES = {
    "ai-edge-litert": "ai_edge_litert.interpreter",
    "tflite-runtime": "tflite_runtime.interpreter",
}


class RuntimeNotFound(ImportError):
    pass


def load_interpreter_class(runtime: str = "auto"):
    """Returns (runtime name, Interpreter class). ``runtime`` is "auto" or a RUNTIMES key."""
    if runtime != "auto" and runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose 'auto' or one of "
                         f"{', '.join(RUNTIMES)}")
    names = list(RUNTIMES) if runtime == "auto" else [runtime]
    errors = []
    for name in names:
        try:
            module = importlib.import_module(RUNTIMES[name])
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
            continue
        return name, module.Interpreter
    raise RuntimeNotFound("no TFLite runtime could be imported (" + "; ".join(errors) +
                          "); install one: pip install ai-edge-litert")
