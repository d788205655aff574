"""KerasHub's tiny Gemma (``GemmaCausalLM``) and BERT classifier (``BertTextClassifier``) as
KerasHub builds them, with their own loss, trained one step: equal to a GradientTape step.

Gemma is built with Gemma 2's options too (post-attention and post-MLP norms, attention and
final logit soft-capping, sliding-window attention): its RMS norm (``x / sqrt(var + eps) *
(1 + scale)``, a ReciprocalGrad in the gradient), the tanh-approximate GELU gate, tied
embeddings scaled by ``sqrt(hidden_dim)``. BERT: token, position and segment embeddings, post
LayerNorms, the tanh pooler over the first token (a StridedSliceGrad in the gradient),
dropout (0 here for the tape comparison; its training mode is tested on its own).

On the device (ai-edge-litert): the full step of each, and BERT with a LoRA policy. Gemma's
LoRA (``enable_lora(4)``), its last block and BERT's norms and biases run in the host
program, the same lowered graph with fewer updates (tests/test_keras_hub.py argues the same
for Llama); each export costs 10-20 s on this loaded machine, so the file keeps to three.
"""
from __future__ import annotations

import keras
import keras_hub
import numpy as np
import pytest

import tfpock
from tests.numerics import assert_close
from tests.test_keras_hub import LR, tape_step
from tfpock.runtime import Trainer
from tfpock.tflite import model_file

BATCH, SEQ, VOCAB, CLASSES = 2, 8, 128, 3


def tiny_gemma(lora: bool = False) -> keras.Model:
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=32, intermediate_dim=64, head_dim=16, use_post_ffw_norm=True,
        use_post_attention_norm=True, attention_logit_soft_cap=50.0, final_logit_soft_cap=30.0,
        use_sliding_window_attention=True, sliding_window_size=4)
    if lora:
        backbone.enable_lora(4)
    model = keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)
    _randomise_norms(model)
    return model


def tiny_bert(dropout: float = 0.0) -> keras.Model:
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64,
        max_sequence_length=16, dropout=dropout)
    model = keras_hub.models.BertTextClassifier(backbone, num_classes=CLASSES,
                                                preprocessor=None, dropout=dropout)
    _randomise_norms(model)
    return model


def _randomise_norms(model: keras.Model) -> None:
    """Norm scales start at 0 (Gemma's ``1 + scale``) or 1 and offsets at 0: values that
    would hide a scale or offset used wrongly. Seeded, so each build is the same model."""
    rng = np.random.default_rng(1)
    for var in model.weights:
        if var.path.endswith(("norm/scale", "norm/gamma", "norm/beta", "normalization/scale")):
            var.assign(rng.normal(0.0, 0.1, var.shape).astype(np.float32) + var.numpy())


MODELS = {   # name -> (builder, input names)
    "gemma": (tiny_gemma, ("token_ids", "padding_mask")),
    "bert": (tiny_bert, ("token_ids", "padding_mask", "segment_ids")),
}


def batch(name: str):
    """Inputs, labels and sample weights: next tokens weighted by the padding mask (Gemma),
    one class per sequence (BERT, no weights)."""
    rng = np.random.default_rng(0)
    mask = np.ones((BATCH, SEQ), np.int32)
    mask[1, 5:] = 0
    x = {"token_ids": rng.integers(1, VOCAB, (BATCH, SEQ)).astype(np.int32) * mask,
         "padding_mask": mask}
    if name == "bert":
        x["segment_ids"] = (np.arange(SEQ)[None, :] >= 4).astype(np.int32) * mask
        return x, rng.integers(0, CLASSES, BATCH).astype(np.int32), None
    return x, rng.integers(0, VOCAB, (BATCH, SEQ)).astype(np.int32), mask.astype(np.float32)


def compile_model(model, name: str, scheme):
    return tfpock.optimize(model, optimizer=keras.optimizers.SGD(LR), scheme=scheme,
                           batch_size=BATCH, sample_weight=name == "gemma",
                           input_shapes={k: (SEQ,) for k in MODELS[name][1]})


def check_step(name, program, reference, expected, trainer=None):
    """One step of ``program`` (and of ``trainer``, the exported file) equals the tape's on
    ``reference`` updating ``expected``; the loss is the model's own."""
    assert sorted(program.trained_paths) == sorted(expected) and expected
    x, y, weights = batch(name)
    before = {v.path: v.numpy() for v in reference.trainable_variables}
    engines = []
    if trainer is not None:
        assert_close(trainer.infer(x), reference(x, training=False).numpy(), rtol=1e-4,
                     atol=1e-5, where=f"{name}: infer before the step")
        engines.append(("ai-edge-litert", lambda: trainer.train(x, y, sample_weight=weights),
                        trainer.weights))
    engines.append(("TF program", lambda: program.train_step(x, y, sample_weight=weights),
                    program.weights))
    ref_loss = tape_step(reference, set(expected), x, y, weights)
    after = {v.path: v.numpy() for v in reference.trainable_variables}
    for engine, step, state in engines:
        assert_close(step()["loss"], ref_loss, rtol=1e-5, where=f"{name} {engine}: loss")
        new = state()
        moved = [p for p in new if not np.array_equal(new[p], before[p])]
        assert len(moved) >= len(new) // 2, f"{engine}: only {moved} changed"
        for p, value in new.items():
            assert_close(value, after[p], atol=1e-4, where=f"{name} {engine}: weight {p}")


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory):
    name = request.param
    program = compile_model(MODELS[name][0](), name, "full")
    path = tmp_path_factory.mktemp(name) / "model.tflite"
    program.export(path)
    return name, program, path


