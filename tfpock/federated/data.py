"""Client data on the device side (numpy only): non-IID splits, local batches, evaluation.

A tfpock model takes batches of one compiled size, so a client's local steps draw batches of
that size (:func:`local_batches`) and evaluation pads the last batch (:func:`predict`).
"""
from __future__ import annotations

import os

import numpy as np

from tfpock.runtime.validate import InputError


def dirichlet_split(labels, clients: int, alpha: float, seed: int = 0) -> list[np.ndarray]:
    """Indices of each client's examples: per class, the class's examples are shared among
    the clients in proportions drawn from Dirichlet(alpha) (label skew, Hsu et al. 2019; alpha
    0.3 gives most clients a few dominant classes). Every example goes to exactly one client;
    a client may get none (an empty client, which the client app handles)."""
    labels = np.asarray(labels)
    if not isinstance(clients, int) or clients < 1:
        raise ValueError(f"dirichlet_split: clients must be an int >= 1, got {clients!r}")
    if not alpha > 0:
        raise ValueError(f"dirichlet_split: alpha must be > 0, got {alpha!r}")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(clients)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
        for client, chunk in enumerate(np.split(members, cuts)):
            parts[client].extend(chunk.tolist())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def local_batches(examples: int, steps: int, batch: int, seed) -> list[np.ndarray]:
    """Indices of ``steps`` batches of ``batch`` examples out of ``examples``: epochs of a
    seeded permutation, one after the other (with replacement when there are fewer examples
    than a batch). The same seed gives the same batches, so a test can replay a client."""
    if examples < 1:
        return []
    rng = np.random.default_rng(seed)
    if examples < batch:
        return [rng.integers(0, examples, batch) for _ in range(steps)]
    order = np.concatenate([rng.permutation(examples)
                            for _ in range(-(-steps * batch // examples))])
    return [order[i * batch:(i + 1) * batch] for i in range(steps)]


def predict(trainer, x) -> np.ndarray:
    """``trainer.infer`` over any number of examples (:meth:`Trainer.predict`: batches of the
    compiled size, the last one padded and its outputs dropped); no examples, no outputs."""
    x = np.asarray(x)
    if len(x) == 0:
        return np.zeros((0,) + tuple(trainer.metadata["output"]["shape"][1:]), np.float32)
    return trainer.predict(x)


def accuracy(trainer, x, y) -> float:
    """Fraction of examples whose largest output is their label."""
    if len(x) == 0:
        raise InputError("accuracy: no examples")
    return float(np.mean(np.argmax(predict(trainer, x), axis=-1) == np.asarray(y)))


class NpzPartitions:
    """The clients' data as one .npz (``x``, ``y`` and ``part<i>`` index arrays), read once
    per process: a small picklable object Flower can ship to every Ray worker, which then
    reads the file (numpy only) instead of receiving the data set with every message."""

    _cache: dict = {}

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)

    @staticmethod
    def write(path, x, y, parts: list[np.ndarray]) -> "NpzPartitions":
        np.savez(path, x=x, y=y, **{f"part{i}": p for i, p in enumerate(parts)})
        return NpzPartitions(path)

    def _arrays(self):
        if self.path not in self._cache:
            with np.load(self.path, allow_pickle=False) as f:
                self._cache[self.path] = {k: f[k] for k in f.files}
        return self._cache[self.path]

    def __len__(self) -> int:
        return sum(1 for k in self._arrays() if k.startswith("part"))

    def __call__(self, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
        arrays = self._arrays()
        key = f"part{partition_id}"
        if key not in arrays:
            raise KeyError(f"{self.path}: no partition {partition_id} (it has {len(self)})")
        index = arrays[key]
        return arrays["x"][index], arrays["y"][index]
