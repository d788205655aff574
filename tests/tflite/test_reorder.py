"""Reorder: a memory-aware schedule of a TFLite subgraph, bit-identical results."""
from __future__ import annotations

import keras
import numpy as np
import pytest

import tfpock
from tfpock.testing import models
from tfpock.tflite import memory, model_file
from tfpock.tflite.reorder import reorder
from tfpock.runtime import Trainer


@pytest.fixture(scope="module")
def cnn_full(tmp_path_factory):
    program = tfpock.optimize(models.every_layer_cnn(dropout=0.0),
                              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                              optimizer=keras.optimizers.Adam(1e-3), scheme="full", batch_size=8,
                              nonfinite="apply")   # the guard holds every update to its verdict
    folder = tmp_path_factory.mktemp("reorder")
    plain = folder / "plain.tflite"
    plain.write_bytes(program.to_tflite())
    content, result = reorder(program.to_tflite(), ["train"])
    reordered = folder / "reordered.tflite"
    reordered.write_bytes(content)
    return plain, reordered, result


def test_lowers_the_peak_of_live_activations(cnn_full):
    plain, reordered, result = cnn_full
    assert result.modified
    stats = result.stats["train"]
    assert stats["peak_bytes_after"] < stats["peak_bytes_before"]
    assert stats["peak_bytes_after"] == memory.timeline(reordered.read_bytes(), "train").peak_bytes


def test_same_operators_only_in_another_order(cnn_full):
    plain, reordered, _ = cnn_full
    a, b = model_file.read(plain.read_bytes()), model_file.read(reordered.read_bytes())
    assert a.op_histogram() == b.op_histogram()
    assert a.signatures == b.signatures
    ops_a = [op.name for op in a.subgraph("train").operators]
    ops_b = [op.name for op in b.subgraph("train").operators]
    assert ops_a != ops_b and ops_a[0] == ops_b[0] == "CALL_ONCE"
    # updates are assigned as soon as they exist, not after the whole backward pass
    first_assign_a = ops_a.index("ASSIGN_VARIABLE")
    first_assign_b = ops_b.index("ASSIGN_VARIABLE")
    assert first_assign_b < first_assign_a


def test_results_are_bit_identical(cnn_full):
    plain, reordered, _ = cnn_full
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    y = rng.integers(0, 4, 8).astype(np.int32)
    a, b = Trainer(plain), Trainer(reordered)
    for _ in range(3):
        assert a.train(x, y)["loss"] == b.train(x, y)["loss"]
    sa, sb = a.state(), b.state()
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
    np.testing.assert_array_equal(a.infer(x), b.infer(x))


def test_does_not_fire_on_an_already_good_order(cnn_full):
    _, reordered, _ = cnn_full
    again, result = reorder(reordered.read_bytes(), ["infer"])
    assert not result.modified and again == reordered.read_bytes()
