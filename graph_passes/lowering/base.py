"""The contract of a lowering rule: one TF op that TFLite lacks as a builtin -> builtin ops.

A rule reads as the style guide asks: the op type it matches (its *pattern*), a ``check`` that
says why it declines a node, and a ``rewrite`` that builds the replacement from ordinary TF ops
that the TFLite converter turns into builtins. The lower pass
(:mod:`graph_passes.lower`) splices the replacement in with :meth:`Graph.splice`.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from graph_passes.ir import Graph, parse_ref


class LoweringRule:
    """Base class: subclasses set ``op_type`` and implement ``rewrite`` (and maybe ``check``).

    ``rewrite(graph, node, *inputs)`` runs inside a scratch ``tf.Graph``: ``inputs`` are
    placeholders with the static shapes and dtypes of ``self.inputs(graph, node)``; it returns
    one tensor per output of ``node`` (only output 0 for single-output ops). Everything static
    (attributes, shapes of inputs and of the node's own outputs) is read from ``graph`` and
    ``node``: ``graph.attr(node, "strides")``, ``graph.spec(node.input[0]).shape``,
    ``graph.spec(node.name).shape``.
    """

    op_type: str = ""

    def applies(self, graph: Graph, node: tf.compat.v1.NodeDef) -> bool:
        """Whether this node needs lowering at all; False leaves it for the converter (for
        op types TFLite has as a builtin in some configurations only)."""
        return True

    def check(self, graph: Graph, node: tf.compat.v1.NodeDef) -> str | None:
        """Returns why this node cannot be lowered (an error for the user), or None."""
        return None

    def inputs(self, graph: Graph, node: tf.compat.v1.NodeDef) -> list[str]:
        """The data inputs the replacement reads; by default all of the node's data inputs."""
        return [ref for ref in node.input if parse_ref(ref)[1] >= 0]

    def rewrite(self, graph: Graph, node: tf.compat.v1.NodeDef,
                *inputs: tf.Tensor) -> Sequence[tf.Tensor]:
        raise NotImplementedError


def require_nhwc(graph: Graph, node: tf.compat.v1.NodeDef) -> str | None:
    """Shared check: only the NHWC layout (Keras' channels_last on CPU) is lowered."""
    fmt = graph.attr(node, "data_format", "NHWC")
    if fmt not in ("NHWC", "NWC"):
        return f"data_format {fmt} is not supported (only NHWC / channels_last)"
    return None


def require_float32(graph: Graph, node: tf.compat.v1.NodeDef) -> str | None:
    dtype = graph.attr(node, "T")
    if dtype is not None and dtype != tf.float32:
        return f"dtype {dtype.name} is not supported (only float32)"
    return None
