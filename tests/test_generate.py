"""``Trainer.generate`` on ai-edge-litert: greedy generation equals Keras' own greedy loop
(the argmax of the Keras model's logits on the exact, unpadded sequence, token by token) on
KerasHub's tiny Llama, also past the window (it slides); sampling is reproducible with a
seed; a stop token ends a row; a model with one input (no padding mask) generates too."""
from __future__ import annotations

import keras
import numpy as np
import pytest

import tfpock
from tests.test_keras_hub import SEQ, exported, loss_fn, tiny_llama
from tfpock.runtime import InputError, Trainer


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """The tiny Llama's file (compiled once with tests/test_keras_hub.py's full case) and
    the Keras model it was compiled from (the same seed: the same weights)."""
    path = tmp_path_factory.mktemp("generate") / "llama.tflite"
    path.write_bytes(exported("full")[1])
    return tiny_llama(), Trainer(path)


def keras_greedy(model, prompt, new: int, window: int, with_mask: bool = True):
    """Keras' greedy loop: the model on the last ``window`` tokens (no padding), the argmax
    of the last position's logits; also the smallest top-1/top-2 logit gap seen (the
    comparison means something only if no step is a near tie)."""
    ids, gap = list(prompt), np.inf
    for _ in range(new):
        w = np.array(ids[-window:], np.int32)[None]
        x = {"token_ids": w, "padding_mask": np.ones_like(w)} if with_mask else w
        logits = np.asarray(model(x, training=False))[0, -1]
        top = np.sort(logits)[-2:]
        gap = min(gap, top[1] - top[0])
        ids.append(int(logits.argmax()))
    return np.array(ids), gap


def test_greedy_equals_keras_greedy_loop(llama):
    model, trainer = llama
    prompts = np.array([[5, 17, 99], [64, 3, 3]], np.int32)
    new = SEQ + 4   # past the 8-token window: the last 8 tokens slide
    out = trainer.generate(prompts, new)
    assert out.shape == (2, 3 + new) and out.dtype == np.int32
    for row, prompt in zip(out, prompts):
        expected, gap = keras_greedy(model, prompt, new, SEQ)
        assert gap > 1e-4, "a near tie would make the comparison luck"
        np.testing.assert_array_equal(row, expected)
    # one prompt (1-D) is a 1-D answer; three rows run as two batches of two
    np.testing.assert_array_equal(trainer.generate(prompts[1], new), out[1])
    three = trainer.generate(np.concatenate([prompts, prompts[:1]]), 3)
    np.testing.assert_array_equal(three, np.concatenate([out, out[:1]])[:, :6])


def test_sampling_is_reproducible_with_a_seed(llama):
    _, trainer = llama
    prompt = np.array([5, 17, 99], np.int32)
    a = trainer.generate(prompt, 6, temperature=1.5, seed=7)
    np.testing.assert_array_equal(a, trainer.generate(prompt, 6, temperature=1.5, seed=7))
    draws = {tuple(trainer.generate(prompt, 6, temperature=1.5, seed=s)) for s in range(4)}
    assert len(draws) > 1   # the seed matters: sampling is not the argmax
    # top_k=1 leaves only the argmax, whatever the temperature
    np.testing.assert_array_equal(trainer.generate(prompt, 6, temperature=2.0, seed=1, top_k=1),
                                  trainer.generate(prompt, 6))


def test_stop_token_ends_a_row(llama):
    _, trainer = llama
    prompts = np.array([[5, 17, 99], [64, 3, 3]], np.int32)
    greedy = trainer.generate(prompts, 6)
    stop = int(greedy[0, 4])   # row 0's second generated token
    out = trainer.generate(prompts, 6, stop_token_ids=[stop], pad_id=0)
    first = 3 + int(np.flatnonzero(greedy[0, 3:] == stop)[0])
    np.testing.assert_array_equal(out[0, :first + 1], greedy[0, :first + 1])
    assert (out[0, first + 1:] == 0).all()
    row1_stop = np.flatnonzero(greedy[1, 3:] == stop)
    upto = 3 + (int(row1_stop[0]) + 1 if row1_stop.size else 6)
    np.testing.assert_array_equal(out[1, :upto], greedy[1, :upto])


def test_bad_arguments_are_named(llama):
    _, trainer = llama
    with pytest.raises(InputError, match=r"outside \[0, 128\)"):
        trainer.generate(np.array([1, 500]), 2)
    with pytest.raises(InputError, match="temperature"):
        trainer.generate(np.array([1, 2]), 2, temperature=-1.0)
    with pytest.raises(InputError, match="top_k"):
        trainer.generate(np.array([1, 2]), 2, temperature=1.0, top_k=0)
    with pytest.raises(InputError, match="prompt_ids"):
        trainer.generate(np.zeros((2, 0), np.int32), 2)


def test_single_input_model_without_mask(tmp_path):
    """Token ids alone (the input is ``x``): each position's logits depend on its token only,
    so the window's padding cannot leak; greedy equals Keras'."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,), dtype="int32"), keras.layers.Embedding(12, 8),
                              keras.layers.Dense(12)])
    program = tfpock.optimize(model, loss=loss_fn(), optimizer=keras.optimizers.SGD(0.1),
                              batch_size=2)
    program.export(tmp_path / "bigram.tflite")
    out = Trainer(tmp_path / "bigram.tflite").generate(np.array([3]), 6)
    expected, gap = keras_greedy(model, [3], 6, 4, with_mask=False)
    assert gap > 1e-4
    np.testing.assert_array_equal(out, expected)
