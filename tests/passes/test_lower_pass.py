"""The lower pass on traced training steps: what it rewrote, what is left, same numbers.

The rules themselves are tested op by op in tests/lowering/; here the pass runs on whole
graphs after Freeze and Prune, as in the pipeline.
"""
from __future__ import annotations

import numpy as np
import pytest

from graph_passes.dce import DeadCodeElimination
from graph_passes.freeze import Freeze
from graph_passes.lower import Lower, LoweringError
from graph_passes.lowering import RULES
from graph_passes.lowering.base import LoweringRule
from graph_passes.pass_base import PassError, Sequential
from graph_passes.prune import Prune
from tests.passes import helpers
from tests.passes.helpers import frozen_values, traced
from tests.numerics import assert_close
from tfpock.testing import models

# what Lower rewrites in each traced step (full scheme), one entry per layer that needs it
EXPECTED = {
    "lowering_cnn": (helpers.lowering_cnn, {
        "Conv2DBackpropFilter": 2,                 # conv, conv_dil
        "DepthwiseConv2dNativeBackpropFilter": 1,  # dw
        "DepthwiseConv2dNativeBackpropInput": 1,   # dw (conv below it trains)
        "MaxPoolGrad": 1, "AvgPoolGrad": 1,
        "ReluGrad": 1, "Relu6Grad": 1, "EluGrad": 1, "LeakyReluGrad": 1,
        # conv_dil's input gradient: Keras dilates by SpaceToBatchND, so the op itself is a
        # plain stride-1 SAME one: patches + matmul
        "Conv2DBackpropInput": 1,
    }, {
        "Conv2D": 2,  # conv, conv_dil: 3x3 trained kernels stay CONV_2D (WeightConv2DRule)
    }),
    "small_cnn": (helpers.small_cnn, {
        "Conv2DBackpropFilter": 2, "MaxPoolGrad": 1, "ReluGrad": 2, "Conv2DBackpropInput": 1,
    }, {"Conv2D": 2}),
    "mlp_bn": (helpers.mlp_bn, {"ReluGrad": 1}, {}),
}


def prepared(build, scheme="full"):
    """A traced step and its train graph after Freeze and Prune (what Lower sees)."""
    step = traced(build(), scheme)
    graph, _ = Sequential([Freeze(frozen_values(step)), Prune()])(step.train)
    return step, graph


def rule_ops_left(graph, rules=RULES) -> list[str]:
    """Nodes a rule would still rewrite."""
    return [n.name for n in graph.nodes_of(rules) if rules[n.op].applies(graph, n)]


# op types that rules also emit: the conv form of a filter gradient is a Conv2D whose kernel is
# a gradient, which WeightConv2DRule leaves alone (rule_ops_left checks none is missed)
EMITTED_BY_LOWERINGS = {"Conv2D"}


@pytest.fixture(scope="module", params=list(EXPECTED), ids=list(EXPECTED))
def case(request):
    build, lowered, left = EXPECTED[request.param]
    step, graph = prepared(build)
    out = graph.copy()
    result = Lower().run(out)
    return step, graph, out, result, lowered, left


def test_fires_once_per_node_with_a_rule(case):
    _, graph, _, result, lowered, left = case
    assert result.modified
    assert result.stats["lowered"] == lowered
    left_over = result.stats.get("left_to_converter", {})
    assert {op: left_over.get(op) for op in left} == left
    # rules that apply only in some configurations (a trained 1x1 kernel, an activation on
    # a runtime matmul, a sum of rank > 6) leave the other nodes of their op type to the
    # converter
    assert set(left_over) - set(left) <= {"Relu", "Relu6", "Conv2D", "Sum"}
    before = graph.op_histogram()
    assert {op: before[op] for op in lowered} == lowered


def test_no_op_a_rule_applies_to_is_left(case):
    _, graph, out, _, lowered, left = case
    assert rule_ops_left(out) == []
    after = out.op_histogram()
    for op in lowered:
        if op not in EMITTED_BY_LOWERINGS:
            assert after[op] == left.get(op, 0), op
    for op, count in left.items():
        if op not in EMITTED_BY_LOWERINGS:
            assert after[op] == count, op


def test_numbers_unchanged(case):
    step, graph, *_ = case
    helpers.check_pass(Lower(), graph, helpers.feeds(step), peak_rtol=1e-5)


def test_signature_and_parameters_unchanged(case):
    _, graph, *_ = case
    helpers.check_pass(Lower(), graph)


def test_lowers_the_dropout_mask_to_a_stateful_random_op():
    # numbers are not compared: the stateful op draws a different mask (see random_ops.py)
    _, graph = prepared(helpers.dropout_mlp)
    result = Lower().run(graph)
    assert result.stats["lowered"] == {"StatelessRandomUniformV2": 1}
    assert graph.op_histogram()["RandomUniform"] == 1
    assert "StatelessRandomUniformV2" not in graph.op_histogram()


