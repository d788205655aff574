"""KerasHub's tiny Llama (``LlamaCausalLM``: ReversibleEmbedding with tied weights,
RMS norms, rotary embeddings, grouped-query attention, a SwiGLU MLP) trained one step on
ai-edge-litert equals one GradientTape step: full, LoRA (``backbone.enable_lora(4)``: only
the factors train, the base kernels are constants of the file) and the last block.

The model is as KerasHub builds it and a user loads it (``from_preset`` of a preset folder the
test writes: there is no download here): dict inputs of dynamic length, fixed here with
``input_shapes``; its decoder layers are composite layers tfpock has no table entry for (their
sublayers are Dense, EinsumDense and Llama's norm: ``tfpock/layers.py``). The loss is
next-token cross-entropy weighted by the padding mask, as ``CausalLM`` trains.
"""
from __future__ import annotations

import functools
import os
import tempfile

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

import tfpock
from tests.numerics import assert_close
from tfpock.runtime import Trainer
from tfpock.tflite import model_file

LR = 0.05
BATCH, SEQ, VOCAB = 2, 8, 128
SHAPES = {"token_ids": (SEQ,), "padding_mask": (SEQ,)}


def tiny_llama(lora: bool = False) -> keras.Model:
    """The tiny Llama as a user gets real weights: a preset folder (written here from a
    seeded random model with ``save_to_preset``) loaded with ``from_preset``."""
    keras.utils.set_random_seed(0)
    built = keras_hub.models.LlamaBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=32, intermediate_dim=64, tie_word_embeddings=True)
    backbone = from_preset_folder(built)
    if lora:
        backbone.enable_lora(4)
    return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)


def from_preset_folder(backbone) -> keras.Model:
    """``backbone`` written to a preset folder and loaded back. keras-hub 0.32's
    ``LlamaBackbone.get_config`` leaves out ``tie_word_embeddings``, so a tied preset loads
    untied and its weights then fail to load ("expected 2 variables, but received 0"); the
    argument restores it (a task's ``from_preset`` does not pass it on: load the backbone)."""
    with tempfile.TemporaryDirectory() as folder:
        backbone.save_to_preset(folder)
        return keras_hub.models.LlamaBackbone.from_preset(folder, tie_word_embeddings=True)


