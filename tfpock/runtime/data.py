"""Training data from files, for ``tfpock train``: numpy only.

Three forms, each checked against the model's ``x`` and ``y`` (shape of a row and dtype kind)
before any step, the error naming the file, the array and what the model takes:

* ``data.npz`` with arrays ``x`` and ``y`` (``np.savez("data.npz", x=x, y=y)``);
* ``x.npy,y.npy``: two ``.npy`` files, comma-separated;
* ``data.csv``: one row a line, numbers separated by commas, an optional header line; the
  last column is the label, the others the features, reshaped to the model's input row
  (``16x16x3`` images as 768 columns, in C order).
"""
from __future__ import annotations

import os

import numpy as np

from tfpock.runtime.validate import InputError


def load(spec: str, x_spec: dict, y_spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) from ``spec`` (one of the forms above), checked against the specs (the
    model's metadata ``x``/``y``: ``{"shape": [batch, ...], "dtype": ...}``)."""
    if "," in spec:
        paths = spec.split(",")
        if len(paths) != 2 or not all(p.endswith(".npy") for p in paths):
            raise InputError(f"data {spec!r}: a pair is two .npy files, X.npy,Y.npy")
        x, y = (_npy(p) for p in paths)
        where = spec
    elif spec.endswith(".npz"):
        x, y = _npz(spec)
        where = spec
    elif spec.endswith(".csv"):
        x, y = _csv(spec, x_spec)
        where = spec
    else:
        raise InputError(f"data {spec!r}: expected a .npz (arrays x and y), a pair "
                         f"X.npy,Y.npy or a .csv (label in the last column)")
    return check(where, x, y, x_spec, y_spec)


def _exists(path: str) -> None:
    if not os.path.isfile(path):
        raise InputError(f"data file {path!r} does not exist")


def _npy(path: str) -> np.ndarray:
    _exists(path)
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"data file {path!r} is not a readable .npy array: {exc}") from None


def _npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    _exists(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = sorted(archive.files)
            if "x" not in keys or "y" not in keys:
                raise InputError(f"data file {path!r} holds arrays {keys}; it needs 'x' and "
                                 f"'y' (np.savez(path, x=x, y=y))")
            return archive["x"], archive["y"]
    except (ValueError, OSError, EOFError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"data file {path!r} is not a readable .npz: {exc}") from None


def _csv(path: str, x_spec: dict) -> tuple[np.ndarray, np.ndarray]:
    _exists(path)
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    if lines and not _numeric(lines[0]):
        lines = lines[1:]   # a header
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append([float(v) for v in line.split(",")])
        except ValueError:
            raise InputError(f"data file {path!r}: row {number} is not numbers separated by "
                             f"commas: {line[:60]!r}") from None
    if not rows:
        raise InputError(f"data file {path!r} has no rows")
    if len({len(r) for r in rows}) != 1:
        raise InputError(f"data file {path!r}: rows have different numbers of columns")
    table = np.array(rows)
    features = int(np.prod(x_spec["shape"][1:]))
    if table.shape[1] != features + 1:
        raise InputError(f"data file {path!r} has {table.shape[1]} columns; the model takes "
                         f"{features} features a row (x row {tuple(x_spec['shape'][1:])}) and "
                         f"the label last: {features + 1} columns")
    return (table[:, :-1].reshape(len(table), *x_spec["shape"][1:]),
            table[:, -1])


def _numeric(line: str) -> bool:
    try:
        [float(v) for v in line.split(",")]
    except ValueError:
        return False
    return True


def check(where: str, x, y, x_spec: dict, y_spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` and ``y`` as the model takes them (dtype cast only where exact)."""
    out = []
    for name, array, spec in (("x", x, x_spec), ("y", y, y_spec)):
        array = np.asarray(array)
        row, dtype = tuple(spec["shape"][1:]), np.dtype(spec["dtype"])
        if array.ndim == 0 or tuple(array.shape[1:]) != row:
            wanted = "(rows" + "".join(f", {d}" for d in row) + ")"
            raise InputError(f"data {where!r}: {name} has shape {tuple(array.shape)}; the model "
                             f"takes {name} of shape {wanted}, {dtype}")
        kind_ok = (np.issubdtype(dtype, np.floating) and (np.issubdtype(array.dtype, np.floating)
                                                          or np.issubdtype(array.dtype,
                                                                           np.integer))) or \
            (np.issubdtype(dtype, np.integer) and (np.issubdtype(array.dtype, np.integer) or (
                np.issubdtype(array.dtype, np.floating) and np.all(array == np.round(array)))))
        if not kind_ok:
            raise InputError(f"data {where!r}: {name} has dtype {array.dtype}; the model takes "
                             f"{dtype} (integer class labels for a sparse loss)")
        out.append(array.astype(dtype))
    if len(out[0]) != len(out[1]):
        raise InputError(f"data {where!r}: x has {len(out[0])} rows, y has {len(out[1])}")
    if len(out[0]) == 0:
        raise InputError(f"data {where!r} has no rows")
    return out[0], out[1]
