"""Test helpers for lowering rules: raw op in a tiny graph -> ir.Graph -> lower -> run."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from graph_passes.ir import Graph
from graph_passes.lower import lower_node
from graph_passes.lowering.base import LoweringRule


def graph_of(fn, *arrays: np.ndarray) -> Graph:
    """A Graph whose inputs ``in0, in1, ...`` are placeholders shaped like ``arrays`` and whose
    one output ``out`` is ``fn(*placeholders)``."""
    scratch = tf.Graph()
    with scratch.as_default():
        placeholders = [tf.compat.v1.placeholder(tf.as_dtype(a.dtype), a.shape, name=f"in{i}")
                        for i, a in enumerate(arrays)]
        out = tf.identity(fn(*placeholders), name="out")
    return Graph(scratch.as_graph_def(), inputs={p.op.name: p.name for p in placeholders},
                 outputs={"out": out.name})


def lower_all(graph: Graph, rule: LoweringRule) -> int:
    """Applies ``rule`` to every node of its op type; returns how many it replaced."""
    nodes = graph.nodes_of([rule.op_type])
    for node in nodes:
        lower_node(graph, node, rule)
    return len(nodes)


def as_function(graph: Graph):
    """A callable that imports ``graph`` into the graph being built (eager tf.function or the
    TFLite converter's trace) with its inputs bound to the arguments, in input order."""
    graph_def = graph.to_graph_def()
    names = list(graph.inputs)

    def fn(*args):
        input_map = {graph.inputs[k]: a for k, a in zip(names, args)}
        return tf.graph_util.import_graph_def(graph_def, input_map=input_map,
                                              return_elements=[graph.outputs["out"]], name="g")[0]
    return fn


def run_tf(graph: Graph, *arrays: np.ndarray) -> np.ndarray:
    return tf.function(as_function(graph), autograph=False)(*arrays).numpy()
