"""Errors tfpock raises for bad input: each names the layer, op or argument at fault."""


class TfpockError(ValueError):
    """Base class of tfpock's user-facing errors."""


class SchemeError(TfpockError):
    """An update scheme that cannot be applied to the model (unknown layer, empty, ...)."""


class UnsupportedModelError(TfpockError):
    """A layer, loss, optimizer or op that tfpock cannot compile (yet)."""


class ExportError(TfpockError):
    """The exported model would need ops TFLite lacks as builtins, or failed verification."""
