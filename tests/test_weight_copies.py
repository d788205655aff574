"""Trained weights are read as they are: no step copies a variable to reshape or transpose it.

TFLite's READ_VARIABLE returns a dynamic tensor, and a RESHAPE, TRANSPOSE or REVERSE_V2 of a
dynamic tensor is a copy, every step, of the whole weight (2.36 MB for a ResNet layer4
kernel). The lowering reads trained 1x1 and few-position kxk kernels straight into batch
matmuls instead (``graph_passes/lowering/conv.py``); this checks the exported ``train`` of a
model with both geometries at batch 1, and that its step still equals stock TF's.
"""
from __future__ import annotations

import keras
import numpy as np
from ai_edge_litert import schema_py_generated as schema

import tfpock
from tests.numerics import assert_close
from tests.reference import tape_sgd_step, weights_by_path
from tfpock.runtime import Trainer
from tfpock.testing import models
from tfpock.tflite.flatbuffer import builtin

COPIES = {schema.BuiltinOperator.RESHAPE, schema.BuiltinOperator.TRANSPOSE,
          schema.BuiltinOperator.REVERSE_V2}
LR = 0.05


def loss_fn():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def variable_readers(content: bytes, signature: str = "train") -> list[tuple[int, str]]:
    """(builtin code, variable tensor name) of every op that reads a READ_VARIABLE output."""
    model = schema.ModelT.InitFromPackedBuf(content, 0)
    index = {s.signatureKey.decode(): s.subgraphIndex for s in model.signatureDefs}
    sg = model.subgraphs[index[signature]]
    reads = {op.outputs[0] for op in sg.operators
             if builtin(model, op) == schema.BuiltinOperator.READ_VARIABLE}
    return [(builtin(model, op), sg.tensors[t].name.decode())
            for op in sg.operators for t in op.inputs if t in reads]


def test_trained_kernels_are_not_copied_and_the_step_matches_gradient_tape(tmp_path):
    model = models.deep_head_cnn()
    program = tfpock.optimize(model, loss=loss_fn(), optimizer=keras.optimizers.SGD(LR),
                              scheme="last:3", batch_size=1)
    assert sorted(p.split("/")[0] for p in program.trained_paths) == sorted(
        ["deep_3x3"] * 2 + ["head_1x1"] * 2 + ["logits"] * 2)
    path = tmp_path / "model.tflite"
    program.export(path)
    readers = variable_readers(path.read_bytes())
    assert readers, "the trained weights are variables"
    copies = [(code, name) for code, name in readers if code in COPIES]
    assert not copies, f"variable reads copied by reshape/transpose/reverse: {copies}"

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (1, 6, 6, 4)).astype(np.float32)
    y = np.array([3], np.int32)
    reference = models.deep_head_cnn()
    before = weights_by_path(reference)
    ref_loss = tape_sgd_step(reference, loss_fn(), LR, x, y, program.trained_paths)
    after = weights_by_path(reference)
    trainer = Trainer(path)
    out = trainer.train(x, y)
    assert_close(out["loss"], ref_loss, rtol=1e-5, where="loss")
    for name, value in trainer.weights().items():
        assert not np.array_equal(value, before[name]), f"{name} did not move"
        assert_close(value, after[name], atol=1e-5, where=name)
