"""The file phase is a pipeline like the GraphDef's: records, errors and debug checks.

``Program.to_tflite`` runs ``tfpock.pipeline.build_file_pipeline`` on the converted ``train``
subgraph; these tests run it and a few hand-made passes on one exported model.
"""
import keras
import pytest

import tfpock
from graph_passes.pass_base import Pass, PassError, PassResult, Sequential
from tfpock.testing import models
from tfpock.pipeline import build_file_pipeline
from tfpock.tflite import memory, model_file
from tfpock.tflite.fuse import Fuse
from tfpock.tflite.ir import TfliteFile
from tfpock.tflite.reorder import Reorder


@pytest.fixture(scope="module")
def program():
    return tfpock.optimize(models.every_layer_cnn(dropout=0.0),
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                           optimizer=keras.optimizers.SGD(0.05), scheme="full", batch_size=4,
                           passes={"fuse": False, "inplace": False}, debug=True,
                           nonfinite="apply")   # so that reorder can move the updates


@pytest.fixture(scope="module")
def content(program) -> bytes:
    return program.to_tflite()


class Reverse(Pass):
    """Breaks the schedule: the operators of the subgraph in reverse order."""
    name = "reverse"

    def run(self, ir):
        model = ir.unpack()
        sg = model.subgraphs[ir.subgraph_index(model)]
        sg.operators = sg.operators[::-1]
        ir.update(model)
        return PassResult(True)


class Raises(Pass):
    name = "raises"

    def run(self, ir):
        raise RuntimeError("boom")


def test_records_carry_ops_and_the_files_peaks(content):
    ir, records = build_file_pipeline(passes={"reorder": True})(TfliteFile(content, "train"))
    assert [r.name for r in records] == ["fuse", "reorder", "inplace"]
    n_ops = len(model_file.read(content).subgraph("train").operators)
    assert records[0].ops_before == n_ops
    assert records[0].peak_live_before == memory.timeline(content, "train").peak_bytes
    assert records[-1].peak_live_after == memory.timeline(ir.content, "train").peak_bytes
    assert records[1].peak_live_after < records[1].peak_live_before   # reorder fired


def test_the_callers_file_is_untouched_and_nothing_fired_keeps_the_bytes(content):
    ir = TfliteFile(content, "train")
    out, records = Sequential([Fuse()])(ir)
    assert ir.content is content
    assert not records[0].modified and out.content is content   # not even repacked


def test_debug_checks_the_schedule_and_names_the_pass(content):
    with pytest.raises(PassError, match="pass 'reverse' failed .*reads tensors") as info:
        Sequential([Fuse(), Reverse()], check_invariants=True)(TfliteFile(content, "train"))
    assert isinstance(info.value.cause, AssertionError)
    Sequential([Reverse()])(TfliteFile(content, "train"))   # unchecked, it goes through


def test_a_failing_pass_is_named_with_those_before_it(content):
    with pytest.raises(PassError, match=r"pass 'raises' failed \(passes run before it: "
                                        r"fuse, reorder\): boom"):
        Sequential([Fuse(), Reorder(), Raises()])(TfliteFile(content, "train"))


def test_program_shows_the_file_phase_in_its_report(program, content):
    assert "export" not in program.pass_records   # fuse, inplace off, reorder off by default
    on = tfpock.optimize(models.mlp(), loss="sparse_categorical_crossentropy",
                         optimizer=keras.optimizers.SGD(0.1), batch_size=4,
                         passes={"reorder": True}, debug=True)
    on.to_tflite()
    assert [r.name for r in on.pass_records["export"]] == ["fuse", "reorder", "inplace"]
    report = on.report()
    assert "[export]" in report and "  fuse" in report and "  reorder" in report


def test_an_unknown_signature_is_refused(content):
    with pytest.raises(ValueError, match="no signature 'training'"):
        TfliteFile(content, "training")
