"""The embedding gradient lowering (UnsortedSegmentSum -> SCATTER_ND): count, structure,
numbers in TF and on LiteRT (duplicate ids add up), where it must not fire, and the rule on
a whole Embedding step."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfpock
from graph_passes.lowering.embedding import UnsortedSegmentSumRule
from tests.lowering.harness import graph_of, lowered
from tests.numerics import assert_close
from tfpock.tflite import model_file


def _case(n=12, d=5, vocab=7, ids_dtype=np.int32, extra=()):
    rng = np.random.default_rng(0)
    values = rng.standard_normal((n, *extra, d)).astype(np.float32)
    ids = rng.integers(0, vocab, n).astype(ids_dtype)
    ids[:4] = ids[0]   # duplicates add up
    return values, ids


@pytest.mark.parametrize("ids_dtype, extra", [(np.int32, ()), (np.int64, (3,))],
                         ids=["int32-rank2", "int64-rank3"])
def test_scatter_matches_segment_sum(ids_dtype, extra):
    values, ids = _case(ids_dtype=ids_dtype, extra=extra)
    result = lowered(lambda v, i: tf.math.unsorted_segment_sum(v, i, 7),
                     UnsortedSegmentSumRule(), values, ids)
    assert (result.count, result.left) == (1, 0)
    assert result.graph.op_histogram()["ScatterNd"] == 1
    reference = result.reference()
    assert_close(result.run_tf(), reference)
    assert_close(result.run_litert(), reference, atol=1e-6)


def test_dynamic_output_shape_is_left_to_the_converter():
    """A segment count known only at run time: the builtin stays (``applies`` is False)."""
    values, ids = _case()
    graph = graph_of(lambda v, i, k: tf.math.unsorted_segment_sum(v, i, k[0]), values, ids,
                     np.array([7], np.int32))
    [node] = graph.nodes_of(["UnsortedSegmentSum"])
    assert not UnsortedSegmentSumRule().applies(graph, node)


def test_embedding_step_uses_scatter_nd(tmp_path):
    """A trained Embedding's gradient is one SCATTER_ND in the exported train signature."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,), dtype="int32"),
                              keras.layers.Embedding(20, 4, name="embedding"),
                              keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(3, name="head")])
    program = tfpock.optimize(model, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), optimizer=keras.optimizers.SGD(0.1), batch_size=2)
    [lower] = [r for r in program.pass_records["train"] if r.name == "lower"]
    assert lower.stats["lowered"] == {"UnsortedSegmentSum": 1}
    parsed = model_file.read(program.to_tflite())
    ops = [op.name for sg in parsed.subgraphs if sg.name == "train" for op in sg.operators]
    assert ops.count("SCATTER_ND") == 1 and "UNSORTED_SEGMENT_SUM" not in ops
