"""Trained slices as Flower records, and the check of what a client sends back.

On the wire a slice is a Flower ``ArrayRecord`` {variable name: Array}; both ends turn it
into the :mod:`tfpock.runtime.slices` exchange format and check it there (names, shapes, exact
dtypes, finite), so a malformed or hostile record is refused by name, never averaged in.
"""
from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from tfpock.runtime import slices

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"   # Flower's strategies' default keys
WEIGHT = "num-examples"


def to_record(values: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(v)) for name, v in values.items()})


def from_record(record, parts: dict[str, slices.Part], where: str) -> dict[str, np.ndarray]:
    """The checked slice held by ``record``; :class:`~tfpock.runtime.SliceError` if it is not
    an ArrayRecord of exactly this model's slice."""
    if not isinstance(record, ArrayRecord):
        raise slices.SliceError(f"{where}: expected an ArrayRecord, got "
                                f"{type(record).__name__}")
    try:
        values = {name: record[name].numpy() for name in record}
    except (ValueError, TypeError, KeyError) as exc:   # an Array whose bytes do not decode
        raise slices.SliceError(f"{where}: an array of the record does not decode: "
                                f"{exc}") from exc
    return slices.check(values, parts, where)


def reply_problem(content, parts: dict[str, slices.Part]) -> str | None:
    """Why a client's training reply cannot be averaged in, or None if it can: exactly one
    ArrayRecord holding this model's slice and one MetricRecord with a finite
    ``num-examples`` >= 0."""
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        return (f"a reply holds {len(content.array_records)} array records and "
                f"{len(content.metric_records)} metric records, not one of each")
    metrics = next(iter(content.metric_records.values()))
    weight = metrics.get(WEIGHT)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or \
            not np.isfinite(weight) or weight < 0:
        return f"{WEIGHT} is {weight!r}, not a finite number >= 0"
    try:
        from_record(next(iter(content.array_records.values())), parts, "client reply")
    except slices.SliceError as exc:
        return str(exc)
    return None
