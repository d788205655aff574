"""The key/value-cache ``decode`` step of a causal language model, traced like ``infer``.

KerasHub's causal LMs (``LlamaCausalLM``, ``GemmaCausalLM``, and most of the others) have
``call_with_cache(token_ids, cache, cache_update_index) -> (logits, hidden, cache)``: the
model on new tokens at positions ``index .. index + window - 1``, their keys and values
written into ``cache`` there (``DYNAMIC_UPDATE_SLICE``), the queries attending to cache
positions ``<= their own`` (a causal mask offset by ``index``; later positions hold zeros or
stale values and are masked). The traced graph:

    decode(token_ids [b, window], cache [b, layers, 2, length, kv_heads, head_dim],
           cache_update_index [1], params...) -> logits [b, window, vocab], cache

It reads the model weights by the same param keys as ``infer`` (``ParamLayout.model_keys``),
under a :class:`keras.StatelessScope` that maps each model variable to its placeholder (what
``stateless_call`` does for ``call``), so the exporter wires it to the same variables:
after training, ``decode`` generates with the trained weights.

The decision: the cache is a signature input and output (stateless), not variables. The
runtime keeps it as a numpy array and passes it in and out of each call: two copies of the
cache per step (1 MB for the 15M Llama at 256 positions), small against the step (23 ms,
loaded). Variables would save only those two: TFLite's READ_VARIABLE and ASSIGN_VARIABLE
copy too, and the graph's own copies (each layer's slice of the stacked cache, the stack of
the updated ones, DYNAMIC_UPDATE_SLICE) stay either way; and a file would need a reset
signature and a cache for each batch of rows. Measured on that Llama: a decode step takes
16 ms with 80 positions and 23 ms with 256 (loaded), against 88 and 304 ms for ``infer`` of
the window, what a token costs without the cache; generation is 4.7x faster at window 80
(64 new tokens) and 10.8x at 256 (240 new tokens), greedy tokens equal
(``bench/results/2026-12-07-x86_64-2core-lm-kvcache.md``, ``python -m
bench.studies.lm_kvcache``). The step grows with the cache's length: attention over it and
those copies; per-layer cache inputs would avoid the slices and the stack but depart from
``call_with_cache``'s stacked layout (not built).

The window is one token: the generation step. The prompt is fed through the same signature
one token at a time (prefill), the simpler form: measured, 16 prompt tokens take 265 ms that
way against 25 ms for one ``infer`` of a 16-token window, the lower bound for a prefill
signature with that window, so such a signature would save about a fifth of a 64-token
generation (1.2 s cached) and a twentieth of a 240-token one. Not built: a second traced and
converted graph per file.

The option is off by default (``optimize(..., kv_cache=True)`` turns it on): it adds no
size to the file (106.8 MB either way for the ``norms`` scheme, whose frozen weights are
constants: the converter stores equal buffers once, it seems) but its export took 76 s
against 41 s without (window 64, loaded), and most files are exported to train.

``call_with_cache`` slices each layer's part of the 6-D cache; tflite-runtime 2.14 slices
at most 5 axes, so the lower pass merges axes first (``graph_passes/lowering/slicing.py``):
the file's decode runs there too (checked by hand on the tiny Llama: the same greedy tokens
as on ai-edge-litert; not in the suite: ``tests/lowering/test_slicing.py`` runs the
lowered slice on ai-edge-litert only).

The index is shape ``[1]``, not a scalar, as ``learning_rate`` (``tfpock/tracing.py`` says
why).
"""
from __future__ import annotations

import keras
import tensorflow as tf

from tfpock.errors import UnsupportedModelError

TOKENS, CACHE, INDEX = "token_ids", "cache", "cache_update_index"
WINDOW = 1   # new tokens per decode call


def check_decodable(model: keras.Model) -> None:
    """Refuses a model without KerasHub's ``call_with_cache``, naming it."""
    if not callable(getattr(model, "call_with_cache", None)):
        raise UnsupportedModelError(
            f"kv_cache=True: model {model.name!r} ({type(model).__name__}) has no "
            "call_with_cache(token_ids, cache, cache_update_index); the decode signature is "
            "built from KerasHub causal LMs' (LlamaCausalLM, GemmaCausalLM, ...). Compile "
            "without kv_cache: Trainer.generate then runs infer's whole window per token")


def cache_spec(model: keras.Model, batch_size: int, length: int) -> tf.TensorSpec:
    """The cache's static spec, as the model builds an empty one for ``length`` positions.
    KerasHub's ``_build_cache`` is private but is the one place each model says its cache's
    layout (Gemma's head size is its own attribute, Llama's is width / heads): it is traced
    here, never run."""
    ids = tf.TensorSpec((batch_size, length), tf.int32)
    concrete = tf.function(lambda t: model._build_cache(t)[1],  # noqa: SLF001, see docstring
                           autograph=False).get_concrete_function(ids)
    out = concrete.structured_outputs
    return tf.TensorSpec(out.shape, out.dtype, name=CACHE)


def decode_function(model: keras.Model, layout, batch_size: int, length: int,
                    token_dtype: tf.DType):
    """The decode step of ``model`` traced for a cache of ``length`` positions (params:
    ``layout.model_keys``, after the inputs) and its input specs by name."""
    check_decodable(model)
    specs = {TOKENS: tf.TensorSpec((batch_size, WINDOW), token_dtype, name=TOKENS),
             CACHE: cache_spec(model, batch_size, length),
             INDEX: tf.TensorSpec((1,), tf.int32, name=INDEX)}
    variables = list(model.trainable_variables) + list(model.non_trainable_variables)

    def decode_step(token_ids, cache, index, *values):
        t, n = layout.weight_tensors(dict(zip(layout.model_keys, values)))
        with keras.StatelessScope(state_mapping=list(zip(variables, t + n))):
            logits, _, new_cache = model.call_with_cache(token_ids, cache,
                                                         tf.reshape(index, []))
        return {"logits": logits, "cache": new_cache}

    concrete = tf.function(decode_step, autograph=False).get_concrete_function(
        *specs.values(), *layout.specs(layout.model_keys))
    return concrete, specs
