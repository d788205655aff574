"""tfpock: compile Keras fine-tuning into builtin-only TFLite training models.

The host side (``optimize``, ``Program``, ``Scheme``) needs TensorFlow and is imported
lazily, so that ``tfpock.runtime`` (numpy and a TFLite interpreter only) works on a device
where TensorFlow is not installed.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "optimize": "tfpock.api",
    "Program": "tfpock.program",
    "Scheme": "tfpock.scheme",
    "TfpockError": "tfpock.errors",
    "SchemeError": "tfpock.errors",
    "UnsupportedModelError": "tfpock.errors",
    "ExportError": "tfpock.errors",
    "Budget": "tfpock.contribution",
    "search": "tfpock.contribution",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tfpock' has no attribute {name!r}")
