"""The pipeline: build_pipeline's list, Sequential's copy semantics, records and errors."""
from __future__ import annotations

import pytest

from graph_passes.dce import DeadCodeElimination
from graph_passes.fold_batchnorm import FoldBatchNorm
from graph_passes.fold_constants import FoldConstants
from graph_passes.freeze import Freeze
from graph_passes.ir import parse_ref
from graph_passes.liveness import peak_live_bytes
from graph_passes.lower import Lower
from graph_passes.narrow import NarrowWeightGradients
from graph_passes.pass_base import Pass, PassError, PassResult, Sequential
from graph_passes.prune import Prune
from graph_passes.sink_scale import SinkScale
from graph_passes.split import SplitPartialKernels
from tests.passes import helpers
from tests.passes.helpers import frozen_values, traced
from tfpock.pipeline import build_pipeline


@pytest.fixture(scope="module")
def step():
    return traced(helpers.lowering_cnn(), "last:3")


# ---- test-local passes --------------------------------------------------------------------
class DeleteLossProducer(Pass):
    """Broken on purpose: deletes the node the ``loss`` output reads."""
    name = "delete_loss_producer"

    def run(self, graph):
        graph.remove([parse_ref(graph.outputs["loss"])[0]])
        return PassResult(True)


class DropAnOutput(Pass):
    """Broken on purpose: removes an update from the signature."""
    name = "drop_an_output"

    def run(self, graph):
        del graph.outputs[next(k for k in graph.outputs if k != "loss")]
        return PassResult(True)


class Raises(Pass):
    name = "raises"

    def run(self, graph):
        raise RuntimeError("boom")


class Vandal(Pass):
    """Mutates everything it can reach in the graph, then raises."""
    name = "vandal"

    def run(self, graph):
        for node in graph.nodes.values():
            node.name += "_x"
        graph.inputs.clear()
        graph.params.clear()
        graph.backward.clear()
        raise RuntimeError("vandalised")


# ---- build_pipeline ------------------------------------------------------------------------
def test_build_pipeline_lists_the_passes_in_order(step):
    pipeline = build_pipeline(frozen_values(step))
    assert [type(p) for p in pipeline.passes] == [Freeze, Prune, NarrowWeightGradients,
                                                  FoldBatchNorm, SplitPartialKernels, Lower,
                                                  SinkScale, FoldConstants, DeadCodeElimination]
    assert not pipeline.check_invariants
    assert build_pipeline(frozen_values(step), debug=True).check_invariants


def test_records_each_pass_in_order(step):
    graph, records = build_pipeline(frozen_values(step), debug=True)(step.train)
    assert [r.name for r in records] == ["freeze", "prune", "narrow", "fold_bn", "split",
                                          "lower", "sink_scale", "fold_constants", "dce"]
    assert records[0].ops_before == len(step.train.nodes)
    assert records[0].peak_live_before == peak_live_bytes(step.train).peak_bytes
    for earlier, later in zip(records, records[1:]):
        assert later.ops_before == earlier.ops_after
        assert later.peak_live_before == earlier.peak_live_after  # measured once per boundary
    assert records[-1].ops_after == len(graph.nodes)
    assert records[-1].peak_live_after == peak_live_bytes(graph).peak_bytes
    # last:3 leaves the first convolution frozen: prune drops the back-propagation into it
    assert records[1].peak_live_after < records[1].peak_live_before
    assert records[0].stats["variables_frozen"] == sum(not w.trained for w in step.weights)
    assert records[1].ops_after < records[1].ops_before and records[1].modified
    assert not records[2].modified  # no partial-channel weight in this scheme
    assert not records[4].modified and records[4].stats["split"] == {}   # nor here
    assert records[5].stats["lowered"]


def test_pipeline_keeps_signature_and_numbers(step):
    _, graph = helpers.check_pass(build_pipeline(frozen_values(step), debug=True), step.train,
                                  helpers.feeds(step), peak_rtol=1e-5, keeps_params=False)
    assert sorted(graph.params) == sorted(w.path for w in step.weights if w.trained)


def test_pipeline_is_deterministic(step):
    pipeline = build_pipeline(frozen_values(step))
    first, _ = pipeline(step.train)
    second, _ = pipeline(step.train)
    assert helpers.serialized(first) == helpers.serialized(second)


# ---- copy semantics ------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["train", "infer"])
def test_never_mutates_its_input(step, which):
    graph = getattr(step, which)
    before = helpers.serialized(graph)
    out, _ = build_pipeline(frozen_values(step), debug=True)(graph)
    assert out is not graph
    assert helpers.serialized(graph) == before
    assert helpers.serialized(out) != before


def test_never_mutates_its_input_when_a_pass_fails(step):
    before = helpers.serialized(step.train)
    with pytest.raises(PassError):
        Sequential([Freeze(frozen_values(step)), Vandal()])(step.train)
    assert helpers.serialized(step.train) == before


# ---- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("broken", [DeleteLossProducer, DropAnOutput])
def test_invariant_check_names_the_broken_pass_and_those_before(step, broken):
    passes = [Freeze(frozen_values(step)), Prune(), broken(), Lower(), DeadCodeElimination()]
    with pytest.raises(PassError) as info:
        Sequential(passes, check_invariants=True)(step.train)
    assert info.value.pass_name == broken.name
    assert f"pass {broken.name!r} failed (passes run before it: freeze, prune)" in str(info.value)
    assert isinstance(info.value.cause, AssertionError)


def test_without_the_debug_switch_a_broken_signature_goes_unchecked(step):
    graph, records = Sequential([Freeze(frozen_values(step)), DropAnOutput()])(step.train)
    assert len(graph.outputs) == len(step.train.outputs) - 1
    assert [r.name for r in records] == ["freeze", "drop_an_output"]


def test_an_exception_in_a_pass_names_it_even_without_the_debug_switch(step):
    with pytest.raises(PassError, match=r"pass 'raises' failed \(passes run before it: "
                                        r"freeze\): boom") as info:
        Sequential([Freeze(frozen_values(step)), Raises(), Prune()])(step.train)
    assert isinstance(info.value.cause, RuntimeError)
    with pytest.raises(PassError, match=r"passes run before it: none"):
        Sequential([Raises()])(step.train)


def test_extra_checks_run_after_every_pass(step):
    calls = []
    Sequential([Freeze(frozen_values(step)), Prune(), Lower(), DeadCodeElimination()],
               check_invariants=True, extra_checks=[lambda g: calls.append(len(g.nodes))]
               )(step.train)
    assert len(calls) == 4

    def nothing_removed(graph):
        if len(graph.nodes) < len(step.train.nodes):
            raise AssertionError("nodes were removed")

    with pytest.raises(PassError, match=r"'prune' failed \(passes run before it: freeze\): "
                                        "nodes were removed"):
        Sequential([Freeze(frozen_values(step)), Prune(), DeadCodeElimination()],
                   check_invariants=True, extra_checks=[nothing_removed])(step.train)
