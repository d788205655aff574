"""The device side of tfpock: numpy and a TFLite interpreter, never TensorFlow."""
from tfpock.runtime.checkpoint import CheckpointError
from tfpock.runtime.interpreter import RuntimeNotFound
from tfpock.runtime.slices import SliceError
from tfpock.runtime.trainer import ModelFileError, Trainer
from tfpock.runtime.validate import InputError

__all__ = ["Trainer", "CheckpointError", "ModelFileError", "InputError", "RuntimeNotFound",
           "SliceError"]
