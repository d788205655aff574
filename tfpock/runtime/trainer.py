"""Trainer: runs a tfpock training model on the device with numpy and a TFLite interpreter.

The model's ``metadata`` signature says how its variables are named and what batches it
takes, so the trainer needs nothing but the .tflite file.
"""
from __future__ import annotations

import json
import os

import numpy as np

from tfpock.runtime import checkpoint, slices
from tfpock.runtime import fit as _fit
from tfpock.runtime import generate as _generate
from tfpock.runtime.interpreter import load_interpreter_class
from tfpock.runtime.validate import (InputError, check_batch, check_inputs, check_labels,
                                     sample_weights)

FORMAT = "tfpock-training-model/5"   # /5: a partial-channel weight's "slice" in the metadata
READS = ("tfpock-training-model/4", FORMAT)   # /4: train returns "finite" (non-finite guard)
SIGNATURES = ("train", "infer", "weights", "load", "metadata")
OPTIONAL_SIGNATURES = ("merged",    # models with LoRA layers: Trainer.merged_weights
                       "decode")    # causal LMs compiled with kv_cache=True: generate


def step_result(loss, finite, nonfinite: str | None) -> dict:
    """What a train step reports, on the device and the host alike: the loss, whether it and
    every value the step wrote were finite, and whether the step changed the state (a step
    that is not finite is skipped unless the model was compiled with ``nonfinite="apply"``)."""
    finite = bool(np.asarray(finite).reshape(-1)[0])
    return {"loss": float(np.asarray(loss)), "finite": finite,
            "applied": finite or nonfinite == "apply"}


