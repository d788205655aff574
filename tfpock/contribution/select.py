"""Selection: the best combination of options (at most one per layer) under a budget.

Under PockEngine's and MCUNetV3's assumption that contributions add up, the predicted gain
of a combination S is ``sum(gain(c) for c in S)``. Its predicted costs:

* step time: ``t(base) + sum(t(base + c) - t(base))`` (each option adds its own backward ops);
* training memory: ``max(a(base), max(a(base + c) for c in S)) + v(base) + sum(v(base + c) -
  v(base))`` with ``a`` the exported step's peak of live activations and ``v`` its variable
  bytes. The activation peak is a max, not a sum: the earliest trained layer decides how far
  back the backward goes and which activations it keeps, a later one adds little to that.

:func:`knapsack` is exact for additive integer costs (a multiple-choice knapsack by dynamic
programming over the capacity grid); :func:`select` makes the max exact too by trying every
activation threshold ``t`` (options with ``a <= t`` only, capacity ``budget - v(base) - t``)
and keeping the best. Costs are rounded *up* to the grid, so a pick that fits the grid fits
the prediction.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

GRID = 400   # capacity cells per bounded dimension


def knapsack(values: Sequence[Sequence[float]], costs: Sequence[Sequence[Sequence[int]]],
             capacity: Sequence[int]) -> tuple[float, list[int | None]]:
    """Maximises the summed value, taking at most one option per group (None: none), subject
    to the summed integer cost vector <= ``capacity`` (1 or 2 dimensions). Exact.

    ``values[g][o]`` and ``costs[g][o]`` (a tuple of len(capacity) ints >= 0) describe option
    o of group g. Returns (best value, chosen option index or None per group). Ties keep the
    earlier, cheaper-listed option or none.
    """
    dims = tuple(int(c) + 1 for c in capacity)
    if any(d < 1 for d in dims):
        raise ValueError(f"capacity must be >= 0, got {tuple(capacity)}")
    best = np.zeros(dims)                     # best value with total cost <= cell
    choices = []
    for vals, cs in zip(values, costs):
        new = best.copy()
        choice = np.full(dims, -1, np.int32)
        for o, (v, c) in enumerate(zip(vals, cs)):
            if any(ci > d - 1 for ci, d in zip(c, dims)) or v <= 0:
                continue                      # too big for any cell, or worth nothing
            target = tuple(slice(ci, None) for ci in c)
            source = tuple(slice(0, d - ci) for ci, d in zip(c, dims))
            candidate = best[source] + v
            better = candidate > new[target] + 1e-12
            new[target] = np.where(better, candidate, new[target])
            choice[target] = np.where(better, o, choice[target])
        best = new
        choices.append(choice)
    cell = tuple(d - 1 for d in dims)
    picked: list[int | None] = [None] * len(values)
    for g in range(len(values) - 1, -1, -1):
        o = int(choices[g][cell])
        if o >= 0:
            picked[g] = o
            cell = tuple(ci - c for ci, c in zip(cell, costs[g][o]))
    return float(best[tuple(d - 1 for d in dims)]), picked


@dataclasses.dataclass(frozen=True)
class Item:
    """An option as selection sees it: gain and its costs *relative to the base* (deltas),
    except ``activation_bytes``, the absolute peak of base + this option."""
    key: str
    group: str
    gain: float
    activation_bytes: int
    variable_bytes: int
    step_ms: float | None


@dataclasses.dataclass(frozen=True)
class Prediction:
    gain: float
    memory_bytes: float
    step_ms: float | None


def predict(items: Sequence[Item], base: Item) -> Prediction:
    """Predicted gain and costs of base + ``items`` (module docstring)."""
    activation = max([base.activation_bytes] + [i.activation_bytes for i in items])
    time = None if base.step_ms is None else base.step_ms + sum(i.step_ms for i in items)
    return Prediction(sum(i.gain for i in items),
                      activation + base.variable_bytes + sum(i.variable_bytes for i in items),
                      time)


def select(groups: Sequence[Sequence[Item]], base: Item, memory_bytes: float | None,
           step_ms: float | None, grid: int = GRID) -> list[Item] | None:
    """The items (at most one per group) with the best summed gain whose predicted costs fit
    ``memory_bytes`` and ``step_ms`` (None: unbounded). None if not even the base fits."""
    if memory_bytes is not None and base.activation_bytes + base.variable_bytes > memory_bytes:
        return None
    if step_ms is not None and base.step_ms is not None and base.step_ms > step_ms:
        return None
    thresholds = sorted({base.activation_bytes} | {i.activation_bytes for g in groups for i in g
                                                   if i.activation_bytes > base.activation_bytes})
    if memory_bytes is None:
        thresholds = thresholds[-1:]
    best_value, best = -math.inf, []
    for t in thresholds:
        if memory_bytes is not None and t + base.variable_bytes > memory_bytes:
            break
        allowed = [[i for i in g if i.activation_bytes <= t] for g in groups]
        bounds = []   # (capacity, unit, cost of an item) per bounded dimension
        if memory_bytes is not None:
            room = memory_bytes - base.variable_bytes - t
            bounds.append((room, lambda i: i.variable_bytes))
        if step_ms is not None and base.step_ms is not None:
            bounds.append((step_ms - base.step_ms, lambda i: max(i.step_ms, 0.0)))
        units = [max(room, 1e-12) / grid for room, _ in bounds]
        capacity = [grid if room > 0 else 0 for room, _ in bounds]
        costs = [[tuple(math.ceil(f(i) / u - 1e-9) if f(i) > 0 else 0
                        for (_, f), u in zip(bounds, units)) for i in g] for g in allowed]
        value, picked = knapsack([[i.gain for i in g] for g in allowed], costs, capacity)
        if value > best_value + 1e-12:
            best_value = value
            best = [g[o] for g, o in zip(allowed, picked) if o is not None]
    return best
