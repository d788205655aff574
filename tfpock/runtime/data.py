"""Training data from files, for ``tfpock train``: numpy only.

Three forms, each checked against the model's ``x`` and ``y`` (shape of a row and dtype kind)
before any step, the error naming the file, the array and what the model takes:

* ``data.npz`` with arrays ``x`` and ``y`` (``np.savez("data.npz", x=x, y=y)``);
* ``x.npy,y.npy``: two ``.npy`` files, comma-separated;
* ``data.csv``: one row a line, numbers separated by commas, an optional header line; the
  last column is the label, the others the features, reshaped to the model's input row
  (``16x16x3`` images as 768 columns, in C order).

A model with several inputs (a language model's ``token_ids`` and ``padding_mask``) takes an
``.npz`` with one array per input name and ``y``. Any ``.npz`` may also hold
``sample_weight``, the loss's weight of each row or label (:func:`sample_weight`), for a
model compiled with ``tfpock optimize --sample-weight``.
"""
from __future__ import annotations

import os

import numpy as np

from tfpock.runtime.validate import InputError


def load(spec: str, x_spec: dict, y_spec: dict) -> tuple:
    """(x, y) from ``spec`` (one of the forms above), checked against the specs (the
    model's metadata ``x``/``y``: ``{"shape": [batch, ...], "dtype": ...}``; for several
    inputs ``x_spec`` is ``{name: spec}`` and x comes back as a dict)."""
    if "shape" not in x_spec:
        return _inputs_npz(spec, x_spec, y_spec)
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


def _inputs_npz(path: str, x_specs: dict, y_spec: dict) -> tuple[dict, np.ndarray]:
    """A model with several inputs: an .npz with an array per input name and ``y``."""
    if not path.endswith(".npz"):
        raise InputError(f"data {path!r}: a model with inputs {list(x_specs)} takes a .npz "
                         f"with one array per input and 'y'")
    _exists(path)
    wanted = list(x_specs) + ["y"]
    with _open_npz(path) as archive:
        missing = [k for k in wanted if k not in archive.files]
        if missing:
            raise InputError(f"data file {path!r} holds arrays {sorted(archive.files)}; the "
                             f"model needs {wanted} (missing {missing})")
        arrays = {k: archive[k] for k in wanted}
    x = {}
    for name, spec in x_specs.items():
        x[name], y = check(f"{path}: {name}", arrays[name], arrays["y"], spec, y_spec)
    if len({len(v) for v in x.values()}) != 1:
        raise InputError(f"data {path!r}: the inputs have different numbers of rows "
                         f"{ {k: len(v) for k, v in x.items()} }")
    return x, y


def sample_weight(spec: str, rows: int) -> np.ndarray | None:
    """The ``sample_weight`` array of an .npz data file (None when it has none, or for the
    other forms): float32, finite, >= 0, one a row or a label (``Trainer.fit`` checks its
    shape against ``y``), ``rows`` of them."""
    if not spec.endswith(".npz"):
        return None
    with _open_npz(spec) as archive:
        if "sample_weight" not in archive.files:
            return None
        w = archive["sample_weight"]
    if w.dtype.kind not in "biuf" or w.ndim == 0 or len(w) != rows:
        raise InputError(f"data {spec!r}: sample_weight has shape {w.shape} ({w.dtype}); it "
                         f"takes numbers, {rows} rows like y")
    return w.astype(np.float32)


def _open_npz(path: str):
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"data file {path!r} is not a readable .npz: {exc}") from None


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
