"""The contract of a lowering rule: one TF op that TFLite lacks as a builtin -> builtin ops.

A lowering rule is a :class:`graph_passes.rewrite.NodeRule` anchored at its one op type: a
``check`` that says why it declines a node (for lowering that is the user's error, raised by
the lower pass, :mod:`graph_passes.lower`), and a ``rewrite`` that splices in, with
:meth:`Graph.splice`, what ``build`` makes of the node from ordinary TF ops that the TFLite
converter turns into builtins.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from graph_passes.ir import Graph, parse_ref
from graph_passes.rewrite import NodeRule


class LoweringRule(NodeRule):
    """Base class: subclasses set ``op_type`` and implement ``build`` (and maybe ``check``).

    ``build(graph, node, *inputs)`` runs inside a scratch ``tf.Graph``: ``inputs`` are
    placeholders with the static shapes and dtypes of ``self.inputs(graph, node)``; it returns
    one tensor per output of ``node`` (only output 0 for single-output ops). Everything static
    (attributes, shapes of inputs and of the node's own outputs) is read from ``graph`` and
    ``node``: ``graph.attr(node, "strides")``, ``graph.spec(node.input[0]).shape``,
    ``graph.spec(node.name).shape``.
    """

    op_type: str = ""

    @property
    def name(self) -> str:
        return self.op_type

    @property
    def op_types(self) -> tuple[str, ...]:
        return (self.op_type,)

    def applies(self, graph: Graph, node: tf.compat.v1.NodeDef) -> bool:
        """Whether this node needs lowering at all; False leaves it for the converter (for
        op types TFLite has as a builtin in some configurations only)."""
        return True

    def match(self, graph: Graph, node: tf.compat.v1.NodeDef):
        return node if self.applies(graph, node) else None

    def check(self, graph: Graph, node: tf.compat.v1.NodeDef) -> str | None:
        """Returns why this node cannot be lowered (an error for the user), or None."""
        return None

    def inputs(self, graph: Graph, node: tf.compat.v1.NodeDef) -> list[str]:
        """The data inputs the replacement reads; by default all of the node's data inputs."""
        return [ref for ref in node.input if parse_ref(ref)[1] >= 0]

    def build(self, graph: Graph, node: tf.compat.v1.NodeDef,
              *inputs: tf.Tensor) -> Sequence[tf.Tensor]:
        raise NotImplementedError

    def rewrite(self, graph: Graph, node: tf.compat.v1.NodeDef) -> list[str]:
        """Replaces ``node`` by what ``build`` makes; returns the replacement's outputs. The
        node's readers read the replacement; dead producers are left to the DCE pass."""
        outputs = graph.splice(lambda *ins: self.build(graph, node, *ins),
                               self.inputs(graph, node), scope=f"{node.name}/lowered")
        for index, new in enumerate(outputs):
            graph.replace_uses(f"{node.name}:{index}", new)
        graph.remove([node.name])
        return outputs


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
