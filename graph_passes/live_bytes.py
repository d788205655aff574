"""Live activation bytes: the one model of memory both IRs are measured with.

A tensor holds ``activation_bytes(shape, dtype)`` from the step that produces it to the last
step that reads it, both inclusive; :func:`live_profile` adds those intervals up per step. The
GraphDef's estimate (:mod:`graph_passes.liveness`) and the .tflite file's timeline
(:func:`tfpock.tflite.memory.timeline`) both use these two functions, so their figures differ
only by what each IR counts as a step, never by arithmetic. No TensorFlow here.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

_ITEM_BYTES = {"FLOAT32": 4, "INT32": 4, "INT64": 8, "FLOAT16": 2, "INT8": 1, "UINT8": 1,
               "BOOL": 1, "INT16": 2, "FLOAT64": 8, "UINT32": 4, "UINT64": 8}
_NOT_ACTIVATIONS = {"RESOURCE", "VARIANT", "STRING"}


def activation_bytes(shape, dtype: str) -> int:
    """Arena bytes of a tensor of ``shape`` and schema type name ``dtype`` (0 for resources,
    variants and strings, which the arena does not hold as plain data)."""
    if dtype in _NOT_ACTIVATIONS:
        return 0
    return int(np.prod(shape, dtype=np.int64)) * _ITEM_BYTES.get(dtype, 4)


def live_profile(intervals: Iterable[tuple[int, int, int]], n_steps: int) -> np.ndarray:
    """Live bytes at each of ``n_steps`` steps, from each tensor's (first step, last step,
    bytes), both steps inclusive."""
    delta = np.zeros(n_steps + 1, np.int64)
    for first, last, size in intervals:
        delta[first] += size
        delta[last + 1] -= size
    return np.cumsum(delta)[:n_steps]
