"""Checkpoints: an .npz of the trained weights keyed by Keras variable path, written atomically.

Atomic (:mod:`tfpock.runtime.atomic`): a crash leaves the previous checkpoint or the new one,
never a torn file.
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

from tfpock.runtime.atomic import write_atomically


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model."""


def save(path: str | os.PathLike, weights: dict[str, np.ndarray]) -> str:
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise CheckpointError(f"checkpoint path {path!r} must end with .npz")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CheckpointError(f"folder {folder!r} of checkpoint {path!r} does not exist")
    return write_atomically(path, lambda f: np.savez(f, **weights))


def load(path: str | os.PathLike, expected: dict[str, tuple[tuple[int, ...], np.dtype]]
         ) -> dict[str, np.ndarray]:
    """Reads a checkpoint and checks it holds exactly the ``expected`` weights
    (path -> (shape, dtype)); every problem is named."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            weights = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise CheckpointError(f"checkpoint {path!r} is not a readable .npz file: {exc}") from exc
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path!r} does not fit the model: missing "
                              f"{missing or 'nothing'}, unexpected {unexpected or 'nothing'}")
    for key, (shape, dtype) in expected.items():
        value = weights[key]
        if tuple(value.shape) != tuple(shape) or value.dtype != np.dtype(dtype):
            raise CheckpointError(f"checkpoint {path!r}: weight {key!r} is {value.dtype} "
                                  f"{tuple(value.shape)}, the model has {np.dtype(dtype)} "
                                  f"{tuple(shape)}")
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"checkpoint {path!r}: weight {key!r} holds NaN or inf")
    return weights
