"""Predicted cost of every candidate from a few compiles (``search(..., costs="predicted")``).

An exact cost (:mod:`tfpock.contribution.cost`) is a compile and an export per candidate:
MobileNetV2 0.35 has 206 options at 10-25 s each on a loaded 2-core machine, far beyond a
15-minute search. The prediction measures real exported programs too, but only a few:

* **Variable bytes, exact.** A variable belongs to one layer (a weight, its optimizer slots,
  its BatchNorm statistics), so one *grouped* layout per option label (every layer that has
  a ``1/4`` option trained at 1/4, and so on: at most five) gives the bytes each layer's
  option adds; base + option's variable bytes are the base's plus those. The layout is the
  compiler's own (``cost.layout_variables``: ``tfpock.tracing.param_layout``, milliseconds;
  a grouped *compile* of MobileNetV2 took minutes on the loaded machine), counted as
  ``program_cost`` counts the exported metadata.
* **Peak live activations, an upper bound by depth.** Training layer L (any option) makes the
  backward run from the loss down to L and keep what that needs; training an earlier layer
  keeps at least as much. So the exported peak ``a(L)`` is taken to fall with depth, and the
  full option to need at least what bias or a channel fraction of the same layer needs.
  ``base + L:full`` is compiled and exported for a few layers ``g`` (the first and last
  candidate, then bisecting the interval whose ends differ most, ``depth_compiles`` in all);
  every option of a layer between ``g_i`` and ``g_j`` gets ``max(a(g_i), a(g_j))``. Where
  the assumption holds this bounds the exact figure from above (tests/search checks it on a
  small CNN, where every layer is a grid point); the chosen scheme is compiled anyway and
  repaired if its exact memory is over the budget (``core._State.verify_cost``).
* **Step time, interpolated.** The measured one-thread step of ``base + g:full`` at the grid
  layers, linearly interpolated in layer index between them, for every option of a layer
  (the option's own weight gradient is not modelled: a partial or bias option is predicted
  as slow as the full one at its depth). A prediction, not a bound; the chosen scheme's step
  is measured and the report says how close the prediction was.

Measured on MobileNetV2 0.35 @96: bench/results/2026-12-06-x86_64-2core-search-mobilenet.md.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from tfpock.contribution.candidates import Option
from tfpock.runtime.slices import stored_shape


def variable_bytes_by_layer(variables: Sequence[dict]) -> dict[str, int]:
    """Bytes of an exported program's variables per owning layer (``program_cost``'s count:
    the stored shapes, a partial weight's k channels). Optimizer slots are named
    ``optimizer/<slot>/<weight name>`` and belong to that weight's layer; variables of no
    layer (the step counter) are left out."""
    owner = {v["name"]: v["layer"] for v in variables if v.get("layer")}
    out: dict[str, int] = {}
    for v in variables:
        layer = v.get("layer") or next((owner[w] for w in sorted(owner, key=len, reverse=True)
                                        if v["name"].endswith("/" + w)), "")
        if layer:
            nbytes = int(np.prod(stored_shape(v), dtype=np.int64)) * np.dtype(v["dtype"]).itemsize
            out[layer] = out.get(layer, 0) + nbytes
    return out


def grid_layers(order: Sequence[str], activation: Callable[[str], int],
                compiles: int) -> list[int]:
    """Indices into ``order`` (layers, input side first) of the layers to compile: the first
    and the last, then, while compiles remain, the middle of the adjacent pair whose
    activation peaks differ most (ties: the wider pair). ``activation(name)`` compiles."""
    grid = sorted({0, len(order) - 1})
    peaks = {i: activation(order[i]) for i in grid}
    while len(grid) < min(compiles, len(order)):
        pairs = [(abs(peaks[i] - peaks[j]), j - i, i, j) for i, j in zip(grid, grid[1:])
                 if j - i > 1]
        if not pairs:
            break
        _, _, i, j = max(pairs)
        mid = (i + j) // 2
        peaks[mid] = activation(order[mid])
        grid = sorted(grid + [mid])
    return grid


def predicted_costs(options: dict[str, list[Option]], base_cost: dict,
                    exact: Callable[[dict], dict], variables: Callable[[dict], list[dict]],
                    depth_compiles: int) -> tuple[dict[str, dict], dict]:
    """Cost dicts (as ``State.cost`` gives, plus ``predicted: True``) for every option.

    ``options``: layer -> its options, in model order (input side first). ``exact(choice)``:
    the exact cost of base + ``choice`` ({layer: Option}) by compile and export.
    ``variables(choice)``: the variables of base + ``choice`` as the metadata lists them.
    Returns the costs by option key and what was compiled (module docstring)."""
    order = [layer for layer, opts in options.items() if opts]
    if not order:
        return {}, {"grid": [], "grouped": []}
    full = {layer: next(o for o in options[layer] if o.label == "full") for layer in order}
    measured: dict[str, dict] = {}

    def peak(layer: str) -> int:
        measured[layer] = exact({layer: full[layer]})
        return measured[layer]["activation_bytes"]

    grid = grid_layers(order, peak, depth_compiles)
    labels = sorted({o.label for opts in options.values() for o in opts})
    added: dict[str, int] = {}
    base_vars = base_cost["variable_bytes"]
    for label in labels:
        choice = {layer: o for layer, opts in options.items() for o in opts if o.label == label}
        per_layer = variable_bytes_by_layer(variables(choice))
        for layer, o in choice.items():
            added[o.key] = per_layer.get(layer, 0)
    times = [measured[order[g]]["step_ms"] for g in grid]
    out = {}
    for index, layer in enumerate(order):
        right = next(k for k, g in enumerate(grid) if g >= index)
        lo, hi = grid[max(right - 1, 0)], grid[right]
        bound = max(measured[order[lo]]["activation_bytes"],
                    measured[order[hi]]["activation_bytes"]) if lo != index and hi != index \
            else measured[layer]["activation_bytes"]
        step = None
        if times[0] is not None:
            step = float(np.interp(index, grid, times))
        for o in options[layer]:
            if hi == index and o.label == "full":
                cost = dict(measured[layer], predicted=False)
            else:
                cost = {"activation_bytes": int(bound), "variable_bytes": base_vars +
                        added[o.key], "step_ms": step, "predicted": True}
                cost["memory_bytes"] = cost["activation_bytes"] + cost["variable_bytes"]
            cost["delta_variable_bytes"] = cost["variable_bytes"] - base_vars
            # a layer never makes a step faster: a negative delta is timing noise (the base
            # and the grid are timed minutes apart on a shared machine; summed, such deltas
            # predicted -7.99 ms for a scheme measured at 6.44 ms)
            cost["delta_step_ms"] = (None if cost["step_ms"] is None
                                     else max(cost["step_ms"] - base_cost["step_ms"], 0.0))
            out[o.key] = cost
    info = {"grid": [order[g] for g in grid], "grouped": labels, "compiles": len(grid)}
    return out, info
