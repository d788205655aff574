"""The embedding gradient (a gather's gradient) as one SCATTER_ND.

A gather ``E[ids]`` (Keras' ``Embedding``, KerasHub's ``ReversibleEmbedding``) has the
gradient ``dE[v] = sum of G[i] over the positions i with ids[i] == v``: TF writes it as
IndexedSlices, which the tape densifies as ``UnsortedSegmentSum(G, ids, vocab)``. TFLite has
that as a builtin, but its kernel is slow; three builtin forms give the same numbers (the
duplicates of one id add up in the same order):

    UNSORTED_SEGMENT_SUM(G, ids, V)
    SCATTER_ND(ids[..., None], G, [V, D])          (TFLite's kernel adds duplicates)
    BATCH_MATMUL(one_hot(ids, V)^T, G)              (V*N*D multiply-adds)

Decision: SCATTER_ND, for every vocabulary. On ai-edge-litert, one thread, it was the
fastest form in every case measured (N tokens, D wide, V words): 1.4x faster than
UNSORTED_SEGMENT_SUM at N=16, D=32, V=128 (0.013 vs 0.019 ms; the one-hot matmul ties there)
and 4-46x at V=1000-32000 (N=512, D=256, V=8000: 1.0 vs 46.8 ms); the one-hot matmul costs
V*N*D and is slowest from V=1000 on. Measured by ``python -m
bench.studies.lowering_embedding``: ``bench/results/2026-12-03-x86_64-2core-lowering-embedding.md``
(a loaded machine: the ratios, not the milliseconds, are the finding).

The rule rewrites every float ``UnsortedSegmentSum`` whose output shape is static; ids must be
in ``[0, V)``, which a gather's ids are (TF's op would drop others; the gather before it would
already have failed on them on the device).
"""
from __future__ import annotations

import tensorflow as tf

from graph_passes.lowering.base import LoweringRule


def scatter_form(values: tf.Tensor, ids: tf.Tensor, out_shape) -> tf.Tensor:
    """``UnsortedSegmentSum(values, ids, out_shape[0])`` as one scatter (``out_shape`` =
    ``[V, *values.shape[ids.rank:]]``)."""
    if ids.dtype != tf.int32:
        ids = tf.cast(ids, tf.int32)   # token ids fit; one index type for every runtime
    return tf.scatter_nd(tf.expand_dims(ids, -1), values, list(out_shape))


def segment_sum_form(values: tf.Tensor, ids: tf.Tensor, out_shape) -> tf.Tensor:
    """What the tape writes (for the study)."""
    return tf.math.unsorted_segment_sum(values, ids, out_shape[0])


def one_hot_form(values: tf.Tensor, ids: tf.Tensor, out_shape) -> tf.Tensor:
    """The one-hot matmul, for a rank-1 ``ids`` and rank-2 ``values`` (for the study)."""
    return tf.matmul(tf.one_hot(ids, out_shape[0], dtype=values.dtype), values, transpose_a=True)


class UnsortedSegmentSumRule(LoweringRule):
    """UnsortedSegmentSum -> SCATTER_ND where the output shape is static (the module doc)."""

    op_type = "UnsortedSegmentSum"

    def applies(self, graph, node):
        shape = graph.spec(node.name).shape
        return (graph.attr(node, "T") in (tf.float32, tf.float16)
                and shape is not None and None not in shape)

    def inputs(self, graph, node):
        return list(node.input[:2])   # the segment count is the static output shape's

    def build(self, graph, node, values, ids):
        return [scatter_form(values, ids, graph.spec(node.name).shape)]


RULES = [UnsortedSegmentSumRule()]
