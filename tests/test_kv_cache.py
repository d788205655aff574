"""The key/value-cache ``decode`` signature (``optimize(..., kv_cache=True)``) on ai-edge-litert:
its logits and cache equal KerasHub's ``call_with_cache`` (before and after device training:
it reads the trained weights), ``Trainer.generate`` with it equals Keras' greedy loop and the
windowed path (greedy and seeded sampling, past the cache's length, rows over several
batches) on the tiny Llama and the tiny Gemma (sliding-window attention, soft caps); a model
without ``call_with_cache`` is refused by name. One export per model: the Llama's is shared
with tests/test_keras_hub.py and tests/test_generate.py."""
from __future__ import annotations

import keras
import numpy as np
import pytest

import tfpock
from tests.numerics import assert_close
from tests.test_generate import keras_greedy
from tests.test_keras_hub import (BATCH, LR, SEQ, SHAPES, batch, exported, loss_fn,
                                  tiny_llama)
from tests.test_keras_hub_models import tiny_gemma
from tfpock.errors import UnsupportedModelError
from tfpock.runtime import InputError, Trainer
from tfpock.tflite import model_file

MODELS = {"llama": tiny_llama, "gemma": tiny_gemma}


@pytest.fixture(scope="module", params=list(MODELS))
def cached(request, tmp_path_factory):
    """(name, the Keras model, the file's path) of a model compiled with kv_cache=True: the
    Llama's is tests/test_keras_hub.py's "full" file (compiled once per session)."""
    path = tmp_path_factory.mktemp(request.param) / "model.tflite"
    model = MODELS[request.param]()
    if request.param == "llama":
        path.write_bytes(exported("full")[1])
        return request.param, model, path
    program = tfpock.optimize(model, loss=loss_fn(), optimizer=keras.optimizers.SGD(LR),
                              batch_size=BATCH, sample_weight=True, input_shapes=SHAPES,
                              kv_cache=True)
    program.export(path)
    return request.param, model, path


def keras_decode(model, ids: np.ndarray, cache_shape):
    """Keras' call_with_cache fed ``ids`` one position at a time: each step's logits and the
    cache after the last."""
    cache = np.zeros(cache_shape, np.float32)
    steps = []
    for i in range(ids.shape[1]):
        logits, _, cache = model.call_with_cache(ids[:, i:i + 1], cache, i)
        steps.append(np.asarray(logits))
    return steps, np.asarray(cache)


def device_decode(trainer, ids: np.ndarray):
    cache = np.zeros(trainer.kv_cache["inputs"][1]["shape"], np.float32)
    steps = []
    for i in range(ids.shape[1]):
        logits, cache = trainer.decode(ids[:, i:i + 1], cache, i)
        steps.append(logits)
    return steps, cache


def test_decode_equals_call_with_cache_before_and_after_training(cached):
    name, model, path = cached
    content = path.read_bytes()
    parsed = model_file.read(content)
    assert "decode" in parsed.signatures and not parsed.custom_ops()
    assert "DYNAMIC_UPDATE_SLICE" in {op.name for sg in parsed.subgraphs if sg.name == "decode"
                                      for op in sg.operators}
    trainer = Trainer(path)
    assert trainer.kv_cache["length"] == SEQ
    ids = np.array([[5, 17, 99, 4, 8, 1], [64, 3, 3, 9, 127, 2]], np.int32)
    shape = trainer.kv_cache["inputs"][1]["shape"]
    expected, expected_cache = keras_decode(model, ids, shape)
    got, got_cache = device_decode(trainer, ids)
    assert_close(got, expected, atol=1e-5, rtol=1e-5, where=f"{name}: decode logits")
    assert_close(got_cache, expected_cache, atol=1e-5, rtol=1e-5, where=f"{name}: cache")

    x, y, weights = batch()
    for _ in range(3):
        trainer.train(x, y, sample_weight=weights)
    trained, before = trainer.weights(), [v.numpy() for v in model.weights]
    try:
        for v in model.weights:
            if v.path in trained:
                v.assign(trained[v.path])
        after, after_cache = keras_decode(model, ids, shape)
    finally:   # the module's other tests compare with the untrained model
        for v, value in zip(model.weights, before):
            v.assign(value)
    assert np.abs(after[-1] - expected[-1]).max() > 1e-2   # training moved the logits
    got, got_cache = device_decode(trainer, ids)
    assert_close(got, after, atol=1e-5, rtol=1e-5, where=f"{name}: decode after training")
    assert_close(got_cache, after_cache, atol=1e-5, rtol=1e-5, where=f"{name}: cache after")


def test_generate_with_the_cache_equals_keras_and_the_window(cached):
    name, model, path = cached
    trainer = Trainer(path)
    prompts = np.array([[5, 17, 99], [64, 3, 3], [7, 7, 30]], np.int32)   # 2 batches of rows
    new = SEQ + 3   # past the cache's 8 positions: infer's window slides, as without a cache
    out = trainer.generate(prompts, new)
    np.testing.assert_array_equal(out, trainer.generate(prompts, new, kv_cache=False))
    for row, prompt in zip(out[:2], prompts):
        # Keras' loop on exact prefixes, up to the window (what the cache serves)
        expected, gap = keras_greedy(model, prompt, SEQ - 3, SEQ)
        assert gap > 1e-4, f"{name}: a near tie would make the comparison luck"
        np.testing.assert_array_equal(row[:SEQ], expected)
    sampled = trainer.generate(prompts, 6, temperature=1.5, seed=3)
    np.testing.assert_array_equal(
        sampled, trainer.generate(prompts, 6, temperature=1.5, seed=3, kv_cache=False))


def test_decode_refuses_an_index_past_the_cache(cached):
    _, _, path = cached
    trainer = Trainer(path)
    cache = np.zeros(trainer.kv_cache["inputs"][1]["shape"], np.float32)
    with pytest.raises(InputError, match=r"cache_update_index 8 is outside \[0, 7\]"):
        trainer.decode(np.zeros((BATCH, 1), np.int32), cache, SEQ)


def test_a_model_without_call_with_cache_is_refused():
    model = keras.Sequential([keras.Input((4,), dtype="int32"), keras.layers.Embedding(12, 8),
                              keras.layers.Dense(12)])
    with pytest.raises(UnsupportedModelError, match=r"'sequential.*' \(Sequential\) has no "
                                                    r"call_with_cache"):
        tfpock.optimize(model, loss=loss_fn(), optimizer=keras.optimizers.SGD(0.1),
                        batch_size=2, kv_cache=True)