def merge_lora(weights: dict, merged: dict, lora: list[dict]) -> dict[str, np.ndarray]:
    """``weights`` without the LoRA factors, plus each merged kernel (``merged``: the
    ``merged`` signature's outputs, keyed as the metadata's ``lora`` says)."""
    factors = {m[k] for m in lora for k in ("a", "b")}
    out = {k: v for k, v in weights.items() if k not in factors}
    out.update({m["kernel"]: np.array(merged[m["key"]]) for m in lora})
    return out


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
        if not os.path.isfile(model_path):
            raise ModelFileError(f"model file {model_path!r} is not a regular file")
        self.runtime, interpreter_cls = load_interpreter_class(runtime)
        try:
            self._interpreter = interpreter_cls(model_path=model_path, num_threads=num_threads,
                                                **interpreter_options)
        except TypeError as exc:
            raise ValueError(f"{self.runtime} does not take interpreter options "
                             f"{sorted(interpreter_options)}: {exc}") from exc
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{model_path!r} is not a loadable TFLite model: {exc}") from exc
        try:
            signatures = self._interpreter.get_signature_list()
            missing = [s for s in SIGNATURES if s not in signatures]
            if missing:
                raise ModelFileError(f"{model_path!r} is not a tfpock training model: it lacks "
                                     f"signatures {missing} (has {sorted(signatures)})")
            present = SIGNATURES + tuple(s for s in OPTIONAL_SIGNATURES if s in signatures)
            self._runners = {s: _Guarded(self._interpreter.get_signature_runner(s), s,
                                         model_path) for s in present}
            raw = self._runners["metadata"]()["json"]
        except (ValueError, RuntimeError, KeyError) as exc:
            if isinstance(exc, ModelFileError):
                raise
            raise ModelFileError(f"{model_path!r} is not a usable tfpock training model: the "
                                 f"interpreter refused its signatures: {exc}") from exc
        self.metadata = _read_metadata(model_path, raw)
        _check_signatures(model_path, self.metadata, self._runners)
        for runner in self._runners.values():
            runner.prepare()
        self._variables = self.metadata["variables"]
        self._slice = slices.layout(self.metadata)
        self.path = model_path
        self.fingerprint = checkpoint.fingerprint(self.metadata)
        """sha256 of what identifies the model's trainable state (``checkpoint.fingerprint``):
        a checkpoint restores only into a model with the same one."""

    def _spec(self, key):
        spec = self.metadata[key]
        return tuple(spec["shape"]), np.dtype(spec["dtype"])

    @property
    def input_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Input name -> (shape, dtype) of the model's inputs, in signature order (``{"x":
        ...}`` for a model with one input)."""
        return _input_specs(self.metadata)

    @property
    def learning_rate(self) -> float:
        """The optimizer's learning rate, used when ``train`` is given none."""
        return float(self.metadata["learning_rate"])

    def train(self, x, y, sample_weight=None, learning_rate: float | None = None) -> dict:
        """One training step on the batch. ``x``: an array, or for a model with several
        inputs a dict keyed by their names (:attr:`input_specs`); ``sample_weight``: the
        loss's weight of each label (models compiled with ``sample_weight=True``; None
        weighs every label 1), e.g. a padding mask. Returns ``{"loss": float, "finite":
        bool, "applied": bool}``: ``finite`` says whether the loss and every value the step
        wrote are finite; a step that is not finite leaves the weights and optimizer state as
        they were (``applied`` False) unless the model was compiled with
        ``nonfinite="apply"``."""
        inputs = check_inputs(x, self.input_specs, "Trainer.train")
        y = check_labels(check_batch("y", y, *self._spec("y"), signature="Trainer.train"),
                         self.metadata["output"]["shape"][-1], "Trainer.train")
        sw = self.metadata.get("sample_weight")
        weights = sample_weights(sample_weight, None if sw is None else tuple(sw["shape"]),
                                 "Trainer.train")
        if weights:
            inputs["sample_weight"] = weights[0]
        lr = self.learning_rate if learning_rate is None else learning_rate
        if not np.isfinite(lr) or lr < 0:
            raise InputError(f"Trainer.train: learning_rate must be finite and >= 0, got {lr}")
        out = self._runners["train"](**inputs, y=y, learning_rate=np.array([lr], np.float32))
        return step_result(out["loss"], out["finite"], self.metadata.get("nonfinite"))

    def infer(self, x) -> np.ndarray:
        """The model's output on ``x`` (an array, or a dict by input name, as for
        :meth:`train`)."""
        return self._runners["infer"](**check_inputs(x, self.input_specs,
                                                     "Trainer.infer"))["output"]

    def fit(self, x, y, epochs: int = 1, **options) -> dict[str, list]:
        """Keras-like training over any number of rows, with callbacks; returns the history.
        The options and the rule for a final partial batch: :func:`tfpock.runtime.fit.fit`."""
        return _fit.fit(self, x, y, epochs=epochs, **options)

    def evaluate(self, x, y, batch_size: int | None = None, sample_weight=None) -> dict:
        """``{"loss", "accuracy"}`` over every row, in inference mode, weighted per row or
        label with ``sample_weight`` (:func:`tfpock.runtime.fit.evaluate`)."""
        return _fit.evaluate(self, x, y, batch_size, sample_weight)

    def predict(self, x, batch_size: int | None = None):
        """``infer`` over every row of ``x``, the last batch padded and cut back."""
        return _fit.predict(self, x, batch_size)

    def generate(self, prompt_ids, max_new_tokens: int, temperature: float = 0.0,
                 seed: int | None = None, **options) -> np.ndarray:
        """A causal language model's continuation of ``prompt_ids`` with ``infer``, or with
        ``decode`` and a key/value cache when the file has it (``kv_cache=False``: ``infer``
        anyway): greedy at temperature 0, else sampled (``seed``; ``top_k``,
        ``stop_token_ids``, ``pad_id``): :func:`tfpock.runtime.generate.generate`."""
        return _generate.generate(self, prompt_ids, max_new_tokens, temperature, seed,
                                  **options)

    @property
    def kv_cache(self) -> dict | None:
        """The ``decode`` signature's layout (metadata ``decode``: its inputs, logits and the
        cache's length in positions) in a file compiled with ``kv_cache=True``, else None."""
        return self.metadata.get("decode") if "decode" in self._runners else None

    def decode(self, token_ids, cache, cache_update_index: int):
        """One key/value-cache step (:mod:`tfpock.decode`): the logits of ``token_ids``
        ``[batch, window]`` at positions ``cache_update_index ..`` and the cache with their
        keys and values written in; refuses a file without the ``decode`` signature."""
        layout = self.kv_cache
        if layout is None:
            raise ModelFileError(f"{self.path!r} has no decode signature; compile with "
                                 f"tfpock.optimize(..., kv_cache=True)")
        specs = {s["name"]: (tuple(s["shape"]), np.dtype(s["dtype"])) for s in layout["inputs"]}
        inputs = {name: check_batch(name, value, *specs[name], signature="Trainer.decode")
                  for name, value in (("token_ids", token_ids), ("cache", cache))}
        index = int(cache_update_index)
        window = specs["token_ids"][0][1]
        if not 0 <= index <= layout["length"] - window:
            raise InputError(f"Trainer.decode: cache_update_index {index} is outside [0, "
                             f"{layout['length'] - window}]: the cache holds "
                             f"{layout['length']} positions")
        out = self._runners["decode"](**inputs,
                                      cache_update_index=np.array([index], np.int32))
        return out["logits"], out["cache"]

    def state(self) -> dict[str, np.ndarray]:
        """Every variable of the model (what a checkpoint holds): trained weights (whole,
        for partial-channel ones), BatchNorm statistics and optimizer state."""
        out = self._runners["weights"]()
        return {v["name"]: np.array(out[v["key"]]) for v in self._variables}

    def weights(self) -> dict[str, np.ndarray]:
        """The model weights the training changes, keyed by Keras variable path."""
        kinds = {v["name"]: v["kind"] for v in self._variables}
        return {k: v for k, v in self.state().items() if kinds[k] != "optimizer"}

    def merged_weights(self) -> dict[str, np.ndarray]:
        """The weights training changes, keyed by Keras variable path, with every LoRA layer's
        factors merged into its kernel (``kernel + scale * A @ B``, as Keras computes it, by
        the model's ``merged`` signature): what loads into the model *without* LoRA,
        ``for v in model.weights: v.assign(merged[v.path]) if v.path in merged``."""
        if "merged" not in self._runners:
            raise ModelFileError(f"{self.path!r} has no LoRA layers to merge")
        return merge_lora(self.weights(), self._runners["merged"](), self.metadata["lora"])

    def set_state(self, values: dict[str, np.ndarray]) -> None:
        """Sets every variable (the names of :meth:`state`); checks names, shapes, dtypes and
        that the values are finite before anything is set."""
        expected = {v["name"] for v in self._variables}
        if set(values) != expected:
            raise checkpoint.CheckpointError(
                f"set_state needs exactly {sorted(expected)}, got {sorted(values)}")
        arrays = {}
        for v in self._variables:
            array = check_batch(v["name"], values[v["name"]], tuple(v["shape"]),
                                np.dtype(v["dtype"]), signature="Trainer.set_state")
            if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
                raise InputError(f"Trainer.set_state: {v['name']} holds NaN or inf")
            arrays[v["key"]] = array
        self._runners["load"](**arrays)

    def trained_slice(self) -> dict[str, np.ndarray]:
        """What training changes, and only that: the weights and BatchNorm statistics, a
        partial-channel weight cut to its trained channels (what a federated client ships;
        :mod:`tfpock.runtime.slices`)."""
        return slices.extract(self.state(), self._slice)

    def set_trained_slice(self, values: dict[str, np.ndarray]) -> None:
        """Writes a trained slice (the names, shapes and dtypes of :meth:`trained_slice`,
        finite); anything else raises :class:`~tfpock.runtime.slices.SliceError` before any
        variable is set. Frozen channels and optimizer state stay as they are."""
        checked = slices.check(values, self._slice, "Trainer.set_trained_slice")
        self.set_state(slices.merge(self.state(), checked, self._slice))

    def save(self, path: str | os.PathLike) -> str:
        """Writes every variable to an .npz checkpoint keyed by name (format 2: with the
        model's fingerprint and a checksum, see :mod:`tfpock.runtime.checkpoint`), atomically:
        killed at any moment, it leaves the previous checkpoint under ``path`` or this one."""
        return checkpoint.save(path, self.state(), self.fingerprint,
                               checkpoint.describe(self.metadata))

    def restore(self, path: str | os.PathLike, accept_v1: bool = False) -> None:
        """Loads a checkpoint written by :meth:`save`; checks it first (readable, this model's
        fingerprint, checksum, names, shapes, dtypes, finite), so a bad file changes nothing
        and raises :class:`~tfpock.runtime.checkpoint.CheckpointError` naming the problem.
        Format-1 checkpoints (no checksum) are refused unless ``accept_v1=True``."""
        expected = {v["name"]: (tuple(v["shape"]), np.dtype(v["dtype"])) for v in self._variables}
        self.set_state(checkpoint.load(path, expected, self.fingerprint,
                                       checkpoint.describe(self.metadata), accept_v1=accept_v1))


