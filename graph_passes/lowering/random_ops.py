"""Stateless random ops (Keras 3 Dropout, GaussianNoise) -> TFLite's stateful RANDOM_* ops.

Keras 3 draws its dropout mask with ``tf.random.stateless_uniform(shape, seed)``, the seed
read from a ``SeedGenerator`` state variable: in the graph that is
``StatelessRandomGetKeyCounter`` feeding ``StatelessRandomUniformV2`` (``...NormalV2`` for
``GaussianNoise``). TFLite has neither, but it has RANDOM_UNIFORM and RANDOM_STANDARD_NORMAL,
which the converter makes from TF's stateful ``RandomUniform`` / ``RandomStandardNormal`` with
static ``seed``/``seed2`` attributes and a constant shape. The rules replace the stateless op
by that stateful op; the key/counter producer is left dead for the DCE pass.

What changes, measured (TF 2.21, ai-edge-litert 2.3, ``RandomUniform`` / ``RandomStandardNormal``
with the same ``seed``/``seed2``, including seed=0): the *first* invocation of a freshly
created TFLite interpreter returns bit-identical numbers to TF's first run of the op, so both
use Philox the same way; later invocations differ from TF's later runs (they advance their
counters differently), and each invocation of the same interpreter draws new numbers. A new
interpreter starts the sequence again.

So the lowered mask no longer depends on the seed tensor: it is a fresh mask per training step
(what dropout wants, and what the traced step does not do by itself, since it never writes the
advanced seed back), reproducible per interpreter from ``seed`` and the node's ``seed2``. Exact
equality with TF's stateless Philox stream would need 64-bit integer arithmetic that TFLite's
builtins lack; it is not attempted. ``seed2`` is a CRC32 of the node name, a stable hash (not
a parse) that gives each random op of the graph its own stream.
"""
from __future__ import annotations

import zlib

import tensorflow as tf

from graph_passes.lowering.base import LoweringRule

DEFAULT_SEED = 0x7F0C  # any nonzero value: seed == seed2 == 0 means "seed from the clock"


class _StatelessToStateful(LoweringRule):
    """Replaces a stateless random op of static shape by its stateful TFLite-builtin twin."""

    stateful = None  # the tf.raw_ops function that becomes the TFLite builtin

    def __init__(self, seed: int = DEFAULT_SEED):
        self.seed = seed

    def check(self, graph, node):
        dtype = graph.attr(node, "dtype")
        if dtype != tf.float32:
            return f"dtype {dtype.name} is not supported (only float32)"
        shape = graph.spec(node.name).shape
        if shape is None or any(d is None for d in shape):
            return f"needs a static output shape, got {shape}"
        return None

    def inputs(self, graph, node):
        """None: the seed/key/counter inputs are what the stateful op does without."""
        return []

    def build(self, graph, node):
        shape = tf.constant(graph.spec(node.name).shape, tf.int32)
        seed2 = zlib.crc32(node.name.encode()) & 0x7FFFFFFF or 1
        return [type(self).stateful(shape=shape, dtype=tf.float32, seed=self.seed, seed2=seed2)]


class StatelessUniformV2Rule(_StatelessToStateful):
    op_type = "StatelessRandomUniformV2"
    stateful = staticmethod(tf.raw_ops.RandomUniform)


class StatelessUniformRule(_StatelessToStateful):
    op_type = "StatelessRandomUniform"
    stateful = staticmethod(tf.raw_ops.RandomUniform)


class StatelessNormalV2Rule(_StatelessToStateful):
    op_type = "StatelessRandomNormalV2"
    stateful = staticmethod(tf.raw_ops.RandomStandardNormal)


class StatelessNormalRule(_StatelessToStateful):
    op_type = "StatelessRandomNormal"
    stateful = staticmethod(tf.raw_ops.RandomStandardNormal)


RULES = [StatelessUniformV2Rule(), StatelessUniformRule(), StatelessNormalV2Rule(),
         StatelessNormalRule()]
