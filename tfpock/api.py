"""``tfpock.optimize``: the one entry point from a Keras model to a compiled training step."""
from __future__ import annotations

import logging

import keras

from tfpock import export
from tfpock.decode import check_decodable
from tfpock.errors import TfpockError, UnsupportedModelError
from tfpock.layers import (FROZEN_FORWARD_LAYERS, frozen_forward_layers, frozen_in_keras,
                           leaf_layers, lora_merges)
from tfpock.losses import loss_config, resolve_loss
from tfpock.optimizers import compile_optimizer
from tfpock.pipeline import build_file_pipeline, build_pipeline, switches
from tfpock.program import Program
from tfpock.scheme import Scheme
from tfpock.tracing import NONFINITE_MODES, trace

logger = logging.getLogger(__name__)


def optimize(model: keras.Model, *, loss=None, optimizer=None, scheme="full",
             batch_size: int = 32, debug: bool = False, passes=None,
             frozen_batchnorm: str | None = None, nonfinite: str = "skip",
             sample_weight: bool = False, input_shapes: dict | None = None,
             kv_cache: bool = False) -> Program:
    """Compiles one training step of ``model`` into a builtin-only training program.

    Args:
        model: a built Keras 3 model (TF backend), Functional or Sequential, one output and
            one or several inputs (several: ``train`` and ``infer`` take a dict keyed by the
            input names, e.g. ``token_ids`` and ``padding_mask``). It is read, never
            modified (a scheme with LoRA policies compiles a copy: ``Scheme.lora_model``).
        loss: a Keras loss object or name; defaults to the compiled model's loss.
        optimizer: a Keras optimizer; defaults to the compiled model's optimizer.
        scheme: which weights a step updates: ``"full"``, ``"last:N"``, ``"bias"``, a
            :class:`tfpock.Scheme`, its JSON form as a dict, or the path of a ``.json``.
        batch_size: the static batch size of the ``train`` and ``infer`` signatures.
        debug: check the signature invariants and each pass's postcondition after every
            pass.
        passes: optional passes switched on or off, ``{name: bool}``, to measure what they
            buy: any of ``tfpock.pipeline.OPTIONAL_PASSES``, on the GraphDef ("prune",
            "narrow", "fold_bn", "split", "sink_scale", "fold_constants", "dce"; all on by
            default) or
            on the exported file ("fuse", on; "reorder", off: it reschedules ``train`` for a
            lower peak of live activations, but under the XNNPACK delegate's clustering that
            does not lower the allocation, as measured in ``tfpock/tflite/reorder.py``).
        frozen_batchnorm: how a BatchNormalization runs that Keras would train but the
            scheme freezes: ``"inference"`` (the default, as Keras runs a layer with
            ``trainable=False``: moving statistics, folded into constants) or
            ``"batch_statistics"`` (training mode, moving statistics updated). Overrides the
            scheme's own ``frozen_batchnorm``; ``report()`` shows each BatchNorm's mode.

        nonfinite: what a step does whose loss or any value it writes (weights, optimizer
            state, BatchNorm statistics) is not finite, e.g. after a NaN in the batch or a
            learning rate that explodes: ``"skip"`` (the default) leaves every variable as
            it was, ``"apply"`` writes it anyway. Either way ``train`` reports it
            (``{"loss": ..., "applied": ..., "finite": ...}``).
        sample_weight: whether ``train`` takes ``sample_weight``, the loss's weight of each
            label (``[batch, *output[1:-1]]``, as ``keras.Model.fit`` takes them): next-token
            cross-entropy weighted by the padding mask, as KerasHub's ``CausalLM`` trains.
        input_shapes: ``{input name: shape without the batch}`` for inputs the model leaves
            dynamic, e.g. ``{"token_ids": (64,), "padding_mask": (64,)}`` for KerasHub's
            models (their inputs are ``(None, None)``); the signatures are static.
        kv_cache: also export a ``decode`` signature, one generation step with a key/value
            cache as long as ``infer``'s window, which ``Trainer.generate`` then uses
            (:mod:`tfpock.decode`). Only for models with KerasHub's ``call_with_cache``
            (``LlamaCausalLM``, ``GemmaCausalLM``, ...); others are refused. Off by default:
            it makes generation 4.7-10.8x faster on a 15M Llama but its export took 1.9x
            as long (the file's size is the same), and most files are exported to train
            (``bench/results/2026-12-07-x86_64-2core-lm-kvcache.md``).

    Returns:
        A :class:`tfpock.Program`: ``train_step``, ``infer``, ``export``, ``report``.

    Example:
        >>> program = tfpock.optimize(model, loss=keras.losses.SparseCategoricalCrossentropy(
        ...     from_logits=True), optimizer=keras.optimizers.SGD(0.05), scheme="last:2",
        ...     batch_size=8)
        >>> program.export("model.tflite")
    """
    if not isinstance(model, keras.Model):
        raise TfpockError(f"model must be a keras.Model, got {type(model).__name__}")
    if not model.built or not getattr(model, "inputs", None):
        raise UnsupportedModelError(f"model {model.name!r} has no known input shape; build it "
                                    "with keras.Input or call it once")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise TfpockError(f"batch_size must be a positive int, got {batch_size!r}")
    on = switches(passes)   # a wrong pass name fails before the trace
    if nonfinite not in NONFINITE_MODES:
        raise TfpockError(f"nonfinite must be one of {', '.join(NONFINITE_MODES)}, got "
                          f"{nonfinite!r}")
    loss = _default(loss, model, "loss")
    optimizer = _default(optimizer, model, "optimizer")
    loss_obj = resolve_loss(loss)
    compiled_opt = compile_optimizer(optimizer)
    if not isinstance(kv_cache, bool):
        raise TfpockError(f"kv_cache must be True or False, got {kv_cache!r}")
    if kv_cache:
        check_decodable(model)   # before the trace: a refusal costs nothing
    scheme_obj = Scheme.parse(scheme, model).with_frozen_batchnorm(frozen_batchnorm)
    model = scheme_obj.lora_model(model)   # a copy with LoRA on, if the scheme asks for it
    trained = scheme_obj.resolve(model)
    frozen_forward = []
    if scheme_obj.frozen_batchnorm == "inference":
        frozen_forward = frozen_forward_layers(model, {w.layer for w in trained})

    with frozen_in_keras(frozen_forward):   # the trace records Keras' frozen forward
        step = trace(model, loss_obj, compiled_opt, batch_size, trained, nonfinite,
                     sample_weight=bool(sample_weight), input_shapes=input_shapes,
                     kv_cache=kv_cache)
    pipeline = build_pipeline(step.frozen, debug=debug, passes=on)
    train_graph, train_records = pipeline(step.train)
    infer_graph, infer_records = pipeline(step.infer)
    records = {"train": train_records, "infer": infer_records}
    decode_graph = None
    if step.decode is not None:
        decode_graph, records["decode"] = pipeline(step.decode)
    lora = [{"key": export.merged_key(i), **m} for i, m in enumerate(lora_merges(model))]
    metadata = export.metadata_for(step, {
        "loss": type(loss_obj).__name__,
        "loss_config": loss_config(loss_obj),
        "optimizer": {"name": compiled_opt.name, **compiled_opt.config},
        "scheme": scheme_obj.to_dict(),
        "model": model.name,
        "nonfinite": nonfinite,
        **({"lora": lora} if lora else {}),
    })
    module = export.TrainingModule(train_graph, infer_graph, step, metadata, decode_graph)
    leaves = leaf_layers(model)
    policies = {l.name: scheme_obj.layers.get(l.name, scheme_obj.default).to_json()
                for l in leaves if l.weights}
    frozen_names = {l.name for l in frozen_forward}
    batchnorm_modes = {l.name: "batch statistics" if l.trainable and l.name not in frozen_names
                       else "moving statistics"
                       for l in leaves if isinstance(l, FROZEN_FORWARD_LAYERS)}
    program = Program(step, module, records, metadata,
                      {l.name for l in leaves}, policies, batchnorm_modes,
                      file_pipeline=build_file_pipeline(debug=debug, passes=on))
    logger.info("compiled %s: %d weights trained, %d frozen", model.name,
                len(program.trained_paths), len(program.frozen_paths))
    return program


def _default(value, model: keras.Model, what: str):
    if value is not None:
        return value
    compiled = getattr(model, what, None) if getattr(model, "compiled", False) else None
    if compiled is None:
        raise TfpockError(f"no {what}: pass {what}= or compile the model with one")
    return compiled
