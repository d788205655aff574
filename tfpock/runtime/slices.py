"""Trained slices: the part of a model's state that training changes, and nothing else.

A federated client ships its trained slice, not the model: every variable of kind ``weight``
or ``state`` (trained weights, moving statistics of trained BatchNorms), each cut to what the
scheme trains. A partial-channel weight (``{"weight_fraction": 0.25}``) trains its first k
input channels only, and the model file's metadata (format /5) says so per variable::

    {"name": "conv/kernel", "kind": "weight", "shape": [3, 3, 16, 32],
     "slice": {"axis": 2, "channels": [0, 4]}, ...}

so its slice is ``kernel[:, :, 0:4, :]``: k channels travel, not the kernel. Optimizer state
never travels (each client keeps or resets its own). A format-/4 file has no ``slice``: its
partial weights travel whole, and writing one back changes only the trained channels (the
model's ``load`` assigns those alone; the frozen ones are constants of the file).

The exchange format is a dict ``{variable name: numpy array}`` with exactly the slice's names,
each of exactly its shape and dtype (no casts: an update that needs one is not this model's)
and finite. :func:`check` refuses anything else, naming the variable and what it expected,
before any weight is touched.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from tfpock.runtime.validate import InputError

KINDS = ("weight", "state")   # what travels; "optimizer" stays on the client


class SliceError(InputError):
    """An update that is not this model's trained slice (names, shapes, dtypes, values)."""


@dataclasses.dataclass(frozen=True)
class Part:
    """One variable's trained slice: ``stop`` channels (from 0) along ``axis``, or the whole
    variable when ``axis`` is None."""
    name: str
    shape: tuple[int, ...]      # of the slice
    dtype: np.dtype
    axis: int | None = None
    stop: int | None = None

    def take(self, whole: np.ndarray) -> np.ndarray:
        if self.axis is None:
            return np.array(whole)
        index = [slice(None)] * whole.ndim
        index[self.axis] = slice(0, self.stop)
        return np.array(whole[tuple(index)])

    def put(self, whole: np.ndarray, part: np.ndarray) -> np.ndarray:
        if self.axis is None:
            return part
        out = np.array(whole)
        index = [slice(None)] * whole.ndim
        index[self.axis] = slice(0, self.stop)
        out[tuple(index)] = part
        return out


def metadata_problems(variables: list) -> list[str]:
    """What is wrong with the ``slice`` entries of a model's variables (empty: nothing).
    Called when a model is loaded, so a bad entry is a refused file, not a wrong update."""
    problems = []
    for v in variables:
        if not isinstance(v, dict) or "slice" not in v:
            continue
        s, shape = v["slice"], v.get("shape")
        ok = (v.get("kind") == "weight" and isinstance(s, dict) and isinstance(shape, list)
              and _is_int(s.get("axis")) and 0 <= s["axis"] < len(shape)
              and isinstance(s.get("channels"), list) and len(s["channels"]) == 2
              and all(_is_int(c) for c in s["channels"]) and s["channels"][0] == 0
              and 0 < s["channels"][1] <= shape[s["axis"]])
        if not ok:
            problems.append(f"variable {v.get('name')!r} has slice {s!r}; a slice is "
                            "{'axis': a, 'channels': [0, k]} on a weight, 0 < k <= its shape[a]")
    return problems


def stored_shape(variable: dict) -> tuple[int, ...]:
    """The shape a (checked) metadata entry's variable has in the file: its ``shape`` (what
    checkpoints and ``weights()`` hold, whole) cut to the trained channels where it has a
    ``slice`` (the frozen channels are constants of the file, not variables)."""
    shape = [int(d) for d in variable["shape"]]
    if "slice" in variable:
        shape[variable["slice"]["axis"]] = variable["slice"]["channels"][1]
    return tuple(shape)


def layout(metadata: dict) -> dict[str, Part]:
    """The trained slice of a (checked) model's metadata, by variable name, in file order."""
    parts = {}
    for v in metadata["variables"]:
        if v["kind"] not in KINDS:
            continue
        shape, dtype = stored_shape(v), np.dtype(v["dtype"])
        if "slice" in v:
            parts[v["name"]] = Part(v["name"], shape, dtype, v["slice"]["axis"],
                                    v["slice"]["channels"][1])
        else:
            parts[v["name"]] = Part(v["name"], shape, dtype)
    return parts


def extract(state: dict[str, np.ndarray], parts: dict[str, Part]) -> dict[str, np.ndarray]:
    """The trained slice of a whole state (:meth:`Trainer.state`)."""
    return {name: part.take(state[name]) for name, part in parts.items()}


def check(values, parts: dict[str, Part], where: str = "set_trained_slice"
          ) -> dict[str, np.ndarray]:
    """Returns ``values`` as the slice's arrays if they are exactly it, else raises
    :class:`SliceError` naming the first problem; reads nothing but ``values``."""
    if not isinstance(values, dict):
        raise SliceError(f"{where}: an update is a dict {{variable name: array}}, got "
                         f"{type(values).__name__}")
    names = set(parts)
    bad_keys = [k for k in values if not isinstance(k, str)]
    if bad_keys or set(values) != names:
        missing = sorted(names - set(values))
        extra = "[" + ", ".join(sorted(map(repr, set(values) - names))) + "]"
        raise SliceError(f"{where}: the update must hold exactly the trained slice's "
                         f"{len(names)} variables; missing {missing}, unexpected {extra}")
    out = {}
    for name, part in parts.items():
        value = values[name]
        if not isinstance(value, np.ndarray):
            raise SliceError(f"{where}: {name} is a {type(value).__name__}, not a numpy array")
        if value.dtype != part.dtype:
            raise SliceError(f"{where}: {name} has dtype {value.dtype}, the model's slice is "
                             f"{part.dtype} {part.shape}")
        if tuple(value.shape) != part.shape:
            raise SliceError(f"{where}: {name} has shape {tuple(value.shape)}, the model's "
                             f"slice is {part.shape} ({part.dtype})")
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise SliceError(f"{where}: {name} holds NaN or inf")
        out[name] = np.array(value, order="C")
    return out


def merge(state: dict[str, np.ndarray], values: dict[str, np.ndarray],
          parts: dict[str, Part]) -> dict[str, np.ndarray]:
    """A whole state: ``state`` with each slice of ``values`` (already checked) written in."""
    out = dict(state)
    for name, part in parts.items():
        out[name] = part.put(state[name], values[name])
    return out


def nbytes(values: dict[str, np.ndarray]) -> int:
    """Bytes of the arrays' data (what travels, before any framing)."""
    return int(sum(np.asarray(v).nbytes for v in values.values()))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
