"""Freeze: every weight the scheme does not train becomes a constant in the graph.

A frozen weight's Placeholder is replaced in place by a Const node of the same name holding
its value, so readers need no rewiring. Constant weights are what lets the TFLite converter
fold the frozen part (a frozen BatchNorm into its convolution, for instance) and lets the
XNNPACK delegate take the frozen forward ops, which it does not take when their weights are
variables (the benchmark's floor, ``bench/run.py``'s ``forward`` contender, is that
constant-weight forward); it also guarantees frozen weights are bit-identical after training,
since nothing can write a constant.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf

from graph_passes.ir import Graph, parse_ref
from graph_passes.pass_base import Pass, PassResult


def freeze(graph: Graph, values: Mapping[str, np.ndarray]) -> list[str]:
    """Turns the parameters named in ``values`` into constants; returns their paths."""
    frozen = []
    for path, value in values.items():
        if path not in graph.params:
            continue
        name = parse_ref(graph.params.pop(path))[0]
        old = graph.nodes[name]
        if old.op != "Placeholder":
            raise ValueError(f"parameter {path!r} is fed by {old.op} {name!r}, not a Placeholder")
        const = tf.compat.v1.NodeDef(name=name, op="Const")
        const.attr["dtype"].type = old.attr["dtype"].type
        const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.asarray(value)))
        if "_output_shapes" in old.attr:
            const.attr["_output_shapes"].CopyFrom(old.attr["_output_shapes"])
        graph.nodes[name] = const
        frozen.append(path)
    return frozen


class Freeze(Pass):
    """Freezes the weights given (path -> value): the ones the scheme does not train."""

    name = "freeze"

    def __init__(self, frozen_values: Mapping[str, np.ndarray]):
        self.frozen_values = frozen_values

    def run(self, graph: Graph) -> PassResult:
        frozen = freeze(graph, self.frozen_values)
        size = sum(np.asarray(self.frozen_values[p]).nbytes for p in frozen)
        return PassResult(bool(frozen), {"variables_frozen": len(frozen),
                                         "bytes_frozen": size,
                                         "variables_left": len(graph.params)})
