"""Text generation on the device with a causal language model's ``infer`` signature, or its
``decode`` signature and a key/value cache when the file has one.

The exported ``infer`` takes a fixed window: ``[batch, seq]`` token ids (and a
``padding_mask`` when the model has one) -> ``[batch, seq, vocab]`` logits. Each new token is
one call of it: the tokens so far sit left-aligned in the window, the rest is padding (id
``pad_id``, mask 0), and the next token is chosen from the logits at the last real position.
A causal model's logits at position ``t`` depend on tokens ``0..t`` only, so the padding to
the right changes nothing: the result is the model's own next-token distribution. Past
``seq`` tokens the window slides (the last ``seq`` tokens; a rotary model then sees them at
positions ``0..seq-1``, as a Keras model given that window would).

The choice: greedy (``temperature == 0``: the argmax, the first on ties, as ``np.argmax``)
or sampled from ``softmax(logits / temperature)``, optionally over the ``top_k`` largest
logits only, with ``numpy.random.default_rng(seed)`` (a seed makes it reproducible). The
model's output is read as logits (as KerasHub's ``CausalLM`` and ``from_logits=True``
losses have it).

With a key/value cache (a file compiled with ``kv_cache=True`` has the ``decode``
signature, :mod:`tfpock.decode`): the prompt is fed one token at a time through ``decode``
(prefill), then each chosen token is fed at its position, one call each, the keys and values
of every earlier position read from the cache instead of recomputed. The cache holds
``infer``'s window: the logits are the same function of the same exact prefix, so greedy
tokens equal the windowed path's (tests/test_kv_cache.py); once the sequence outgrows the
cache, generation goes on with the sliding window, as without one.

Cost: without the cache every token runs the whole window, ``infer``'s time at ``seq``
whatever the prompt's length (on a 15M-parameter Llama, one thread, batch 1: 8 ms for a
window of 1, 46 ms for 64, 174 ms for 256; ``bench/results/2026-12-06-x86_64-2core-lm-
generate.md``). With it a token costs one ``decode`` step, near ``infer`` of one position,
growing with the cache's length: on that Llama (loaded machine) 16 ms with 80 positions and
23 ms with 256, against 88 and 304 ms for ``infer`` of the window; ``generate`` with a
16-token prompt is 4.7x faster for 64 new tokens at window 80 (53 against 10 tokens/s) and
10.8x for 240 new tokens at window 256 (29 against 2.4 tokens/s), the same greedy tokens
(``bench/results/2026-12-07-x86_64-2core-lm-kvcache.md``, ``python -m
bench.studies.lm_kvcache``). Feeding the prompt one token at a time costs 265 ms for 16
tokens there (one ``infer`` of a 16-token window: 25 ms), about a fifth of the 64-token run.
"""
from __future__ import annotations

import numpy as np

from tfpock.runtime.validate import InputError

TOKEN_INPUTS = ("token_ids", "x")   # the token input's name: KerasHub's, or a single input


def window_layout(trainer) -> tuple[str, str | None, int]:
    """(token input name, padding-mask input name or None, window length) of a trainer's
    language model; refuses a model whose inputs are not token ids (and a mask)."""
    specs = trainer.input_specs
    token = next((name for name in TOKEN_INPUTS if name in specs), None)
    mask = "padding_mask" if "padding_mask" in specs else None
    extra = sorted(set(specs) - {token, mask})
    if token is None or extra or len(specs[token][0]) != 2 or \
            not np.issubdtype(specs[token][1], np.integer):
        raise InputError(f"generate: the model takes {', '.join(specs)}; generation needs "
                         f"integer token ids [batch, seq] named {' or '.join(TOKEN_INPUTS)} "
                         f"and optionally a padding_mask")
    output = trainer.metadata["output"]["shape"]
    if len(output) != 3 or output[1] != specs[token][0][1]:
        raise InputError(f"generate: the model's output has shape {tuple(output)}; generation "
                         f"needs next-token logits [batch, seq, vocab]")
    return token, mask, specs[token][0][1]


