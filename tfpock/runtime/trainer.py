"""Trainer: runs a tfpock training model on the device with numpy and a TFLite interpreter.

The model's ``metadata`` signature says how its variables are named and what batches it
takes, so the trainer needs nothing but the .tflite file.
"""
from __future__ import annotations

import json
import os

import numpy as np

from tfpock.runtime import checkpoint
from tfpock.runtime.interpreter import load_interpreter_class
from tfpock.runtime.validate import InputError, check_batch

FORMAT = "tfpock-training-model/4"   # /4: train returns "finite" (a non-finite guard)
SIGNATURES = ("train", "infer", "weights", "load", "metadata")


class ModelFileError(ValueError):
    """A file that is not a tfpock training model."""


class Trainer:
    """Trains a tfpock model on a TFLite runtime.

    Example:
        >>> t = Trainer("model.tflite")
        >>> t.train(x, y)["loss"]
        >>> t.train(x, y, learning_rate=0.01)   # follow a schedule
        >>> t.save("ckpt.npz")
    """

    def __init__(self, model_path: str | os.PathLike, runtime: str = "auto",
                 num_threads: int | None = None, **interpreter_options):
        """``interpreter_options`` go to the runtime's Interpreter as they are, e.g.
        ``experimental_disable_delegate_clustering=True`` on ai-edge-litert (which lets a
        model reordered for memory keep its order under XNNPACK)."""
        model_path = os.fspath(model_path)
        if not os.path.exists(model_path):
            raise ModelFileError(f"model file {model_path!r} does not exist")
        self.runtime, interpreter_cls = load_interpreter_class(runtime)
        try:
            self._interpreter = interpreter_cls(model_path=model_path, num_threads=num_threads,
                                                **interpreter_options)
        except TypeError as exc:
            raise ValueError(f"{self.runtime} does not take interpreter options "
                             f"{sorted(interpreter_options)}: {exc}") from exc
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
        self._variables = self.metadata["variables"]
        self.path = model_path

    def _spec(self, key):
        spec = self.metadata[key]
        return tuple(spec["shape"]), np.dtype(spec["dtype"])

    @property
    def learning_rate(self) -> float:
        """The optimizer's learning rate, used when ``train`` is given none."""
        return float(self.metadata["learning_rate"])

    def train(self, x, y, learning_rate: float | None = None) -> dict:
        """One training step on the batch. Returns ``{"loss": float, "finite": bool,
        "applied": bool}``: ``finite`` says whether the loss and every value the step wrote
        are finite; a step that is not finite leaves the weights and optimizer state as they
        were (``applied`` False) unless the model was compiled with ``nonfinite="apply"``."""
        x = check_batch("x", x, *self._spec("x"), signature="Trainer.train")
        y = check_batch("y", y, *self._spec("y"), signature="Trainer.train")
        lr = self.learning_rate if learning_rate is None else learning_rate
        if not np.isfinite(lr) or lr < 0:
            raise InputError(f"Trainer.train: learning_rate must be finite and >= 0, got {lr}")
        out = self._runners["train"](x=x, y=y, learning_rate=np.array([lr], np.float32))
        finite = bool(np.asarray(out["finite"]).reshape(-1)[0])
        return {"loss": float(out["loss"]), "finite": finite,
                "applied": finite or self.metadata.get("nonfinite") == "apply"}

    def infer(self, x) -> np.ndarray:
        x = check_batch("x", x, *self._spec("x"), signature="Trainer.infer")
        return self._runners["infer"](x=x)["output"]

    def state(self) -> dict[str, np.ndarray]:
        """Every variable of the model (what a checkpoint holds): trained weights (whole,
        for partial-channel ones), BatchNorm statistics and optimizer state."""
        out = self._runners["weights"]()
        return {v["name"]: np.array(out[v["key"]]) for v in self._variables}

    def weights(self) -> dict[str, np.ndarray]:
        """The model weights the training changes, keyed by Keras variable path."""
        kinds = {v["name"]: v["kind"] for v in self._variables}
        return {k: v for k, v in self.state().items() if kinds[k] != "optimizer"}

    def set_state(self, values: dict[str, np.ndarray]) -> None:
        expected = {v["name"] for v in self._variables}
        if set(values) != expected:
            raise checkpoint.CheckpointError(
                f"set_state needs exactly {sorted(expected)}, got {sorted(values)}")
        self._runners["load"](**{v["key"]: np.ascontiguousarray(values[v["name"]])
                                 for v in self._variables})

    def save(self, path: str | os.PathLike) -> str:
        """Writes every variable to an .npz checkpoint keyed by name, atomically."""
        return checkpoint.save(path, self.state())

    def restore(self, path: str | os.PathLike) -> None:
        """Loads a checkpoint written by :meth:`save`; checks it first, so a bad file changes
        nothing."""
        expected = {v["name"]: (tuple(v["shape"]), np.dtype(v["dtype"])) for v in self._variables}
        self.set_state(checkpoint.load(path, expected))
