"""Program: the compiled training step, runnable in TF on the host and exportable to TFLite."""
from __future__ import annotations

import collections
import json
import os

import numpy as np


from graph_passes.pass_base import PassRecord, Sequential
from tfpock import export
from tfpock.tflite import memory, model_file
from tfpock.tflite.ir import TfliteFile
from tfpock.provenance import layer_of_node
from tfpock.errors import TfpockError
from tfpock.runtime.trainer import merge_lora, step_result
from tfpock.runtime.validate import check_batch, check_inputs, check_labels, sample_weights
from tfpock.tracing import TracedStep


class Program:
    """What ``tfpock.optimize`` returns. The user's Keras model is not referenced.

    Example:
        >>> program = tfpock.optimize(model, scheme="last:2", batch_size=8)
        >>> program.train_step(x, y)["loss"]
        >>> program.export("model.tflite")
    """

    def __init__(self, step: TracedStep, module: export.TrainingModule,
                 records: dict[str, list[PassRecord]], metadata: dict, layer_names: set[str],
                 layer_policies: dict[str, object], batchnorm_modes: dict[str, str] | None = None,
                 file_pipeline: Sequential | None = None):
        self._file_pipeline = file_pipeline or Sequential([])  # passes on the converted file
        self._layer_policies = layer_policies  # leaf layer with weights -> policy (JSON form)
        # BatchNormalization -> "batch statistics" (training mode) or "moving statistics"
        self._batchnorm_modes = dict(batchnorm_modes or {})
        self._step = step
        self._module = module
        self._records = records
        self._metadata = metadata
        self._layer_names = layer_names
        self._content: bytes | None = None

    @property
    def metadata(self) -> dict:
        """What the exported file's ``metadata`` signature returns (weights, specs, config)."""
        return self._metadata

    @property
    def pass_records(self) -> dict[str, list[PassRecord]]:
        """What each pass did, per graph ("train", "infer", and "export" for the passes on the
        converted file, once it is converted): name, ops and peak live activation bytes before
        and after, whether it changed anything, its stats."""
        return {k: list(v) for k, v in self._records.items()}

    @property
    def trained_paths(self) -> list[str]:
        """Paths of the weights the optimizer updates (wholly or on some channels)."""
        return [w.path for w in self._step.weights if w.trained]

    @property
    def frozen_paths(self) -> list[str]:
        """Paths of the weights the step never changes (constants of the exported model)."""
        return [w.path for w in self._step.weights if w.path in self._step.frozen]

    def _x(self, x, signature) -> list[np.ndarray]:
        specs = {k: (tuple(s.shape), s.dtype.as_numpy_dtype) for k, s in self._step.inputs.items()}
        return list(check_inputs(x, specs, signature).values())

    def train_step(self, x, y, sample_weight=None, learning_rate: float | None = None) -> dict:
        """One step of the optimised graph in TensorFlow; updates the training state.
        ``x``: an array, or for a model with several inputs a dict keyed by their names;
        ``sample_weight``: the loss's weight of each label (programs compiled with
        ``sample_weight=True``; None weighs every label 1). ``learning_rate`` defaults to the
        optimizer's. Returns ``loss``, ``finite`` (the loss and every value the step writes
        are finite) and ``applied`` (whether the step changed the state: a step that is not
        finite is skipped unless compiled with ``nonfinite="apply"``)."""
        spec = self._step.y_spec
        y = check_labels(check_batch("y", y, tuple(spec.shape), spec.dtype.as_numpy_dtype,
                                     "train_step"), self._step.output_spec.shape[-1],
                         "train_step")
        sw_spec = self._step.sample_weight_spec
        weights = sample_weights(sample_weight, None if sw_spec is None else tuple(sw_spec.shape),
                                 "train_step")
        lr = np.array([self._step.learning_rate if learning_rate is None else learning_rate],
                      np.float32)
        out = self._module.train(*self._x(x, "train_step"), y, *weights, lr)
        return step_result(out["loss"].numpy(), out["finite"].numpy(),
                           self._metadata.get("nonfinite"))

    def infer(self, x) -> np.ndarray:
        return self._module.infer(*self._x(x, "infer"))["output"].numpy()

    def state(self) -> dict[str, np.ndarray]:
        """Every variable (what a checkpoint holds), keyed by checkpoint key; partial-channel
        weights whole."""
        out = self._module.weights()
        return {v.key: out[export.variable_key(i)].numpy()
                for i, v in enumerate(self._module.specs)}

    def weights(self) -> dict[str, np.ndarray]:
        """Current values of the weights the step changes (trained weights, BatchNorm
        statistics), keyed by Keras variable path."""
        kinds = {v.key: v.kind for v in self._module.specs}
        return {k: v for k, v in self.state().items() if kinds[k] != "optimizer"}

    def merged_weights(self) -> dict[str, np.ndarray]:
        """:meth:`weights` with each LoRA layer's factors merged into its kernel, as
        ``Trainer.merged_weights`` on the device."""
        if "lora" not in self._metadata:
            raise TfpockError("this program has no LoRA layers to merge")
        merged = {k: v.numpy() for k, v in self._module.merged().items()}
        return merge_lora(self.weights(), merged, self._metadata["lora"])

    def frozen_weights(self) -> dict[str, np.ndarray]:
        """Values the freeze pass baked into the train graph as constants, keyed by path.
        Later passes may fold them into other constants (a frozen BatchNorm's statistics
        become one scale and shift), so these are the values as frozen, not graph nodes."""
        return {path: np.array(self._step.frozen[path]) for path in self.frozen_paths}

    def to_tflite(self) -> bytes:
        """The verified TFLite training model (converted once, with the compile-time weights;
        host-side ``train_step`` calls do not change it)."""
        if self._content is None:
            graphs = [g for g in (self._module.train_graph, self._module.infer_graph,
                                  self._module.decode_graph) if g is not None]
            content = export.convert(self._module, graphs, self._layer_names)
            converted, records = self._file_pipeline(TfliteFile(content, "train"))
            if records:
                self._records["export"] = records
            content = converted.content
            export.verify(content, self._module.signature_names)
            self._content = content
        return self._content

    def export(self, path: str | os.PathLike) -> str:
        """Writes the training model to ``path`` atomically; returns the path."""
        export.write_atomically(path, self.to_tflite())
        return os.fspath(path)

    def report(self) -> str:
        """What each pass did, per graph (ops and peak live activations before -> after), the
        exported file's peak per signature once converted, and what the scheme trains."""
        inputs = ", ".join(f"{k} {tuple(s.shape)}" for k, s in self._step.inputs.items())
        lines = [f"tfpock program: batch {self._step.y_spec.shape[0]}, "
                 f"{inputs}, y {tuple(self._step.y_spec.shape)}",
                 f"trained weights: {len(self.trained_paths)} "
                 f"({sum(w.trained_value.size for w in self._step.weights if w.trained):,} "
                 f"parameters); frozen: {len(self.frozen_paths)} "
                 f"({sum(self._step.frozen[p].size for p in self.frozen_paths):,})"]
        for graph_name, records in self._records.items():
            if graph_name != "export":
                lines.append(f"[{graph_name}] peak live: the GraphDef's estimate")
                lines.extend(_record_line(r) for r in records)
        if self._content is not None:
            lines.append("[export] peak live per signature: the file's timeline")
            parsed = model_file.read(self._content)
            for signature in parsed.signatures:
                peak = memory.timeline(parsed, signature).peak_op
                lines.append(f"  {signature:<8} " + (f"{_size(peak.live_bytes)} at op "
                                                      f"{peak.index} {peak.op}" if peak else "-"))
            lines.extend(_record_line(r) for r in self._records.get("export", []))
        lines.append("[layers] policy, trained parameters, gradient ops removed by prune"
                     "; BatchNorm: which statistics it normalises with")
        for layer, row in self.layer_table().items():
            mode = f"  {row['batchnorm']}" if "batchnorm" in row else ""
            lines.append(f"  {layer:<28} {json.dumps(row['policy']):<44} "
                         f"{row['trained_parameters']:>9,} {row['gradient_ops_removed']:>5}"
                         f"{mode}")
        return "\n".join(lines)

    def layer_table(self) -> dict[str, dict]:
        """Per layer with weights: its policy, how many parameters the step trains, how
        many gradient ops the prune pass removed for it (attributed by provenance), and for a
        BatchNormalization which statistics it normalises with in ``train``."""
        removed = collections.Counter()
        for r in self._records.get("train", []):
            for node in r.stats.get("removed_gradient_nodes", []):
                removed[layer_of_node(node, self._layer_names)] += 1
        trained = collections.Counter()
        for w in self._step.weights:
            if w.trained:
                trained[w.layer] += w.trained_value.size
        table = {layer: {"policy": policy, "trained_parameters": trained[layer],
                         "gradient_ops_removed": removed[layer]}
                 for layer, policy in self._layer_policies.items()}
        for layer, mode in self._batchnorm_modes.items():
            if layer in table:
                table[layer]["batchnorm"] = mode
        return table


