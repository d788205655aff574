"""The language-model benchmark's model, schemes, batches and steps (issue 13).

A KerasHub ``LlamaCausalLM`` built from a config with a fixed seed, so that every contender's
process builds the same weights (no file to load: a LoRA-enabled KerasHub model need not
survive ``load_model``). Batches: random token ids, a padding mask with the last quarter of
every second row padded, next-token labels and the mask as the loss's weights, as KerasHub's
``CausalLM`` trains. The step of every kind takes ``(x, (labels, weights))``.

Schemes: ``full``; ``lora`` (``backbone.enable_lora(8)``: the query and value projections'
factors); ``last2`` (the last two decoder blocks and the final norm); ``norms`` (every RMS
norm's scale: a sparse scheme whose backward still crosses every block).

Only ``bench/worker.py`` (TF kinds) and ``bench/studies/lm_steps.py`` import the TF parts,
inside the functions.
"""
from __future__ import annotations

import numpy as np

# about 15M parameters: 4 blocks of width 512 (8 query heads, 2 key/value heads, a SwiGLU
# MLP of 1376), an 8192-token vocabulary with tied input/output embeddings
CONFIG = {"vocabulary_size": 8192, "num_layers": 4, "num_query_heads": 8,
          "num_key_value_heads": 2, "hidden_dim": 512, "intermediate_dim": 1376}
SCHEMES = ("full", "lora", "last2", "norms")
LORA_RANK = 8
LEARNING_RATE = 0.01


def build(config: dict, scheme: str):
    """The causal LM of ``config`` (seed 0), LoRA-enabled for the ``lora`` scheme."""
    import keras
    import keras_hub
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.LlamaBackbone(**config, tie_word_embeddings=True)
    if scheme == "lora":
        backbone.enable_lora(LORA_RANK)
    return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)


def scheme_for(model, scheme: str):
    """What ``tfpock.optimize`` takes for ``scheme`` (a LoRA model trains its factors under
    "full": the base kernels are not trainable)."""
    import tfpock
    if scheme in ("full", "lora"):
        return "full"
    if scheme == "last2":
        return tfpock.Scheme.last_blocks(model, 2, pattern=r"transformer_layer_\d+")
    if scheme == "norms":
        norms = [v.path.rsplit("/", 1)[0] for v in model.trainable_variables
                 if v.path.endswith("layernorm/scale")]
        return {"default": "frozen", "layers": {name: "full" for name in norms}}
    raise ValueError(f"unknown scheme {scheme!r}; one of {SCHEMES}")


def loss_fn():
    import keras
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def batches(vocab: int, batch: int, seq: int, count: int = 4, seed: int = 0) -> list:
    """``count`` fixed ``(x, (labels, weights))`` batches."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        mask = np.ones((batch, seq), np.int32)
        mask[1::2, seq - seq // 4:] = 0
        ids = rng.integers(1, vocab, (batch, seq)).astype(np.int32) * mask
        labels = rng.integers(1, vocab, (batch, seq)).astype(np.int32)
        out.append(({"token_ids": ids, "padding_mask": mask},
                    (labels, mask.astype(np.float32))))
    return out


def make_step(spec: dict):
    """One training step of kind ``lm_keras`` (``train_on_batch``, every weight),
    ``lm_tf_function`` (GradientTape + SGD on the scheme's weights) or ``lm_tfpock`` (the
    Trainer on ``model_file``); ``lm_infer``: the file's ``infer``."""
    kind = spec["kind"]
    if kind in ("lm_tfpock", "lm_infer"):
        from tfpock.runtime import Trainer
        trainer = Trainer(spec["model_file"], num_threads=spec["threads"])
        if kind == "lm_infer":
            return lambda x, y: trainer.infer(x)
        return lambda x, y: trainer.train(x, y[0], sample_weight=y[1])
    import keras
    import tensorflow as tf
    model = build(spec["config"], spec["scheme"])
    if kind == "lm_keras":
        model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=loss_fn())
        return lambda x, y: model.train_on_batch(x, y[0], sample_weight=y[1])
    import tfpock
    paths = set(tfpock.Scheme.parse(scheme_for(model, spec["scheme"]), model)
                .trained_paths(model))
    trained = [v for v in model.trainable_variables if v.path in paths]
    loss = loss_fn()

    @tf.function
    def step(x, labels, weights):
        with tf.GradientTape() as tape:
            value = loss(labels, model(x, training=True), sample_weight=weights)
        for var, grad in zip(trained, tape.gradient(value, trained)):
            var.assign_sub(LEARNING_RATE * grad)
        return value
    return lambda x, y: step(x, *y).numpy()
