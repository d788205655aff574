"""Memory per signature of any .tflite: graph timeline peak, measured arena (also tfpock-memory).

    tfpock memory MODEL.tflite [--signature train ...] [--measure] [--timeline] [--top N]
        [--json PATH] [--runtime auto|ai-edge-litert|tflite-runtime] [--threads N]

The same command as ``tfpock-memory`` (``tfpock/tflite/memory_cli.py``, whose docstring
explains each figure); no TensorFlow.

Examples:
    tfpock memory model.tflite --signature train --top 5
    tfpock memory model.tflite --measure --json mem.json
"""
from __future__ import annotations

import importlib

_CLI = "tfpock.tflite.memory_cli"


def define_flags() -> None:
    """memory_cli defines its flags when it is imported; they are listed under its name."""
    importlib.import_module(_CLI)


def main(args: list[str]) -> int:
    return importlib.import_module(_CLI).main(["tfpock memory", *args])
