"""Prune: after freezing, the backward ops no kept update needs are deleted."""
from __future__ import annotations

import pytest

from graph_passes.freeze import Freeze
from graph_passes.prune import Prune
from tests.passes import helpers
from tests.passes.helpers import frozen_values, traced
from tfpock.scheme import Scheme

# op types of the gradients of convolutions, pooling and activations
EARLY_LAYER_GRADIENTS = {"Conv2DBackpropFilter", "Conv2DBackpropInput", "MaxPoolGrad",
                         "ReluGrad"}


def frozen_train_graph(build, scheme):
    """The traced train graph after Freeze, and the step it came from."""
    step = traced(build(), scheme)
    graph = step.train.copy()
    Freeze(frozen_values(step)).run(graph)
    return step, graph


@pytest.fixture(scope="module")
def cnn_last1():
    return frozen_train_graph(helpers.small_cnn, "last:1")


def test_training_the_last_layer_removes_every_earlier_gradient(cnn_last1):
    _, before = cnn_last1
    backward_before = len(before.backward)
    nodes_before = len(before.nodes)
    result, graph = helpers.check_pass(Prune(), before)

    assert result.modified
    removed = result.stats["gradient_ops_removed_by_type"]
    # both frozen convolutions' weight and input gradients, the pool's and the ReLUs'
    assert removed["Conv2DBackpropFilter"] == 2
    assert removed["Conv2DBackpropInput"] == 2
    assert removed["MaxPoolGrad"] == 1
    assert removed["ReluGrad"] == 2
    assert removed["MatMul"] == 1          # the Dense's input gradient
    assert removed["BiasAddGrad"] == 2     # the convolutions' bias gradients
    assert result.stats["gradient_ops_before"] == backward_before
    assert result.stats["gradient_ops_removed"] == sum(removed.values())
    assert result.stats["gradient_ops_removed"] == backward_before - len(graph.backward)
    assert result.stats["ops_removed"] == nodes_before - len(graph.nodes)

    # what is left of the backward graph is the Dense's own: one kernel gradient (MatMul),
    # one bias gradient, and the loss gradient feeding them
    left = helpers.backward_histogram(graph)
    assert not EARLY_LAYER_GRADIENTS & set(left)
    assert left["MatMul"] == 1 and left["BiasAddGrad"] == 1
    assert not EARLY_LAYER_GRADIENTS & set(graph.op_histogram())


def test_a_frozen_dense_loses_its_weight_gradient():
    _, before = frozen_train_graph(helpers.mlp_bn, "last:1")
    matmuls = helpers.backward_histogram(before)["MatMul"]
    result, graph = helpers.check_pass(Prune(), before)
    # hidden's kernel gradient and logits' input gradient go; logits' kernel gradient stays
    assert result.stats["gradient_ops_removed_by_type"]["MatMul"] == 2
    assert helpers.backward_histogram(graph)["MatMul"] == matmuls - 2 == 1
    assert "ReluGrad" not in graph.op_histogram()


def test_a_frozen_middle_conv_keeps_its_input_gradient():
    # conv_b is frozen but conv_a below it trains: conv_b's kernel gradient is dead, the
    # gradient through it (Conv2DBackpropInput) is needed
    _, graph = frozen_train_graph(
        helpers.small_cnn, Scheme(layers={"conv_b": "frozen"}, default="full"))
    before = helpers.backward_histogram(graph)
    result, graph = helpers.check_pass(Prune(), graph)
    removed = result.stats["gradient_ops_removed_by_type"]
    after = helpers.backward_histogram(graph)
    assert removed["Conv2DBackpropFilter"] == 1
    assert after["Conv2DBackpropFilter"] == before["Conv2DBackpropFilter"] - 1 == 1
    # the one input gradient removed is conv_a's (of x, which nothing trains); conv_b's stays
    assert removed["Conv2DBackpropInput"] == 1
    assert after["Conv2DBackpropInput"] == 1


@pytest.mark.parametrize("scheme", ["last:1", "full"])
def test_numbers_unchanged_exactly(scheme):
    step, graph = frozen_train_graph(helpers.small_cnn, scheme)
    helpers.check_pass(Prune(), graph, helpers.feeds(step))


def test_signature_and_parameters_unchanged(cnn_last1):
    _, graph = cnn_last1
    helpers.check_pass(Prune(), graph)


def test_does_not_fire_on_the_inference_graph():
    step = traced(helpers.mlp_bn(), "last:1")
    graph = step.infer.copy()
    Freeze(frozen_values(step)).run(graph)
    result, pruned = helpers.check_pass(Prune(), graph)
    assert not result.modified
    assert result.stats["ops_removed"] == 0 and result.stats["gradient_ops_before"] == 0
    assert helpers.serialized(pruned) == helpers.serialized(graph)


def test_removes_no_gradient_op_from_an_inference_graph():
    # the CNN's inference graph has dead shape constants (Flatten's static shape), which
    # prune deletes like DCE would; there is no gradient op to count
    step = traced(helpers.small_cnn(), "last:1")
    result, graph = helpers.check_pass(Prune(), step.infer)
    assert result.stats["gradient_ops_removed"] == 0
    assert result.stats["ops_removed"] == 1
    assert step.infer.op_histogram() - graph.op_histogram() == {"Const": 1}