class _Guarded:
    """A signature runner whose interpreter errors (``RuntimeError``: a damaged model's
    kernels refusing to prepare or run) become a :class:`ModelFileError` naming the file and
    the signature; everything else is the runner's."""

    def __init__(self, runner, signature: str, model_path: str):
        self._runner, self._signature, self._model_path = runner, signature, model_path

    def __call__(self, **inputs):
        try:
            return self._runner(**inputs)
        except RuntimeError as exc:
            raise self._error(exc) from exc

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def prepare(self) -> None:
        """Allocates the signature's tensors now (the runner would at its first call), so a
        damaged model is refused when it is loaded, not at its first step. Uses the runner's
        private wrapper and subgraph index (the same names in ai-edge-litert and tflite-runtime
        2.14; no public call allocates one signature); where they are missing, the first call
        finds the damage instead. Costs nothing extra: the arenas are the first call's."""
        wrapper = getattr(self._runner, "_interpreter_wrapper", None)
        index = getattr(self._runner, "_subgraph_index", None)
        if wrapper is None or index is None:
            return
        try:
            wrapper.AllocateTensors(index)
        except (RuntimeError, ValueError) as exc:
            raise self._error(exc) from exc

    def _error(self, exc) -> "ModelFileError":
        return ModelFileError(f"{self._model_path!r}: the interpreter cannot run signature "
                              f"{self._signature!r}; the file is damaged or not a tfpock model: "
                              f"{str(exc).strip()}")


