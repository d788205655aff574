"""Export: the optimised graphs become a TFLite model with training signatures.

The model file holds one resource variable per piece of training state (trained weights or
their trained channels, moving statistics of trainable BatchNorms, optimizer slots, the step
counter), initialised through TFLite's CALL_ONCE initialiser, and these signatures, all
builtin ops:

* ``train(x, y, learning_rate) -> loss``: one optimiser step; updates the variables (a
  model with several inputs takes each under its name instead of ``x``, and a program
  compiled with ``sample_weight=True`` takes ``sample_weight`` too);
* ``infer(x) -> output``: the forward pass in inference mode (inputs as ``train``'s);
* ``weights() -> w000, w001, ...``: every variable (trained weights whole, BatchNorm
  statistics, optimizer state), for checkpoints;
* ``load(w000, w001, ...) -> count``: assigns them, for restoring a checkpoint;
* ``metadata() -> json``: what the runtime needs to name things (checkpoint keys, specs,
  the default learning rate);
* ``merged() -> m000, m001, ...``, only in a model with LoRA layers: each one's kernel with
  its factors merged, ``kernel + scale * (A @ B)`` as Keras computes it (the metadata's
  ``lora`` says which), so trained weights load into the model without LoRA;
* ``decode(token_ids, cache, cache_update_index) -> logits, cache``, only in a causal LM
  compiled with ``kv_cache=True``: one generation step with a key/value cache
  (:mod:`tfpock.decode`), reading the same weight variables as ``infer``.

Weights and loads replace TF's Save/Restore ops, which TFLite only has through Flex.
The graphs are imported into the signature functions with ``tf.graph_util.import_graph_def``,
wired to the variables. The file is verified (no custom or Flex op, every signature present)
and written atomically: a failed export leaves no file behind.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Iterable

import tensorflow as tf

from graph_passes.ir import Graph
from graph_passes.lowering import RULES
from tfpock.tflite import model_file
from tfpock.errors import ExportError
from tfpock.provenance import layer_of_node
from tfpock.tracing import TracedStep

from tfpock.runtime import atomic
from tfpock.runtime.trainer import FORMAT, SIGNATURES


def variable_key(index: int) -> str:
    """Signature names of the variables in ``weights`` and ``load`` (TFLite signature names
    must be identifiers; the metadata maps them to checkpoint keys)."""
    return f"w{index:03d}"


def merged_key(index: int) -> str:
    """Output names of the ``merged`` signature, one per LoRA layer (metadata ``lora``)."""
    return f"m{index:03d}"


class TrainingModule(tf.Module):
    """Variables of the trained state and the signature functions over the graphs."""

    def __init__(self, train: Graph, infer: Graph, step: TracedStep, metadata: dict,
                 decode: Graph | None = None):
        super().__init__(name="tfpock")
        self._train_graph = train.to_graph_def()
        self._infer_graph = infer.to_graph_def()
        self.train_graph, self.infer_graph, self.decode_graph = train, infer, decode
        self.specs = step.variables
        self._partial = {w.path: w for w in step.weights if w.channels is not None}
        self.variables_ = {v.key: tf.Variable(v.value, name=variable_key(i), trainable=False)
                           for i, v in enumerate(step.variables)}
        self._metadata = json.dumps(metadata, sort_keys=True)
        load_specs = [tf.TensorSpec(step.checkpoint_shape(v), tf.as_dtype(v.value.dtype),
                                    name=variable_key(i)) for i, v in enumerate(step.variables)]
        lr_spec = tf.TensorSpec((1,), tf.float32, name="learning_rate")  # see tracing
        # signature inputs are named by their specs: the model's inputs, y, maybe
        # sample_weight, learning_rate (the train graph's input names, in that order)
        x_specs = list(step.inputs.values())
        sw_specs = [step.sample_weight_spec] if step.sample_weight_spec is not None else []
        train_specs = [*x_specs, step.y_spec, *sw_specs, lr_spec]
        self._train_names = [spec.name for spec in train_specs]
        self._infer_names = list(step.inputs)
        self.train = tf.function(self._train_fn, autograph=False, input_signature=train_specs)
        self.infer = tf.function(self._infer_fn, input_signature=x_specs, autograph=False)
        self.weights = tf.function(self._weights_fn, input_signature=[], autograph=False)
        self.load = tf.function(self._load_fn, input_signature=load_specs, autograph=False)
        self.metadata = tf.function(self._metadata_fn, input_signature=[], autograph=False)
        self._lora, self._params = metadata.get("lora", []), step.params
        self.signature_names = SIGNATURES + (("merged",) if self._lora else ())
        if self._lora:
            self.merged = tf.function(self._merged_fn, input_signature=[], autograph=False)
        if decode is not None:
            self._decode_graph = decode.to_graph_def()
            self._decode_names = list(step.decode_inputs)
            self.signature_names += ("decode",)
            self.decode = tf.function(self._decode_fn, autograph=False,
                                      input_signature=list(step.decode_inputs.values()))

    def _feed(self, graph: Graph, **inputs) -> dict:
        feed = {graph.inputs[k]: v for k, v in inputs.items()}
        for key, ref in graph.params.items():
            feed[ref] = self.variables_[key].read_value()
        return feed

    def _train_fn(self, *args):
        keys = [k for k in self.train_graph.outputs if k.startswith("new:")]
        outs = tf.graph_util.import_graph_def(
            self._train_graph, input_map=self._feed(self.train_graph,
                                                    **dict(zip(self._train_names, args))),
            return_elements=[self.train_graph.outputs[k] for k in ["loss", "finite"] + keys],
            name="train")
        for key, new in zip(keys, outs[2:]):
            self.variables_[key.removeprefix("new:")].assign(new)
        return {"loss": outs[0], "finite": outs[1]}

    def _infer_fn(self, *args):
        (out,) = tf.graph_util.import_graph_def(
            self._infer_graph, input_map=self._feed(self.infer_graph,
                                                    **dict(zip(self._infer_names, args))),
            return_elements=[self.infer_graph.outputs["output"]], name="infer")
        return {"output": out}

    def _decode_fn(self, *args):
        outputs = self.decode_graph.outputs
        logits, cache = tf.graph_util.import_graph_def(
            self._decode_graph, input_map=self._feed(self.decode_graph,
                                                     **dict(zip(self._decode_names, args))),
            return_elements=[outputs["logits"], outputs["cache"]], name="decode")
        return {"logits": logits, "cache": cache}

    def _weights_fn(self):
        out = {}
        for i, spec in enumerate(self.specs):
            value = self.variables_[spec.key].read_value()
            weight = self._partial.get(spec.key) if spec.kind == "weight" else None
            if weight is not None:
                value = tf.concat([value, tf.constant(weight.frozen_rest)], axis=weight.axis)
            out[variable_key(i)] = value
        return out

    def _load_fn(self, *values):
        for spec, value in zip(self.specs, values):
            weight = self._partial.get(spec.key) if spec.kind == "weight" else None
            if weight is not None:
                begin = [0] * value.shape.rank
                size = list(value.shape)
                size[weight.axis] = weight.channels
                value = tf.slice(value, begin, size)
            self.variables_[spec.key].assign(value)
        return {"count": tf.constant(len(values), tf.int32)}

    def _merged_fn(self):
        def value(path):   # a trained factor is a variable, a frozen one a constant
            if path in self.variables_:
                return self.variables_[path].read_value()
            return tf.constant(self._params[path])
        return {m["key"]: tf.constant(self._params[m["kernel"]])
                + m["scale"] * tf.tensordot(value(m["a"]), value(m["b"]), axes=1)
                for m in self._lora}

    def _metadata_fn(self):
        return {"json": tf.constant(self._metadata)}


def metadata_for(step: TracedStep, extra: dict) -> dict:
    """What the runtime reads from the ``metadata`` signature."""
    owners = {w.path: w for w in step.weights}
    single = {"x": _spec(step.x_spec)} if list(step.inputs) == ["x"] else {}
    weighted = ({"sample_weight": _spec(step.sample_weight_spec)}
                if step.sample_weight_spec is not None else {})
    return {
        "format": FORMAT,
        "variables": [{"key": variable_key(i), "name": v.key, "kind": v.kind,
                       "layer": owners[v.key].layer if v.key in owners else "",
                       "shape": list(step.checkpoint_shape(v)), "dtype": str(v.value.dtype),
                       **_trained_slice(v, owners.get(v.key))}
                      for i, v in enumerate(step.variables)],
        # the model's inputs in signature order; "x" repeats a single input's spec
        "inputs": [{"name": name, **_spec(spec)} for name, spec in step.inputs.items()],
        **single,
        "y": _spec(step.y_spec),
        **weighted,
        "output": _spec(step.output_spec),
        "learning_rate": step.learning_rate,
        **_decode_metadata(step),
        **extra,
    }


def _decode_metadata(step: TracedStep) -> dict:
    """``{"decode": {"inputs": [...], "logits": spec, "length": positions}}`` for a file with
    the kv-cache signature (:mod:`tfpock.decode`): the runtime reads the cache's shape, the
    window and how many positions the cache holds (``infer``'s window)."""
    if step.decode_inputs is None:
        return {}
    tokens = step.decode_inputs["token_ids"].shape
    logits = {"shape": [tokens[0], tokens[1], step.output_spec.shape[-1]], "dtype": "float32"}
    return {"decode": {"inputs": [{"name": name, **_spec(spec)}
                                  for name, spec in step.decode_inputs.items()],
                       "logits": logits, "length": step.inputs["token_ids"].shape[1]}}


def _trained_slice(variable, weight) -> dict:
    """Format /5: a partial-channel weight says which slice trains, ``{"slice": {"axis": a,
    "channels": [0, k]}}`` (the first k channels along axis a); a whole weight, BatchNorm
    statistics and optimizer state carry no ``slice``. What a federated client ships
    (:mod:`tfpock.runtime.slices`)."""
    if variable.kind != "weight" or weight is None or weight.channels is None:
        return {}
    return {"slice": {"axis": int(weight.axis), "channels": [0, int(weight.channels)]}}


def _spec(spec: tf.TensorSpec) -> dict:
    return {"shape": list(spec.shape), "dtype": spec.dtype.name}


def convert(module: TrainingModule, graphs: Iterable[Graph], layer_names: Iterable[str]) -> bytes:
    """SavedModel -> TFLite with builtins only; a refusal names the ops and their layers."""
    with tempfile.TemporaryDirectory(prefix="tfpock-") as tmp:
        names = module.signature_names
        signatures = {k: getattr(module, k).get_concrete_function() for k in names}
        # The imported graphs keep IdentityN nodes of tf.custom_gradient ops (SiLU, for one);
        # the step is already differentiated, so their gradient functions are not saved.
        tf.saved_model.save(module, tmp, signatures=signatures,
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(names))
        converter.experimental_enable_resource_variables = True
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            return converter.convert()
        except Exception as exc:  # the converter raises ConverterError or plain Exception
            raise _explain(exc, list(graphs), set(layer_names)) from exc


# Converter failures that are not a missing builtin: a fragment of the converter's message ->
# what the user can do. Each was found by tests/fuzz.py and has a regression test in
# tests/test_converter_workarounds.py.
KNOWN_CONVERTER_BUGS = {
    "'tf.Transpose' op x should be of the same rank with y": (
        "TF 2.21's TFLite converter fails on a Conv1D with one output channel whose output is "
        "added to a one-channel tensor of its shape at batch size 1 (it turns the Add into the "
        "convolution's bias); compile with batch_size >= 2, or give the Conv1D more than one "
        "filter"),
}


def _explain(exc: Exception, graphs: list[Graph], layer_names: set[str]) -> ExportError:
    for fragment, advice in KNOWN_CONVERTER_BUGS.items():
        if fragment in str(exc):
            return ExportError(f"TFLite conversion failed: {advice}")
    refused = sorted(set(re.findall(r"\btf\.(\w+)", str(exc))))
    culprits = []
    for op in refused:
        layers = sorted({layer_of_node(n.name, layer_names) or "?"
                         for g in graphs for n in g.nodes_of([op])})
        if layers:
            culprits.append(f"{op} (from layers {', '.join(layers)})")
    if culprits:
        return ExportError("the training graph needs ops TFLite lacks as builtins and tfpock "
                           f"cannot lower yet: {'; '.join(culprits)}. tfpock lowers: "
                           f"{', '.join(sorted(RULES))}")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ExportError(f"TFLite conversion failed: {first}")


def verify(content: bytes, signatures: Iterable[str] = SIGNATURES) -> model_file.ModelFile:
    """Checks a converted model: builtin ops only and every tfpock signature present (and
    the optional ones it was built with, ``signatures``)."""
    parsed = model_file.read(content)
    custom = parsed.custom_ops()
    if custom:
        raise ExportError(f"the converted model contains custom/Flex ops {custom}; tfpock "
                          "models must be builtin-only")
    missing = [s for s in (*SIGNATURES, *signatures) if s not in parsed.signatures]
    if missing:
        raise ExportError(f"the converted model lacks signatures {missing}")
    for problem in runtime_hazards(parsed):
        raise ExportError(problem)
    return parsed


def runtime_hazards(parsed: model_file.ModelFile) -> list[str]:
    """Constructs that run wrongly, without an error, on runtimes tfpock supports:
    tflite-runtime 2.14's REVERSE_V2 reverses only the first of several axes."""
    found = []
    for sg in parsed.subgraphs:
        for op in sg.operators:
            if op.name == "REVERSE_V2":
                axes = sg.tensors[op.inputs[1]]
                if not axes.constant or axes.value().size != 1:
                    found.append(f"REVERSE_V2 over several axes in subgraph {sg.name!r}: "
                                 "tflite-runtime 2.14 would reverse only the first; lowerings "
                                 "must reverse one axis at a time")
    return found


def write_atomically(path: str | os.PathLike, content: bytes) -> None:
    """Writes the model file atomically (see :mod:`tfpock.runtime.atomic`)."""
    atomic.write_atomically(path, lambda f: f.write(content))
