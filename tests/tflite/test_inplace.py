"""Inplace: TFLite's in-place buffer sharing never writes over a tensor still to be read.

``STEP`` is the smallest shape of the hazard (``tfpock/tflite/inplace.py``): ``y = a*b + (a-b)``
(the ADD takes the MUL's buffer, read once), ``RESHAPE(y) * lr`` (the MUL takes the reshape's,
that is ``y``'s, buffer) while ``y @ w`` still has to read ``y``. Without a delegate
ai-edge-litert plans it that way (as tflite-runtime 2.14 does) and ``y @ w`` is off by ~10.
"""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tfpock.tflite import inplace as inplace_module
from tfpock.tflite.flatbuffer import pack
from tfpock.tflite.inplace import Hazard, hazards, inplace, plan
from tests.tflite.test_fuse import SIGNATURE, convert, op_names

_rng = np.random.default_rng(0)
A, B = _rng.normal(size=(2, 2, 8, 16)).astype(np.float32)
W = _rng.normal(size=(16, 4)).astype(np.float32)
LR = np.float32(0.5)


def step(a, b, w, lr):
    y = a * b + (a - b)
    return {"scaled": tf.reduce_sum(tf.reshape(y, [16, 16]) * lr, 0),
            "projected": tf.matmul(y, w)}


@pytest.fixture(scope="module")
def hazardous() -> bytes:
    return convert(step, (2, 8, 16), (2, 8, 16), (16, 4), ())


def _model(content: bytes) -> tuple[schema.ModelT, schema.SubGraphT]:
    model = schema.ModelT.InitFromPackedBuf(content, 0)
    return model, model.subgraphs[0]


def run(content: bytes, resolver=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        preserve: bool = False) -> dict[str, np.ndarray]:
    interpreter = Interpreter(model_content=content, num_threads=1,
                              experimental_op_resolver_type=resolver,
                              experimental_preserve_all_tensors=preserve)
    return interpreter.get_signature_runner(SIGNATURE)(a=A, b=B, w=W, lr=LR)


def test_the_pattern_is_a_hazard(hazardous):
    assert op_names(hazardous) == ["MUL", "SUB", "ADD", "RESHAPE", "MUL", "SUM",
                                   "BATCH_MATMUL"]
    model, sg = _model(hazardous)
    ops = [[int(t) for t in op.outputs][0] for op in sg.operators]
    product, _, y, reshaped, scaled = ops[:5]
    # the ADD takes the MUL's buffer, the RESHAPE y's, the second MUL the reshape's
    assert plan(model, sg)[0] == {y: product, reshaped: product, scaled: product}
    assert hazards(model, sg) == [Hazard(op=4, shared=reshaped, output=scaled, root=product,
                                         live=y, until=6)]


def test_plan_is_the_runtimes(hazardous):
    """The tensors :func:`plan` shares are the ones ai-edge-litert gives one address (no
    delegate), and no others: the static plan is the runtime's."""
    interpreter = Interpreter(model_content=hazardous,
                              experimental_op_resolver_type=OpResolverType.
                              BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    model, sg = _model(hazardous)
    wrapper = interpreter._interpreter
    address = {t: wrapper.tensor(wrapper, t).ctypes.data
               for op in sg.operators for t in [int(o) for o in op.outputs]}
    producer_inputs = {int(op.outputs[0]): [int(t) for t in op.inputs] for op in sg.operators}
    observed = {out for out, inputs in producer_inputs.items()
                if any(address.get(t) == address[out] for t in inputs)}
    assert set(plan(model, sg)[0]) == observed


def test_rewrite_makes_the_step_right(hazardous):
    truth = run(hazardous, preserve=True)   # every tensor kept: nothing shared
    np.testing.assert_allclose(truth["projected"], (A * B + (A - B)) @ W, rtol=1e-5)
    assert not np.allclose(run(hazardous)["projected"], truth["projected"], atol=1e-3), \
        "the runtime planned the hazard away itself: the test no longer tests the pass"
    fixed, stats = inplace(hazardous)
    # defer declines: the SUM reads the MUL's output before the BATCH_MATMUL reads y
    assert stats == {0: {"hazards": 1, "defer": [], "commute": ["op 4 MUL"], "left": 0,
                         "declined": []}}
    assert op_names(fixed) == ["MUL", "SUB", "ADD", "MUL", "RESHAPE", "SUM", "BATCH_MATMUL"]
    assert hazards(*_model(fixed)) == []
    # the same operators: bit-identical, with the builtin kernels and with XNNPACK (which
    # plans its partitions itself and was right before)
    for got, want in [(run(fixed), truth), (run(fixed, OpResolverType.BUILTIN),
                                            run(hazardous, OpResolverType.BUILTIN))]:
        for name, value in want.items():
            np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_defer_moves_the_writer_after_the_last_read(hazardous):
    """With the SUM after the BATCH_MATMUL, nothing between the MUL and y's last read needs
    the MUL: it moves after that read, the sharing stays and is now right."""
    model, sg = _model(hazardous)
    sg.operators[5], sg.operators[6] = sg.operators[6], sg.operators[5]
    reordered = pack(model)
    assert op_names(reordered)[4:] == ["MUL", "BATCH_MATMUL", "SUM"]
    fixed, stats = inplace(reordered)
    assert stats == {0: {"hazards": 1, "defer": ["op 4 MUL after op 5"], "commute": [],
                         "left": 0, "declined": []}}
    assert op_names(fixed)[4:] == ["BATCH_MATMUL", "MUL", "SUM"]
    assert plan(*_model(fixed))[0] == plan(*_model(reordered))[0]   # the same sharing
    truth = run(reordered, preserve=True)
    for name, value in run(fixed).items():
        np.testing.assert_array_equal(value, truth[name], err_msg=name)


def test_no_hazard_leaves_the_file_as_it_is():
    content = convert(lambda a, b: {"y": tf.reshape(a * b + (a - b), [16, 16]) * 2.0},
                      (2, 8, 16), (2, 8, 16))
    fixed, stats = inplace(content)
    assert fixed is content and stats == {}


def test_declines_what_it_cannot_commute_and_says_so(hazardous, caplog):
    """A writer whose other operand has more than one element: counted, left as it is, and a
    warning names what may train wrong where."""
    model, sg = _model(hazardous)
    lr = [int(op.inputs[1]) for op in sg.operators][4]
    sg.tensors[lr].shape = [16]   # as if the MUL broadcast a vector over the reshape
    with caplog.at_level("WARNING", logger="tfpock.tflite.inplace"):
        stats = inplace_module.make_safe(model)
    assert stats == {0: {"hazards": 1, "defer": [], "commute": [], "left": 1, "declined": [
        "defer: the writer's output is read before the live tensor's last read",
        "commute: the writer's other operand has more than one element"]}}
    assert "may train wrong on tflite-runtime 2.14" in caplog.text