def _read_metadata(model_path: str, raw) -> dict:
    """The ``metadata`` signature's JSON, checked for what the trainer reads from it."""
    try:
        raw = raw.item() if hasattr(raw, "item") else raw
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        metadata = json.loads(text)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ModelFileError(f"{model_path!r}: its metadata is not JSON ({exc}); it is not a "
                             f"tfpock training model or it is damaged") from exc
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{model_path!r}: its metadata is {type(metadata).__name__}, not a "
                             f"JSON object")
    if metadata.get("format") not in READS:
        raise ModelFileError(f"{model_path!r} has format {metadata.get('format')!r}; "
                             f"this runtime reads {' and '.join(map(repr, READS))}")
    problems = []
    # "inputs" lists the model's inputs by name; a single-input model's is "x", which is
    # also its own key (what readers of the format before several inputs read)
    inputs = metadata.get("inputs")
    if inputs is not None and not (isinstance(inputs, list) and inputs and all(
            _is_spec(s) and isinstance(s.get("name"), str) for s in inputs)):
        problems.append("'inputs' is not a non-empty list of named {shape, dtype} specs")
    elif inputs is None or [s["name"] for s in inputs] == ["x"]:
        if not _is_spec(metadata.get("x")):
            problems.append("'x' is not a {shape, dtype} spec")
        elif inputs is not None and {**inputs[0], "name": None} != {**metadata["x"],
                                                                  "name": None}:
            problems.append("'x' and 'inputs' disagree")
    for key in ("y", "output") + (("sample_weight",) if metadata.get("sample_weight") is not None
                                  else ()):
        if not _is_spec(metadata.get(key)):
            problems.append(f"{key!r} is not a {{shape, dtype}} spec")
    variables = metadata.get("variables")
    if not isinstance(variables, list) or not variables:
        problems.append("'variables' is not a non-empty list")
    else:
        for i, v in enumerate(variables):
            if not (isinstance(v, dict) and _is_spec(v) and all(
                    isinstance(v.get(k), str) for k in ("key", "name", "kind"))):
                problems.append(f"variable {i} lacks key/name/kind/shape/dtype")
        names = [v.get("name") for v in variables if isinstance(v, dict)]
        if len(set(names)) != len(names):
            problems.append("variable names repeat")
        problems += slices.metadata_problems(variables)
    lr = metadata.get("learning_rate")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        problems.append("'learning_rate' is not a number")
    if problems:
        raise ModelFileError(f"{model_path!r}: its metadata is malformed: {'; '.join(problems)}")
    return metadata