# Stats a record's figures already show (the reorder pass's peaks).
_SHOWN_AS_FIGURES = ("peak_bytes_before", "peak_bytes_after")


def _record_line(r: PassRecord) -> str:
    """``  prune    ops  1330 -> 1278,  peak live 63.2 -> 62.0 MB  ops_removed=52, ...``"""
    line = f"  {r.name:<14} ops {r.ops_before:>5} -> {r.ops_after}"
    if r.peak_live_before is not None and r.peak_live_after is not None:
        line = f"{line + ',':<35} peak live {_size(r.peak_live_before, r.peak_live_after)}"
    stats = ", ".join(f"{k}={len(v) if isinstance(v, list) else v}"
                      for k, v in r.stats.items() if k not in _SHOWN_AS_FIGURES)
    return f"{line}  {stats}".rstrip()


def _size(*figures: int) -> str:
    """Byte counts in one unit, joined by arrows: ``_size(66_000_000, 65_000_000)`` is
    ``"62.9 -> 62.0 MB"`` (MB = 2**20 bytes, as in bench/)."""
    unit, scale = next(((u, s) for u, s in (("MB", 2**20), ("KB", 2**10)) if max(figures) >= s),
                       ("B", 1))
    digits = 0 if scale == 1 else 1
    return " -> ".join(f"{f / scale:.{digits}f}" for f in figures) + f" {unit}"