def test_a_one_rule_table_lowers_only_that_op_type():
    _, graph = prepared(helpers.small_cnn)
    before = graph.op_histogram()
    result, lowered = helpers.check_pass(Lower({"ReluGrad": RULES["ReluGrad"]}), graph)
    assert result.stats["lowered"] == {"ReluGrad": 2}
    after = lowered.op_histogram()
    assert after["ReluGrad"] == 0
    for op in ["Conv2DBackpropFilter", "MaxPoolGrad", "Conv2DBackpropInput"]:
        assert after[op] == before[op] > 0


class _Declines(LoweringRule):
    op_type = "MaxPoolGrad"

    def check(self, graph, node):
        return "declined by the test"


def test_a_declining_rule_is_an_error_naming_the_node():
    _, graph = prepared(helpers.small_cnn)
    [node] = graph.nodes_of(["MaxPoolGrad"])
    with pytest.raises(LoweringError, match="declined by the test") as info:
        Lower({"MaxPoolGrad": _Declines()}).run(graph)
    assert info.value.node_name == node.name and info.value.op_type == "MaxPoolGrad"


@pytest.mark.parametrize("build, scheme", [(helpers.tanh_mlp, "full"),
                                           (helpers.small_cnn, "last:1")],
                         ids=["tanh_mlp-full", "small_cnn-last1"])
def test_does_not_fire_without_rule_ops(build, scheme):
    _, graph = prepared(build, scheme)
    assert rule_ops_left(graph) == []  # frozen convs' kernels are constants: XNNPACK's
    result, after = helpers.check_pass(Lower(), graph)
    assert not result.modified and result.stats["lowered"] == {}
    assert helpers.serialized(after) == helpers.serialized(graph)


# ---- a real network -----------------------------------------------------------------------
def _worst_errors(actual, expected):
    return sorted(((float(np.abs(actual[k] - expected[k]).max()), k) for k in expected),
                  reverse=True)


def _blame(step, reference, values) -> str:
    """Lowers one op type at a time to say which rule moves the numbers (failure message)."""
    lines = []
    for op in sorted({n.op for n in reference.nodes_of(RULES)}):
        single, _ = Sequential([Lower({op: RULES[op]}), DeadCodeElimination()])(reference)
        err, key = _worst_errors(helpers.run(single, values), helpers.run(reference, values))[0]
        lines.append(f"  {op}: worst {err:.3g} at {key}")
    return "\n".join(lines)


def test_lowering_is_exact_on_mobilenet_v2():
    """Both graphs hold the same frozen constants, so BatchNorm folding cannot explain a
    difference; only the lowering rules can. Measured worst: 4.4e-6 (Conv1/kernel)."""
    model = models.mobilenet_v2()
    step = traced(model, "full", batch_size=2)
    frozen = frozen_values(step)
    reference, _ = Sequential([Freeze(frozen), Prune()])(step.train)
    lowered, records = Sequential([Freeze(frozen), Prune(), Lower(), DeadCodeElimination()],
                                  check_invariants=True)(step.train)
    assert records[2].stats["lowered"], "MobileNetV2 has ops to lower"
    assert rule_ops_left(lowered) == []

    values = helpers.feeds(step)
    expected, actual = helpers.run(reference, values), helpers.run(lowered, values)
    assert sorted(actual) == sorted(expected)
    assert len(expected) == 2 + len(model.trainable_variables)   # loss, finite, new:*
    updates = [k for k in expected if k != "loss"]
    try:
        assert_close(actual["loss"], expected["loss"], rtol=1e-5, where="loss")
        assert_close({k: actual[k] for k in updates}, {k: expected[k] for k in updates},
                     atol=1e-4)
    except AssertionError as error:
        pytest.fail(f"lowered MobileNetV2 step differs: {error}; worst updates "
                    f"{_worst_errors(actual, expected)[:5]}\nper rule:\n"
                    f"{_blame(step, reference, values)}")


def test_postcondition_catches_an_op_left_unlowered():
    """The debug switch checks after lowering that no op a rule applies to is left."""
    step = traced(helpers.small_cnn(), "full")
    skipping_relu = {op: rule for op, rule in RULES.items() if op != "ReluGrad"}

    class LowerButForgetRelu(Lower):
        def __init__(self):
            super().__init__(skipping_relu)

        def postcondition(self, graph):
            Lower().postcondition(graph)  # what the full table promises

    with pytest.raises(PassError, match="ReluGrad"):
        Sequential([LowerButForgetRelu()], check_invariants=True)(step.train)
    Sequential([Lower()], check_invariants=True)(step.train)  # the real pass keeps it