def _is_spec(spec) -> bool:
    if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list):
        return False
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in spec["shape"]):
        return False
    try:
        np.dtype(spec.get("dtype"))
    except TypeError:
        return False
    return isinstance(spec.get("dtype"), str)


def _check_signatures(model_path: str, metadata: dict, runners: dict) -> None:
    """The metadata must describe the signatures the interpreter actually has."""
    def details(runner, which):
        return {k: (tuple(int(d) for d in v["shape"]), np.dtype(v["dtype"]))
                for k, v in getattr(runner, f"get_{which}_details")().items()}

    def spec(s):
        return tuple(s["shape"]), np.dtype(s["dtype"])

    inputs = _input_specs(metadata)
    weighted = ({"sample_weight": spec(metadata["sample_weight"])}
                if metadata.get("sample_weight") is not None else {})
    wanted = {
        ("train", "input"): {**inputs, "y": spec(metadata["y"]), **weighted,
                             "learning_rate": ((1,), np.dtype(np.float32))},
        ("infer", "input"): inputs,
        ("infer", "output"): {"output": spec(metadata["output"])},
        ("load", "input"): {v["key"]: spec(v) for v in metadata["variables"]},
        ("weights", "output"): {v["key"]: spec(v) for v in metadata["variables"]},
    }
    if "decode" in runners:   # a kv-cache file: its metadata "decode" describes it
        decode = metadata.get("decode") or {}
        listed = list(decode.get("inputs") or []) + [decode.get("logits")]
        if not all(_is_spec(s) and isinstance(s.get("name", ""), str) for s in listed) or \
                not isinstance(decode.get("length"), int):
            raise ModelFileError(f"{model_path!r} has a decode signature but its metadata "
                                 f"does not describe it")
        named = {s["name"]: spec(s) for s in decode["inputs"]}
        wanted[("decode", "input")] = named
        wanted[("decode", "output")] = {"logits": spec(decode["logits"]),
                                        "cache": named.get("cache")}
    for (signature, which), expected in wanted.items():
        try:
            found = details(runners[signature], which)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise ModelFileError(f"{model_path!r}: the interpreter cannot describe signature "
                                 f"{signature!r}: {exc}") from exc
        if found != expected:
            raise ModelFileError(
                f"{model_path!r}: signature {signature!r} {which}s are "
                f"{_show(found)}, its metadata says {_show(expected)}; the file is damaged or "
                f"not a tfpock model")


def _input_specs(metadata: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Input name -> (shape, dtype), from ``inputs`` (files of models with several inputs)
    or ``x``."""
    listed = metadata.get("inputs") or [{"name": "x", **metadata["x"]}]
    return {s["name"]: (tuple(s["shape"]), np.dtype(s["dtype"])) for s in listed}


def _show(specs: dict) -> str:
    return ", ".join(f"{k}: {d} {s}" for k, (s, d) in sorted(specs.items()))