def test_a_preset_folder_gives_back_the_weights_it_was_written_from():
    keras.utils.set_random_seed(1)
    built = keras_hub.models.LlamaBackbone(
        vocabulary_size=VOCAB, num_layers=1, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=16, intermediate_dim=32, tie_word_embeddings=True)
    loaded = from_preset_folder(built)
    assert [w.path for w in loaded.weights] == [w.path for w in built.weights]
    for a, b in zip(loaded.weights, built.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def last_block(model):
    return tfpock.Scheme.last_blocks(model, 1, pattern=r"transformer_layer_\d+")


# case -> (lora, scheme, which trainable variables the step updates)
CASES = {
    "full": (False, "full", lambda path: True),
    "lora": (True, "full", lambda path: True),
    "last_block": (False, last_block, lambda path: path.startswith(
        ("transformer_layer_1/", "sequence_output_layernorm/"))),
}


def batch():
    rng = np.random.default_rng(0)
    mask = np.ones((BATCH, SEQ), np.int32)
    mask[1, 5:] = 0
    x = {"token_ids": rng.integers(1, VOCAB, (BATCH, SEQ)).astype(np.int32) * mask,
         "padding_mask": mask}
    return x, rng.integers(0, VOCAB, (BATCH, SEQ)).astype(np.int32), mask.astype(np.float32)


def loss_fn():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@functools.cache
def exported(case: str) -> tuple[tfpock.Program, bytes]:
    """The case's program and its exported file, compiled once per session (the tiny
    Llama's compile is most of this file's time; tests/test_generate.py and
    tests/test_kv_cache.py use "full", which has the kv-cache decode signature too)."""
    lora, scheme, _ = CASES[case]
    model = tiny_llama(lora)
    program = tfpock.optimize(model, loss=loss_fn(), optimizer=keras.optimizers.SGD(LR),
                              scheme=scheme if isinstance(scheme, str) else scheme(model),
                              batch_size=BATCH, sample_weight=True, input_shapes=SHAPES,
                              kv_cache=case == "full")
    with tempfile.TemporaryDirectory() as folder:
        program.export(os.path.join(folder, "model.tflite"))
        with open(os.path.join(folder, "model.tflite"), "rb") as f:
            return program, f.read()


@pytest.fixture(scope="module", params=list(CASES))
def compiled(request, tmp_path_factory):
    program, data = exported(request.param)
    path = tmp_path_factory.mktemp("llama") / "model.tflite"
    path.write_bytes(data)
    return request.param, program, path


def tape_step(model, trained, x, y, weights) -> float:
    watched = [v for v in model.trainable_variables if v.path in trained]
    with tf.GradientTape() as tape:
        loss = loss_fn()(y, model(x, training=True), sample_weight=weights)
    keras.optimizers.SGD(LR).apply(tape.gradient(loss, watched), watched)
    return float(loss)


def test_step_matches_gradient_tape(compiled):
    case, program, path = compiled
    lora, _, selected = CASES[case]
    reference = tiny_llama(lora)
    expected = [v.path for v in reference.trainable_variables if selected(v.path)]
    assert sorted(program.trained_paths) == sorted(expected)
    if lora:   # only the factors: 2 per adapted projection (KerasHub adapts query, value)
        assert all("lora_kernel" in p for p in expected) and len(expected) == 8
    x, y, weights = batch()
    before = {v.path: v.numpy() for v in reference.trainable_variables}
    trainer = Trainer(path)
    assert_close(trainer.infer(x), reference(x, training=False).numpy(), rtol=1e-4, atol=1e-5,
                 where="infer before the step")
    ref_loss = tape_step(reference, set(expected), x, y, weights)
    after = {v.path: v.numpy() for v in reference.trainable_variables}
    for engine, out, state in [
            ("ai-edge-litert", trainer.train(x, y, sample_weight=weights), trainer.weights),
            ("TF program", program.train_step(x, y, sample_weight=weights), program.weights)]:
        assert_close(out["loss"], ref_loss, rtol=1e-5, where=f"{engine}: loss")
        new = state()
        moved = [p for p in new if not np.array_equal(new[p], before[p])]
        assert len(moved) >= len(new) // 2, f"{engine}: only {moved} changed"
        for p, value in new.items():
            assert_close(value, after[p], atol=1e-4, where=f"{engine}: weight {p}")
    parsed = model_file.read(path.read_bytes())
    assert parsed.custom_ops() == []
    assert len(parsed.variables()) == len(expected)   # the frozen kernels are constants


def norms_only(model):
    """Every RMS norm, inside the decoder blocks (named by path) and the final one."""
    blocks = [f"transformer_layer_{i}/{norm}" for i in range(2)
              for norm in ("self_attention_layernorm", "feedforward_layernorm")]
    return {"default": "frozen",
            "layers": {name: "full" for name in blocks + ["sequence_output_layernorm"]}}


def attention_only(model):
    return {"default": "frozen", "layers": {"transformer_layer_1/self_attention": "full"}}


@pytest.mark.parametrize("scheme, selected", [
    (norms_only, lambda path: path.endswith("layernorm/scale")),
    (attention_only, lambda path: path.startswith("transformer_layer_1/self_attention/")),
], ids=["norms", "attention"])
def test_schemes_name_parts_of_decoder_blocks(scheme, selected):
    """Policies on parts of a composite layer by path: the host program's step equals the
    tape's on exactly those weights (the device runs the same lowered ops as above)."""
    model, reference = tiny_llama(), tiny_llama()
    program = tfpock.optimize(model, loss=loss_fn(), optimizer=keras.optimizers.SGD(LR),
                              scheme=scheme(model), batch_size=BATCH, sample_weight=True,
                              input_shapes=SHAPES)
    expected = [v.path for v in reference.trainable_variables if selected(v.path)]
    assert sorted(program.trained_paths) == sorted(expected) and expected
    x, y, weights = batch()
    ref_loss = tape_step(reference, set(expected), x, y, weights)
    out = program.train_step(x, y, sample_weight=weights)
    assert_close(out["loss"], ref_loss, rtol=1e-5, where="loss")
    after = {v.path: v.numpy() for v in reference.trainable_variables}
    for p, value in program.weights().items():
        assert_close(value, after[p], atol=1e-4, where=f"weight {p}")


def test_unknown_sublayer_is_named():
    """A composite layer with a weighted sublayer tfpock has no kind for: the error names the
    sublayer, its class and the composite it is in."""

    class Scaled(keras.layers.Layer):
        def build(self, shape):
            self.scale = self.add_weight(shape=(shape[-1],), initializer="ones", name="scale")

        def call(self, x):
            return x * self.scale

    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense = keras.layers.Dense(4, name="dense")
            self.scaled = Scaled(name="odd_scale")

        def call(self, x):
            return self.scaled(self.dense(x))

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(Block(name="block")(inputs)))
    with pytest.raises(tfpock.UnsupportedModelError, match=r"'odd_scale' \(Scaled\) \(in "
                       r"'block', Block\)"):
        tfpock.optimize(model, loss=loss_fn(), optimizer=keras.optimizers.SGD(LR), batch_size=2)


def test_lora_policy_copies_a_tied_llama():
    """``Scheme.lora`` compiles a copy of the model; keras-hub 0.32's backbone config leaves
    out ``tie_word_embeddings``, so the copy from config had an untied output embedding (a
    variable more) and the policy was refused: the backbone's own flag is put back."""
    model = tiny_llama()
    copy = tfpock.Scheme.lora(model, 4).lora_model(model)
    paths = {v.path for v in copy.weights}
    assert {v.path for v in model.weights} <= paths
    assert sorted(p for p in paths if "lora_kernel" in p) == sorted(
        f"transformer_layer_{i}/self_attention/{proj}/lora_kernel_{ab}"
        for i in range(2) for proj in ("query", "value") for ab in "ab")