def test_device_step_matches_gradient_tape(exported):
    name, program, path = exported
    reference = MODELS[name][0]()
    expected = [v.path for v in reference.trainable_variables]
    check_step(name, program, reference, expected, Trainer(path))
    parsed = model_file.read(path.read_bytes())
    assert parsed.custom_ops() == []
    assert len(parsed.variables()) == len(expected)


def gemma_last_block(model):
    return tfpock.Scheme.last_blocks(model, 1, pattern=r"decoder_block_\d+")


def bert_norms_and_biases(model):
    """Every LayerNorm (inside the encoder blocks by path) fully, every other bias."""
    norms = ["embeddings_layer_norm"] + [
        f"transformer_layer_{i}/{n}" for i in range(2)
        for n in ("self_attention_layer_norm", "feedforward_layer_norm")]
    return {"default": "bias", "layers": {n: "full" for n in norms}}


@pytest.mark.parametrize("name, lora, scheme, selected", [
    ("gemma", True, lambda model: "full", lambda p: "lora_kernel" in p),
    ("gemma", False, gemma_last_block, lambda p: p.startswith(("decoder_block_1/",
                                                                "final_normalization/"))),
    ("bert", False, bert_norms_and_biases, lambda p: p.endswith(("/bias", "/gamma", "/beta"))),
], ids=["gemma-lora", "gemma-last_block", "bert-norms_and_biases"])
def test_schemes_match_gradient_tape(name, lora, scheme, selected):
    """Gemma's LoRA is KerasHub's (``backbone.enable_lora(4)``: the query and value factors);
    LoRA on the device: tests/test_keras_hub.py (Llama) and the LoRA policy test below."""
    build = (lambda: tiny_gemma(lora=True)) if lora else MODELS[name][0]
    model, reference = build(), build()
    program = compile_model(model, name, scheme(model))
    expected = [v.path for v in reference.trainable_variables if selected(v.path)]
    assert len(expected) == 8 or not lora
    check_step(name, program, reference, expected)


def test_bert_dropout_draws_a_mask_each_step():
    """BERT as KerasHub builds it (dropout 0.1, also inside its attention): training mode
    draws a new mask every step (learning rate 0: the weights never change), inference has
    none."""
    program = compile_model(tiny_bert(dropout=0.1), "bert", "full")
    x, y, _ = batch("bert")
    losses = {program.train_step(x, y, learning_rate=0.0)["loss"] for _ in range(3)}
    assert len(losses) == 3
    assert_close(program.infer(x), tiny_bert(0.1)(x, training=False).numpy(), rtol=1e-4,
                 atol=1e-5, where="infer: no dropout")


def test_unsupported_keras_hub_layer_is_named():
    """Mistral's own RMS norm class has no entry: the error names it and its decoder layer."""
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.MistralBackbone(
        vocabulary_size=VOCAB, num_layers=1, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=32, intermediate_dim=64)
    model = keras_hub.models.MistralCausalLM(backbone=backbone, preprocessor=None)
    with pytest.raises(tfpock.UnsupportedModelError,
                       match=r"\(MistralLayerNormalization\) \(in 'transformer_layer_0', "
                             r"MistralTransformerDecoder\)"):
        compile_model(model, "gemma", "full")


def test_lora_policy_trains_the_factors_and_merges_back(tmp_path):
    """``Scheme.lora(model, 4)``: LoRA on BERT's query and value projections (KerasHub's
    targets), on a copy; the device step equals the tape's on a model with ``enable_lora(4)``
    and the same first factors; the merged weights, loaded into BERT without LoRA, give the
    trained model's outputs."""
    model = tiny_bert()
    original = {v.path: v.numpy() for v in model.weights}
    scheme = tfpock.Scheme.lora(model, 4)
    assert sorted(scheme.layers) == [f"transformer_layer_{i}/self_attention_layer/{p}"
                                     for i in range(2) for p in ("query", "value")]
    program = compile_model(model, "bert", scheme)
    program.export(tmp_path / "lora.tflite")
    assert not any(getattr(l, "lora_enabled", False) for l in model._flatten_layers())
    assert {v.path: v.numpy().tobytes() for v in model.weights} == {
        p: v.tobytes() for p, v in original.items()}   # the user's model is as it was

    reference = tiny_bert()
    first = program.weights()
    for layer in reference._flatten_layers():
        if layer.path in scheme.layers:
            layer.enable_lora(4)
            layer.lora_kernel_a.assign(first[layer.lora_kernel_a.path])
    expected = [v.path for v in reference.trainable_variables if "lora_kernel" in v.path]
    assert len(expected) == 8
    trainer = Trainer(tmp_path / "lora.tflite")
    check_step("bert", program, reference, expected, trainer)

    merged = trainer.merged_weights()
    assert not any("lora" in p for p in merged) and len(merged) == 4
    keras_merged = {l._kernel.path: l.kernel.numpy() for l in reference._flatten_layers()
                    if getattr(l, "lora_enabled", False)}
    assert_close(merged, keras_merged, atol=1e-6, where="merged kernels")
    assert_close(program.merged_weights(), keras_merged, atol=1e-6, where="host merged")
    plain = tiny_bert()
    for var in plain.weights:
        if var.path in merged:
            var.assign(merged[var.path])
    x, _, _ = batch("bert")
    assert_close(plain(x, training=False).numpy(), trainer.infer(x), rtol=1e-4, atol=1e-5,
                 where="BERT without LoRA, merged weights loaded")