def generate(trainer, prompt_ids, max_new_tokens: int, temperature: float = 0.0,
             seed: int | None = None, top_k: int | None = None,
             stop_token_ids=(), pad_id: int = 0, kv_cache: bool = True) -> np.ndarray:
    """The prompt followed by up to ``max_new_tokens`` generated tokens.

    ``prompt_ids``: one prompt (1-D) or several of one length (2-D ``[rows, length]``, any
    number of rows: they run ``batch`` at a time). A row stops after it emits one of
    ``stop_token_ids``; its later positions hold ``pad_id``; generation ends when every row
    has stopped. ``kv_cache``: use the file's ``decode`` signature if it has one (False:
    ``infer``'s window for every token, as a file without it). Returns int32 ids, 1-D for a
    1-D prompt."""
    token, mask, seq = window_layout(trainer)
    vocab = trainer.metadata["output"]["shape"][2]
    prompts = np.asarray(prompt_ids)
    single = prompts.ndim == 1
    prompts = prompts[None] if single else prompts
    if prompts.ndim != 2 or prompts.shape[1] == 0 or not np.issubdtype(prompts.dtype,
                                                                       np.integer):
        raise InputError(f"generate: prompt_ids must be integer ids, 1-D or 2-D [rows, length] "
                         f"with at least one token, got {prompts.dtype} {prompts.shape}")
    if prompts.min() < 0 or prompts.max() >= vocab:
        raise InputError(f"generate: prompt_ids hold ids outside [0, {vocab})")
    if not (isinstance(max_new_tokens, (int, np.integer)) and max_new_tokens >= 0):
        raise InputError(f"generate: max_new_tokens must be an integer >= 0, got "
                         f"{max_new_tokens!r}")
    if not (np.isfinite(temperature) and temperature >= 0):
        raise InputError(f"generate: temperature must be finite and >= 0, got {temperature}")
    if top_k is not None and not (isinstance(top_k, (int, np.integer)) and 1 <= top_k <= vocab):
        raise InputError(f"generate: top_k must be an integer in [1, {vocab}], got {top_k!r}")
    rng = np.random.default_rng(seed)
    stops = np.asarray(list(stop_token_ids), np.int64)
    out = prompts.astype(np.int32)
    done = np.zeros(len(out), bool)
    cache = KvCache(trainer, len(out)) if kv_cache and trainer.kv_cache else None
    for _ in range(max_new_tokens):
        if done.all():
            break
        logits = cache.last_logits(out) if cache is not None else None
        if logits is None:   # no cache, or the sequence outgrew it: infer's sliding window
            logits = _last_logits(trainer, out, token, mask, seq, pad_id)
        chosen = _choose(logits, temperature, top_k, rng)
        chosen = np.where(done, pad_id, chosen).astype(np.int32)
        out = np.concatenate([out, chosen[:, None]], axis=1)
        done |= np.isin(chosen, stops)
    return out[0] if single else out


class KvCache:
    """The key/value caches of ``rows`` sequences, ``batch`` rows per cache (the decode
    signature's batch; the last one's spare rows repeat its first), and how many positions
    they hold. Each step feeds the positions not yet in the cache one at a time (the prompt
    on the first step, then the token chosen last), the window-1 ``decode`` at each."""

    def __init__(self, trainer, rows: int):
        layout = trainer.kv_cache
        specs = {s["name"]: s for s in layout["inputs"]}
        self._trainer, self._rows, self.length = trainer, rows, layout["length"]
        self._batch = specs["token_ids"]["shape"][0]
        cache = specs["cache"]
        self._caches = [np.zeros(cache["shape"], cache["dtype"])
                        for _ in range(0, rows, self._batch)]
        self.filled = 0

    def last_logits(self, ids: np.ndarray) -> np.ndarray | None:
        """[rows, vocab]: each row's logits after its last token, or None once ``ids`` is
        longer than the cache (the caller then slides ``infer``'s window, as without one)."""
        if ids.shape[1] > self.length:
            return None
        logits = []
        for i, start in enumerate(range(0, self._rows, self._batch)):
            chunk = ids[start:start + self._batch]
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], self._batch - len(chunk), 0)])
            for position in range(self.filled, ids.shape[1]):
                last, self._caches[i] = self._trainer.decode(
                    chunk[:, position:position + 1], self._caches[i], position)
            logits.append(last[:, -1])
        self.filled = ids.shape[1]
        return np.asarray(np.concatenate(logits)[:self._rows], np.float64)


def _last_logits(trainer, ids: np.ndarray, token: str, mask: str | None, seq: int,
                 pad_id: int) -> np.ndarray:
    """[rows, vocab]: the logits at each row's last token, its last ``seq`` tokens
    left-aligned in the window."""
    window = ids[:, -seq:]
    length = window.shape[1]
    x = {token: np.full((len(ids), seq), pad_id, np.int32)}
    x[token][:, :length] = window
    if mask is not None:
        x[mask] = np.zeros((len(ids), seq), np.int32)
        x[mask][:, :length] = 1
    logits = trainer.predict(x if mask is not None or token != "x" else x[token])
    return np.asarray(logits[:, length - 1], np.float64)


def _choose(logits: np.ndarray, temperature: float, top_k: int | None,
            rng: np.random.Generator) -> np.ndarray:
    """Each row's next token: the argmax at temperature 0, else a draw from
    softmax(logits / temperature) restricted to the ``top_k`` largest logits."""
    if temperature == 0:
        return logits.argmax(axis=1)
    scaled = logits / temperature
    if top_k is not None:
        kth = np.sort(scaled, axis=1)[:, -top_k][:, None]
        scaled = np.where(scaled >= kth, scaled, -np.inf)
    probs = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    return np.array([rng.choice(len(p), p=p) for p in probs])
