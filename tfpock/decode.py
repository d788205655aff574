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
runtime keeps it as a numpy array and passes it in and out of each call. Variables would
save that copy in and out but TFLite copies a resource variable on every read and assign
too, a file would need a reset signature and one cache per batch row count, and the copy is
small against the step: on the 15M Llama a window-1 decode step at cache length 256 (cache
4 x 2 x 256 x 2 x 64 floats, 1 MB) costs about what ``infer`` of one token does
(``bench/results/2026-12-07-x86_64-2core-lm-kvcache.md``).

The window is one token: the generation step. A prompt is fed through the same signature one
token at a time (prefill); a second signature with a longer window would prefill faster but
doubles what the export converts (same file).

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
