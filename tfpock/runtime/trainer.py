"""Trainer: runs a tfpock training model on the device with numpy and a TFLite interpreter.

The model's ``metadata`` signature says how its weights are named and what batches it takes,
so the trainer needs nothing but the .tflite file.
"""
from __future__ import annotations

import json
import os

import numpy as np

from tfpock.runtime import checkpoint
from tfpock.runtime.interpreter import load_interpreter_class
from tfpock.runtime.validate import check_batch

FORMAT = "tfpock-training-model/1"
SIGNATURES = ("train", "infer", "weights", "load", "metadata")


class ModelFileError(ValueError):
    """A file that is not a tfpock training model."""


class Trainer:
    """Trains a tfpock model on a TFLite runtime.

    Example:
        >>> t = Trainer("model.tflite")
        >>> t.train(x, y)["loss"]
        >>> t.save("ckpt.npz")
    """

    def __init__(self, model_path: str | os.PathLike, runtime: str = "auto",
                 num_threads: int | None = None):
        model_path = os.fspath(model_path)
        if not os.path.exists(model_path):
            raise ModelFileError(f"model file {model_path!r} does not exist")
        self.runtime, interpreter_cls = load_interpreter_class(runtime)
        try:
            self._interpreter = interpreter_cls(model_path=model_path, num_threads=num_threads)
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{model_path!r} is not a loadable TFLite model: {exc}") from exc
        signatures = self._interpreter.get_signature_list()
        missing = [s for s in SIGNATURES if s not in signatures]
        if missing:
            raise ModelFileError(f"{model_path!r} is not a tfpock training model: it lacks "
                                 f"signatures {missing} (has {sorted(signatures)})")
        self._runners = {s: self._interpreter.get_signature_runner(s) for s in SIGNATURES}
        raw = self._runners["metadata"]()["json"]
        self.metadata = json.loads(raw.item() if hasattr(raw, "item") else raw)
        if self.metadata.get("format") != FORMAT:
            raise ModelFileError(f"{model_path!r} has format {self.metadata.get('format')!r}; "
                                 f"this runtime reads {FORMAT!r}")
        self._weights = self.metadata["weights"]
        self.path = model_path

    def _spec(self, key):
        spec = self.metadata[key]
        return tuple(spec["shape"]), np.dtype(spec["dtype"])

    def train(self, x, y) -> dict[str, float]:
        """One training step on the batch; returns {"loss": float}."""
        x = check_batch("x", x, *self._spec("x"), signature="Trainer.train")
        y = check_batch("y", y, *self._spec("y"), signature="Trainer.train")
        out = self._runners["train"](x=x, y=y)
        return {"loss": float(out["loss"])}

    def infer(self, x) -> np.ndarray:
        x = check_batch("x", x, *self._spec("x"), signature="Trainer.infer")
        return self._runners["infer"](x=x)["output"]

    def weights(self) -> dict[str, np.ndarray]:
        """The trained weights, keyed by Keras variable path."""
        out = self._runners["weights"]()
        return {w["path"]: np.array(out[w["key"]]) for w in self._weights}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        expected = {w["path"] for w in self._weights}
        if set(weights) != expected:
            raise checkpoint.CheckpointError(
                f"set_weights needs exactly {sorted(expected)}, got {sorted(weights)}")
        self._runners["load"](**{w["key"]: np.ascontiguousarray(weights[w["path"]])
                                 for w in self._weights})

    def save(self, path: str | os.PathLike) -> str:
        """Writes the trained weights to an .npz checkpoint, atomically."""
        return checkpoint.save(path, self.weights())

    def restore(self, path: str | os.PathLike) -> None:
        """Loads a checkpoint written by :meth:`save` (or ``Program``); checks it first, so a
        bad file changes nothing."""
        expected = {w["path"]: (tuple(w["shape"]), np.dtype(w["dtype"])) for w in self._weights}
        self.set_weights(checkpoint.load(path, expected))
