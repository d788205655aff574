"""Checks a batch against a signature's static input spec (numpy only, used on both sides)."""
from __future__ import annotations

import numpy as np


class InputError(ValueError):
    """A batch whose shape or dtype does not match the compiled signature."""


def check_batch(name: str, value, shape: tuple[int, ...], dtype: np.dtype,
                signature: str) -> np.ndarray:
    """Returns ``value`` as an array of exactly ``shape`` and ``dtype``; integers are
    accepted for integer labels and any float for float inputs only when the cast is exact
    in kind (no float labels for an int32 signature, no silent truncation).

    NaN and inf in float inputs pass through on purpose: the training model's non-finite
    guard skips such a step inside the model (and ``infer`` returns what the model computes),
    so refusing them here would only duplicate it; integer labels cannot hold NaN. Labels
    outside the model's classes pass too: what they mean is the loss's business, not the
    signature's.
    """
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:   # ragged nested lists, objects numpy refuses
        raise InputError(f"{signature}: {name} is not an array: {exc}") from exc
    dtype = np.dtype(dtype)
    if tuple(array.shape) != tuple(shape):
        raise InputError(f"{signature}: {name} has shape {tuple(array.shape)}, the compiled "
                         f"signature takes {tuple(shape)} ({dtype})")
    same_kind = (np.issubdtype(array.dtype, np.integer) and np.issubdtype(dtype, np.integer)) or \
                (np.issubdtype(array.dtype, np.floating) and np.issubdtype(dtype, np.floating))
    if array.dtype != dtype and not same_kind:
        raise InputError(f"{signature}: {name} has dtype {array.dtype}, the compiled signature "
                         f"takes {dtype} {tuple(shape)}")
    if array.dtype != dtype:
        cast = array.astype(dtype)
        if np.issubdtype(dtype, np.integer) and not np.array_equal(cast, array):
            raise InputError(f"{signature}: {name} has values that do not fit {dtype}")
        array = cast
    return np.asarray(array, order="C")   # unlike ascontiguousarray, keeps 0-d arrays 0-d


def check_labels(y: np.ndarray, classes: int, signature: str) -> np.ndarray:
    """Integer labels (a sparse categorical loss) must name one of the ``classes`` outputs:
    an index outside [0, classes) would make the loss NaN (a skipped step) or, worse, read
    another row, so it is refused here, naming the first offender."""
    if np.issubdtype(y.dtype, np.integer) and y.size:
        bad = np.flatnonzero((y < 0) | (y >= classes))
        if bad.size:
            raise InputError(f"{signature}: y holds label {int(y.flat[bad[0]])} at flat index "
                             f"{int(bad[0])}; labels must be in [0, {classes})")
    return y


def check_inputs(x, specs: dict[str, tuple[tuple[int, ...], np.dtype]],
                 signature: str) -> dict[str, np.ndarray]:
    """The model's inputs as ``{signature name: array}`` checked against ``specs`` (name ->
    shape, dtype): ``x`` is an array for a model with one input (named ``x``) and a dict keyed
    by the input names for a model with several; a missing or unknown name is refused,
    naming what the signature takes."""
    if list(specs) == ["x"]:
        return {"x": check_batch("x", x, *specs["x"], signature)}
    if not isinstance(x, dict):
        raise InputError(f"{signature}: the model has inputs {', '.join(specs)}; pass x as a "
                         f"dict keyed by them, got {type(x).__name__}")
    if set(x) != set(specs):
        raise InputError(f"{signature}: x has keys {sorted(x)}, the model's inputs are "
                         f"{', '.join(specs)}")
    return {name: check_batch(name, x[name], *spec, signature) for name, spec in specs.items()}


def sample_weights(value, shape: tuple[int, ...] | None, signature: str) -> list[np.ndarray]:
    """The ``sample_weight`` input of a train signature as a list of what to pass: [] for a
    model compiled without one (where a given value is refused: it would be ignored), else
    the checked float32 array, all ones when ``value`` is None."""
    if shape is None:
        if value is not None:
            raise InputError(f"{signature}: sample_weight given, but the model was compiled "
                             "without one; compile with tfpock.optimize(..., "
                             "sample_weight=True)")
        return []
    if value is None:
        return [np.ones(shape, np.float32)]
    if isinstance(value, np.ndarray) and value.dtype.kind in "biu":
        value = value.astype(np.float32)   # a padding mask (0/1 integers) as the weights
    return [check_batch("sample_weight", value, shape, np.dtype(np.float32), signature)]
