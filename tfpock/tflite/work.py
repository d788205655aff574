"""The arithmetic and the variable copies of a signature, counted from its file: what a step
must do whatever the kernels, so a measured time can be read against it.

Why: a sparse step's time over the constant-weight forward (issue 11's "x floor") mixes three
things: the multiply-accumulates the scheme adds (its forward on trained weights is the
forward's; its weight and input gradients are new), how fast the kernels that run them are
(XNNPACK on constant weights, TFLite's builtins or XNNPACK's batch matmul on runtime ones),
and the bytes the update moves. Only the first is physics. Counting it says how much of a
gap a faster kernel could close: a step with 1.24x the forward's MACs cannot run in 1.3x the
forward's time unless its new MACs run faster than the forward's.

Multiply-accumulates per operator, from the tensor shapes alone (NHWC; TFLite's filter
layouts):

* ``CONV_2D``: output ``[N, Ho, Wo, Co]``, filter ``[Co, kh, kw, Ci]``: ``N*Ho*Wo*Co * kh*kw*Ci``
  (a grouped convolution's filter holds ``Ci / groups``, so the same product is right);
* ``DEPTHWISE_CONV_2D``: output ``[N, Ho, Wo, C*m]``, filter ``[1, kh, kw, C*m]``:
  ``N*Ho*Wo*C*m * kh*kw``;
* ``FULLY_CONNECTED``: weights ``[O, K]``: every output element costs ``K``;
* ``BATCH_MATMUL``: output ``[..., M, P]``, left operand ``[..., M, K]`` (or ``[..., K, M]``
  when ``adj_x``): every output element costs ``K``, read as the left operand's last-two
  dimension that is not ``M`` (either, when both are: then ``K == M``);
* ``TRANSPOSE_CONV``: filter ``[Co, kh, kw, Ci]``, input ``[N, H, W, Ci]``: every input
  element is scattered into ``kh*kw*Co`` outputs.

Other operators (elementwise, reductions, data movement) are counted as zero: at the sizes of
these models they are memory-bound, which :attr:`Work.variable_copy_bytes` and the op profile
(``bench/op_profile.py``) measure instead.

``variable_copy_bytes``: what ``READ_VARIABLE`` (a copy out of the variable) and
``ASSIGN_VARIABLE`` (a copy into it) move per call; an SGD update of a 2.25 MB kernel pays
0.21 ms for them on this host (``bench/results/2026-12-03-x86_64-2core-runtime-weights.md``).
Measured against whole steps: ``bench/results/2026-12-07-x86_64-avx512-2core-depth-work.md``
(``python -m bench.studies.depth_work``).
"""
from __future__ import annotations

import collections
import dataclasses

import numpy as np

from tfpock.tflite import memory, model_file


@dataclasses.dataclass(frozen=True)
class Work:
    """Multiply-accumulates by operator type and the bytes variable reads and assigns copy."""
    macs_by_op: dict[str, int]
    variable_copy_bytes: int

    @property
    def macs(self) -> int:
        return sum(self.macs_by_op.values())


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def op_macs(op: model_file.Operator, tensors: list[model_file.Tensor]) -> int:
    """Multiply-accumulates of one operator (module docstring); 0 for operators without."""
    if not op.outputs or op.custom:
        return 0
    shape = lambda position: tensors[op.inputs[position]].shape  # noqa: E731
    out = tensors[op.outputs[0]].shape
    if op.name == "CONV_2D":
        _, kh, kw, ci = shape(1)
        return _size(out) * kh * kw * ci
    if op.name == "DEPTHWISE_CONV_2D":
        _, kh, kw, _ = shape(1)
        return _size(out) * kh * kw
    if op.name == "FULLY_CONNECTED":
        return _size(out) * shape(1)[1]
    if op.name == "BATCH_MATMUL":
        left, m = shape(0), out[-2]
        return _size(out) * (left[-1] if left[-2] == m else left[-2])
    if op.name == "TRANSPOSE_CONV":
        co, kh, kw, _ = shape(1)
        return _size(shape(2)) * kh * kw * co
    return 0


def count(content: bytes | model_file.ModelFile, signature: str) -> Work:
    """The :class:`Work` of one signature of a .tflite file."""
    parsed = content if isinstance(content, model_file.ModelFile) else model_file.read(content)
    sg = parsed.subgraph(signature)
    macs: collections.Counter = collections.Counter()
    copied = 0
    for op in sg.operators:
        n = op_macs(op, sg.tensors)
        if n:
            macs[op.name] += n
        if op.name == "READ_VARIABLE":
            copied += memory.tensor_bytes(sg.tensors[op.outputs[0]])
        elif op.name == "ASSIGN_VARIABLE":
            copied += memory.tensor_bytes(sg.tensors[op.inputs[-1]])
    return Work(dict(macs), copied)
