"""Compile-time values of tensors that depend on constants only (an analysis passes call).

After freezing, a frozen layer's derived values (BatchNorm's ``gamma * rsqrt(var + eps)``,
for one) are small subgraphs of pure ops over Const nodes. ``constant_value`` evaluates such a
tensor in a scratch TF session, so rewrite rules can check shapes and values and fold them.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from graph_passes.ir import Graph, parse_ref, tensor_name

# ops whose output depends only on their inputs (no state, no randomness)
# TF's matrix products (a weight gradient, a lowered convolution): read by sink_scale and by
# the lowering of activations that follow a matmul.
MATMUL_OPS = frozenset({"MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"})

PURE_OPS = frozenset({
    "Const", "Identity", "AddV2", "Add", "Sub", "Mul", "RealDiv", "Div", "Rsqrt", "Sqrt",
    "Reciprocal", "Neg", "Square", "Maximum", "Minimum", "Reshape", "ExpandDims", "Squeeze",
    "Cast", "Transpose", "Pack", "ConcatV2", "Fill", "Shape", "Exp", "Log",
})


def is_constant(graph: Graph, ref: str, _memo: dict | None = None) -> bool:
    """Whether ``ref`` depends on Const nodes only, through pure ops."""
    memo = {} if _memo is None else _memo
    name = parse_ref(ref)[0]
    if name in memo:
        return memo[name]
    node = graph.nodes[name]
    memo[name] = False  # guards against cycles while exploring
    result = node.op in PURE_OPS and all(
        parse_ref(r)[1] >= 0 and is_constant(graph, r, memo) for r in node.input)
    memo[name] = result
    return result


def constant_value(graph: Graph, ref: str) -> np.ndarray | None:
    """The value of ``ref`` if it is constant (see :func:`is_constant`), else None."""
    if not is_constant(graph, ref):
        return None
    needed, stack = set(), [parse_ref(ref)[0]]
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack.extend(parse_ref(r)[0] for r in graph.nodes[name].input)
    graph_def = tf.compat.v1.GraphDef()
    graph_def.node.extend([graph.nodes[n] for n in graph.topological_order() if n in needed])
    scratch = tf.Graph()
    with scratch.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=scratch) as session:
        return session.run(tensor_name(ref))
