"""Dead-code elimination: nodes no signature output needs go; inputs and parameters stay.

The expected result is computed independently with TensorFlow's own
``extract_sub_graph`` (the nodes the signature outputs, inputs and parameters reach through
data and control edges).
"""
from __future__ import annotations

import pytest
import tensorflow as tf

from graph_passes.dce import DeadCodeElimination
from graph_passes.freeze import Freeze
from graph_passes.ir import parse_ref
from graph_passes.lower import Lower
from graph_passes.prune import Prune
from tests.passes import helpers
from tests.passes.helpers import frozen_values, traced


def reachable(graph) -> set[str]:
    """What TF keeps of the graph when asked for the signature and parameter nodes."""
    roots = [parse_ref(r)[0] for r in [*graph.outputs.values(), *graph.inputs.values(),
                                       *graph.params.values()]]
    kept = tf.compat.v1.graph_util.extract_sub_graph(graph.to_graph_def(), sorted(set(roots)))
    return {n.name for n in kept.node}


@pytest.fixture(scope="module")
def lowered():
    """The CNN's train graph after freeze, prune and lower: lowering leaves dead producers
    (the shape operands of the gradient ops it replaced)."""
    step = traced(helpers.lowering_cnn(), "full")
    graph = step.train.copy()
    for p in [Freeze(frozen_values(step)), Prune(), Lower()]:
        p.run(graph)
    return step, graph


def test_removes_what_lowering_left_dead(lowered):
    _, graph = lowered
    expected = reachable(graph)
    removed = set(graph.nodes) - expected
    assert removed, "the lowered graph should have dead producers"
    result, clean = helpers.check_pass(DeadCodeElimination(), graph)
    assert result.modified
    assert result.stats == {"ops_removed": len(removed)}
    assert set(clean.nodes) == expected


def test_numbers_unchanged_exactly(lowered):
    step, graph = lowered
    helpers.check_pass(DeadCodeElimination(), graph, helpers.feeds(step))


def test_signature_and_parameters_unchanged(lowered):
    _, graph = lowered
    helpers.check_pass(DeadCodeElimination(), graph)


def _clean_train_graph():
    step = traced(helpers.mlp_bn(), "last:1")
    graph = step.train.copy()
    Freeze(frozen_values(step)).run(graph)
    Prune().run(graph)
    return step, graph


def test_removes_an_injected_dead_chain_and_nothing_else():
    step, graph = _clean_train_graph()
    before = set(graph.nodes)
    live_input = next(iter(graph.params.values()))
    # Identity(live param) -> Neg -> Neg: reads the graph, but nothing reads it
    with tf.Graph().as_default() as scratch:
        p = tf.compat.v1.placeholder(tf.float32, name="p")
        tf.negative(tf.negative(tf.identity(p, name="dead_a"), name="dead_b"), name="dead_c")
    for node in scratch.as_graph_def().node:
        if node.name != "p":
            graph.add_node(node)
    graph.nodes["dead_a"].input[0] = live_input

    result = DeadCodeElimination().run(graph)
    assert result.stats == {"ops_removed": 3}
    assert set(graph.nodes) == before


def test_keeps_a_node_reached_only_by_a_control_edge():
    _, graph = _clean_train_graph()
    with tf.Graph().as_default() as scratch:
        tf.constant(1.0, name="guard")
    graph.add_node(scratch.as_graph_def().node[0])
    producer = parse_ref(graph.outputs["loss"])[0]
    graph.nodes[producer].input.append("^guard")
    result = DeadCodeElimination().run(graph)
    assert not result.modified
    assert "guard" in graph.nodes


def test_keeps_an_unread_parameter():
    # the dropout seed state is a parameter of the inference graph that nothing reads
    step = traced(helpers.dropout_mlp(), "full")
    graph = step.infer.copy()
    seed_path = next(iter(frozen_values(step)))
    seed_node = parse_ref(graph.params[seed_path])[0]
    assert seed_node not in graph.consumers()
    result = DeadCodeElimination().run(graph)
    assert not result.modified
    assert seed_node in graph.nodes and seed_path in graph.params

    # once frozen it is no parameter but an unread constant: the one dead node
    Freeze(frozen_values(step)).run(graph)
    result = DeadCodeElimination().run(graph)
    assert result.stats == {"ops_removed": 1}
    assert seed_node not in graph.nodes


def test_does_not_fire_on_a_clean_graph():
    _, graph = _clean_train_graph()
    before = helpers.serialized(graph)
    result = DeadCodeElimination().run(graph)
    assert not result.modified and result.stats == {"ops_removed": 0}
    assert helpers.serialized(graph) == before
