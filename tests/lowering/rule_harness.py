"""Harness for elementwise/pooling/random rule tests: raw op -> ir.Graph -> lower -> run.

``lowered(make, arrays, rule)`` builds ``make(*placeholders)`` in a tiny graph, lowers every
node of ``rule.op_type`` and returns the Graph with the TF reference value; ``run_lowered_tf``
and ``run_lowered_litert`` evaluate the lowered graph in TF and on ai-edge-litert.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from graph_passes.ir import Graph
from graph_passes.lower import lower_node
from graph_passes.lowering.base import LoweringRule
from tfpock.testing.litert import run_on_litert


@dataclasses.dataclass
class Lowered:
    graph: Graph
    count: int              # how many nodes the rule replaced
    reference: np.ndarray   # the raw op's value, computed by TF before lowering


def build(make, arrays) -> Graph:
    """A Graph with inputs ``x0, x1, ...`` (placeholders shaped like ``arrays``) and one
    output ``y = make(*placeholders)``."""
    scratch = tf.Graph()
    with scratch.as_default():
        placeholders = [tf.compat.v1.placeholder(tf.as_dtype(a.dtype), a.shape, name=f"x{i}")
                        for i, a in enumerate(arrays)]
        tf.identity(make(*placeholders), name="y")
    return Graph(scratch.as_graph_def(add_shapes=True),
                 inputs={f"x{i}": f"x{i}" for i in range(len(arrays))}, outputs={"y": "y"})


def function_of(graph: Graph):
    """``fn(*tensors)`` that imports the graph with its inputs bound, returning output y."""
    graph_def, names = graph.to_graph_def(), list(graph.inputs)

    def fn(*args):
        input_map = {graph.inputs[k]: a for k, a in zip(names, args)}
        return tf.graph_util.import_graph_def(graph_def, input_map=input_map,
                                              return_elements=[graph.outputs["y"]], name="g")[0]
    return fn


def run_tf(graph: Graph, arrays) -> np.ndarray:
    return tf.function(function_of(graph), autograph=False)(*arrays).numpy()


def lowered(make, arrays, rule: LoweringRule) -> Lowered:
    graph = build(make, arrays)
    reference = run_tf(graph, arrays)
    nodes = graph.nodes_of([rule.op_type])
    for node in nodes:
        lower_node(graph, node, rule)
    return Lowered(graph, len(nodes), reference)


def run_lowered_litert(graph: Graph, arrays) -> np.ndarray:
    return run_on_litert(function_of(graph), *arrays)[0]


def assert_close(actual, expected, tol: float) -> None:
    """|actual - expected| <= tol * max(1, max|expected|): tol scaled to the magnitude."""
    scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert err <= tol * scale, f"max abs error {err:.3g} > {tol:.1g} * {scale:.3g}"
