"""GraphDef liveness: hand-computed peaks on tiny graphs, and the figures pass records carry.

Every tensor below is float32; (4, 8) is 128 bytes. A graph's "steps" are its operators in
topological order (Const, Placeholder and Identity nodes are not operators).
"""
from __future__ import annotations

import keras
import pytest
import tensorflow as tf

import tfpock
from graph_passes.dce import DeadCodeElimination
from graph_passes.ir import Graph
from graph_passes.liveness import peak_live_bytes
from graph_passes.pass_base import Sequential
from tfpock.testing import models
from tfpock.testing.litert import convert_builtins_only
from tfpock.tflite import memory


def build(fn, inputs: dict[str, tuple], params: dict[str, tuple] = ()) -> Graph:
    """``fn(**placeholders)`` -> {output name: tensor}, as a Graph whose ``inputs`` and
    ``params`` are the placeholders of those names and shapes."""
    params = dict(params)
    scratch = tf.Graph()
    with scratch.as_default():
        feeds = {name: tf.compat.v1.placeholder(tf.float32, shape, name=name)
                 for name, shape in {**inputs, **params}.items()}
        outputs = fn(**feeds)
    return Graph(scratch.as_graph_def(), {k: feeds[k].name for k in inputs},
                 {k: t.name for k, t in outputs.items()}, {k: feeds[k].name for k in params})


def chain(x):
    y1 = tf.multiply(x, 2.0, name="y1")
    y2 = tf.add(y1, 1.0, name="y2")
    return {"out": tf.multiply(y2, y1, name="out")}


def test_chain_matches_the_exported_timeline():
    # step 0 (y1): x, y1 | step 1 (y2): y1, y2 | step 2 (out): y1, y2, out
    result = peak_live_bytes(build(chain, {"x": (4, 8)}))
    assert result.peak_bytes == 384 and result.peak_node == "out"
    assert result.top_tensors == (("out:0", 128), ("y1:0", 128), ("y2:0", 128))
    assert result.unknown_shapes == 0
    exported = convert_builtins_only(lambda x: chain(x)["out"],
                                     [tf.TensorSpec((4, 8), tf.float32)])
    assert memory.timeline(exported, "serving_default").peak_bytes == 384


def test_a_tensor_dies_after_its_last_reader():
    def widen_then_reduce(x):
        wide = tf.tile(x, [1, 4], name="wide")             # (4, 32): 512 bytes
        total = tf.reduce_sum(wide, axis=1, name="total")  # (4,): 16 bytes
        return {"out": tf.multiply(total, 2.0, name="out")}
    # step 0: x + wide = 640 | step 1: wide + total = 528 | step 2: total + out = 32
    result = peak_live_bytes(build(widen_then_reduce, {"x": (4, 8)}))
    assert (result.peak_bytes, result.peak_node) == (640, "wide")


@pytest.mark.parametrize("skip, peak", [(True, 384), (False, 256)])
def test_a_skip_connection_keeps_its_tensor_alive(skip, peak):
    def block(x):
        a = tf.nn.relu(x, name="a")
        c = tf.sigmoid(tf.tanh(a, name="b"), name="c")
        return {"out": tf.add(c, a, name="out") if skip else tf.multiply(c, 2.0, name="out")}
    # with the skip, a lives to the last step: a + b + c at step 2 (a + c + out at step 3);
    # without it, never more than two tensors of 128 bytes are alive
    assert peak_live_bytes(build(block, {"x": (4, 8)})).peak_bytes == peak


def weighted(x, w):
    bias = tf.constant(1.0, shape=(1000,), name="bias")             # 4,000 bytes of data
    product = tf.matmul(x, tf.identity(w, name="read"), name="product")   # (1, 1000)
    return {"out": tf.add(product, bias, name="out")}


def test_weights_constants_and_state_are_not_activations():
    # w (32,000 bytes) is a param and the bias a Const: only x, product and out count;
    # step 0: x + product = 4,032 | step 1: product + out = 8,000
    graph = build(weighted, {"x": (1, 8)}, params={"w": (8, 1000)})
    assert peak_live_bytes(graph).peak_bytes == 8000
    # the same placeholder as a signature input is an activation, alive from the start
    as_input = build(weighted, {"x": (1, 8), "w": (8, 1000)})
    assert peak_live_bytes(as_input).peak_bytes == 32 + 32_000 + 4000


def test_a_dead_node_counts_until_dce_removes_it():
    def with_dead_branch(x):
        tf.tile(x, [1, 1000], name="dead")  # (4, 8000): 128,000 bytes nobody reads
        return chain(x)
    # step 0 (dead): x + dead; then as in the chain
    graph = build(with_dead_branch, {"x": (4, 8)})
    assert peak_live_bytes(graph).peak_bytes == 128 + 128_000
    _, (record,) = Sequential([DeadCodeElimination()])(graph)
    assert (record.peak_live_before, record.peak_live_after) == (128 + 128_000, 384)


def test_unknown_batch_dimensions_take_the_inputs_batch():
    def fn(x, z, u):
        return {"sum": tf.add(x, z, name="sum"), "total": tf.reduce_sum(u, name="total")}
    # z (None, 8) counts as (4, 8); u (4, None) cannot be sized
    # step 0 (sum): x, z, sum = 384 | step 1 (total): sum, total = 132
    result = peak_live_bytes(build(fn, {"x": (4, 8), "z": (None, 8), "u": (4, None)}))
    assert (result.peak_bytes, result.unknown_shapes) == (384, 1)
    no_batch = peak_live_bytes(build(lambda x: {"y": tf.nn.relu(x)}, {"x": (None, 8)}))
    assert (no_batch.peak_bytes, no_batch.unknown_shapes) == (0, 2)


# ---- the figures of a real program ----------------------------------------------------------
@pytest.fixture(scope="module")
def program():
    return tfpock.optimize(models.mlp(), loss="sparse_categorical_crossentropy",
                           optimizer=keras.optimizers.SGD(0.1), scheme="bias", batch_size=4,
                           passes={"reorder": True})


def test_each_pass_record_carries_its_peaks(program):
    for records in program.pass_records.values():
        assert all(r.peak_live_before > 0 and r.peak_live_after > 0 for r in records)
        for earlier, later in zip(records, records[1:]):
            assert later.peak_live_before == earlier.peak_live_after
    prune = next(r for r in program.pass_records["train"] if r.name == "prune")
    # bias-only: the weight gradients and the activations kept for them are gone
    assert prune.peak_live_after < prune.peak_live_before


def test_report_shows_the_peaks_and_after_export_the_files_timeline(program):
    prune = next(r for r in program.pass_records["train"] if r.name == "prune")
    before, after = prune.peak_live_before / 1024, prune.peak_live_after / 1024
    assert f"peak live {before:.1f} -> {after:.1f} KB" in program.report()
    assert "[export]" not in program.report()
    content = program.to_tflite()
    report = program.report()
    assert "[export] peak live per signature: the file's timeline" in report
    peak = memory.timeline(content, "train").peak_op
    assert f"  train    {peak.live_bytes / 1024:.1f} KB at op {peak.index} {peak.op}" in report
    fuse, reorder, inplace = program.pass_records["export"]
    assert (fuse.name, reorder.name, inplace.name) == ("fuse", "reorder", "inplace")
    assert reorder.peak_live_after == peak.live_bytes
    assert (f"peak live {reorder.peak_live_before / 1024:.1f} -> "
            f"{reorder.peak_live_after / 1024:.1f} KB") in report
