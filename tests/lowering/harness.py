"""The lowering rules' test harness: raw op in a tiny graph -> ir.Graph -> lower -> run.

``graph_of(make, *arrays)`` builds ``make(*placeholders)`` as a Graph, ``lower_all`` applies
a rule to every node of its op type (``graph_passes.lower.lower_node``, as the pass does),
and ``run_tf`` / ``run_litert`` evaluate a Graph in TF and, converted with builtins only, on
ai-edge-litert. ``lowered(make, rule, *arrays)`` does the first two and keeps what a test
compares: the graph before and after, how many nodes the rule replaced, and the arrays.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from graph_passes.ir import Graph
from graph_passes.lower import lower_node
from graph_passes.lowering.base import LoweringRule
from tfpock.testing.litert import run_on_litert


def graph_of(make, *arrays: np.ndarray, n_params: int = 0) -> Graph:
    """A Graph of ``y = make(*placeholders)``, its placeholders ``x0, x1, ...`` shaped like
    ``arrays``: signature inputs, but for the last ``n_params``, which are parameters (a
    weight, as the trace feeds a trained kernel)."""
    scratch = tf.Graph()
    with scratch.as_default():
        placeholders = [tf.compat.v1.placeholder(tf.as_dtype(a.dtype), a.shape, name=f"x{i}")
                        for i, a in enumerate(arrays)]
        tf.identity(make(*placeholders), name="y")
    names = [p.op.name for p in placeholders]
    split = len(names) - n_params
    return Graph(scratch.as_graph_def(add_shapes=True),
                 inputs={k: k for k in names[:split]}, outputs={"y": "y"},
                 params={k: k for k in names[split:]})


def lower_all(graph: Graph, rule: LoweringRule) -> int:
    """Applies ``rule`` to every node of its op type; returns how many it replaced."""
    nodes = graph.nodes_of([rule.op_type])
    for node in nodes:
        lower_node(graph, node, rule)
    return len(nodes)


def function_of(graph: Graph):
    """``fn(*tensors)`` that imports ``graph`` into the graph being built (a tf.function or
    the TFLite converter's trace), its inputs and then its parameters bound to the
    arguments in order; returns its one output."""
    graph_def = graph.to_graph_def()
    feeds = [*graph.inputs.values(), *graph.params.values()]
    [output] = graph.outputs.values()

    def fn(*args):
        return tf.graph_util.import_graph_def(graph_def, input_map=dict(zip(feeds, args)),
                                              return_elements=[output], name="g")[0]
    return fn


def run_tf(graph: Graph, *arrays: np.ndarray) -> np.ndarray:
    return tf.function(function_of(graph), autograph=False)(*arrays).numpy()


def run_litert(graph: Graph, *arrays: np.ndarray) -> np.ndarray:
    return run_on_litert(function_of(graph), *arrays)[0]


@dataclasses.dataclass
class Lowered:
    before: Graph           # the raw op's graph
    graph: Graph            # after lowering
    rule: LoweringRule
    count: int              # how many nodes the rule replaced
    arrays: tuple[np.ndarray, ...]

    @property
    def left(self) -> int:
        """Nodes of the rule's op type still in the lowered graph."""
        return len(self.graph.nodes_of([self.rule.op_type]))

    def reference(self) -> np.ndarray:
        """The raw op's value in TF (not where TF's CPU kernels refuse the op: see
        numpy_conv.py)."""
        return run_tf(self.before, *self.arrays)

    def run_tf(self) -> np.ndarray:
        return run_tf(self.graph, *self.arrays)

    def run_litert(self) -> np.ndarray:
        return run_litert(self.graph, *self.arrays)


def lowered(make, rule: LoweringRule, *arrays: np.ndarray, n_params: int = 0) -> Lowered:
    """``make`` built on ``arrays`` and lowered with ``rule`` (see ``graph_of``)."""
    before = graph_of(make, *arrays, n_params=n_params)
    graph = before.copy()
    return Lowered(before, graph, rule, lower_all(graph, rule), arrays)
