"""Freeze: weights the scheme does not train become Const nodes holding their values."""
from __future__ import annotations

import pytest
import tensorflow as tf

from graph_passes.freeze import Freeze
from graph_passes.ir import parse_ref
from tests.numerics import assert_close
from tests.passes import helpers
from tests.passes.helpers import frozen_values, traced

# model, scheme, number of weights the scheme leaves frozen
CASES = {
    "mlp_bn-full": (helpers.mlp_bn, "full", 4),      # the frozen BatchNorm's four weights
    "mlp_bn-last1": (helpers.mlp_bn, "last:1", 6),   # ... and the hidden Dense's two
    "cnn-last1": (helpers.small_cnn, "last:1", 4),   # both convolutions' kernels and biases
}


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def case(request):
    build, scheme, n_frozen = CASES[request.param]
    return traced(build(), scheme), n_frozen


def test_fires_once_per_frozen_weight(case):
    step, n_frozen = case
    values = frozen_values(step)
    result, _ = helpers.check_pass(Freeze(values), step.train, keeps_params=False)
    assert result.modified
    assert result.stats == {
        "variables_frozen": n_frozen,
        "bytes_frozen": sum(v.nbytes for v in values.values()),
        "variables_left": len(step.weights) - n_frozen,
    }


def test_frozen_placeholders_become_constants_holding_the_weights(case):
    step, n_frozen = case
    nodes_of = {p: parse_ref(ref)[0] for p, ref in step.train.params.items()}
    before = step.train.op_histogram()
    _, graph = helpers.check_pass(Freeze(frozen_values(step)), step.train, keeps_params=False)

    assert sorted(graph.params) == sorted(w.path for w in step.weights if w.trained)
    for w in step.weights:
        node = graph.nodes[nodes_of[w.path]]
        if w.trained:
            assert node.op == "Placeholder"
        else:
            assert node.op == "Const"
            assert_close(tf.make_ndarray(node.attr["value"].tensor), w.value, where=w.path)
    after = graph.op_histogram()
    assert after["Placeholder"] == before["Placeholder"] - n_frozen
    assert after["Const"] == before["Const"] + n_frozen
    assert after - before == {"Const": n_frozen} and before - after == {"Placeholder": n_frozen}


@pytest.mark.parametrize("which", ["train", "infer"])
def test_numbers_unchanged_exactly(case, which):
    step, _ = case
    helpers.check_pass(Freeze(frozen_values(step)), getattr(step, which), helpers.feeds(step),
                       keeps_params=False)


def test_signature_unchanged(case):
    step, _ = case
    helpers.check_pass(Freeze(frozen_values(step)), step.train, keeps_params=False)


@pytest.mark.parametrize("build", [helpers.small_cnn, helpers.tanh_mlp])
def test_does_not_fire_when_everything_is_trained(build):
    step = traced(build(), "full")
    assert frozen_values(step) == {}
    result, graph = helpers.check_pass(Freeze(frozen_values(step)), step.train)
    assert not result.modified
    assert result.stats["variables_frozen"] == 0
    assert helpers.serialized(graph) == helpers.serialized(step.train)


def test_does_not_fire_twice(case):
    step, _ = case
    graph = step.train.copy()
    Freeze(frozen_values(step)).run(graph)
    once = helpers.serialized(graph)
    result = Freeze(frozen_values(step)).run(graph)
    assert not result.modified and result.stats["variables_frozen"] == 0
    assert helpers.serialized(graph) == once


def test_refuses_a_parameter_not_fed_by_a_placeholder():
    step = traced(helpers.mlp_bn(), "full")
    graph = step.train.copy()
    path = next(iter(frozen_values(step)))
    graph.params[path] = graph.outputs["loss"]  # an Identity, not a Placeholder
    with pytest.raises(ValueError, match=path):
        Freeze(frozen_values(step)).run(graph)
