"""How the tests compare numbers with a reference: one ``assert_close``.

An element passes when ``|actual - expected| <= atol + rtol * |expected| + peak_rtol * peak``,
``peak`` being ``max(1, max |expected|)`` of the array it belongs to: ``rtol`` and ``atol`` as
in ``np.testing.assert_allclose``; ``peak_rtol`` a tolerance relative to the array's largest
magnitude (and absolute below 1), for results whose small elements are sums that cancel (a
gradient, an update), where a tolerance relative to each element would ask for more than
float32 gives. All three default to 0: with none given the check is for equality.

The error is measured in float64, exactly for float32 values. A NaN or an infinity fails,
on either side, unless ``same_nonfinite=True`` (tests of TF's NaN and inf semantics): then it
passes where both sides hold NaN, or the same infinity. Shapes must be equal, except that a
scalar ``expected`` is a bound for every element. Dicts of arrays (a graph's outputs by
name) are compared key by key: the same keys, each within the tolerances.

``tests/reference.py``'s ``assert_kink_tolerant`` is a different check (a percentile and a
relative norm, for MobileNetV2's chaotic float32 step), documented there.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def assert_close(actual, expected, *, rtol: float = 0.0, atol: float = 0.0,
                 peak_rtol: float = 0.0, same_nonfinite: bool = False,
                 where: str = "") -> None:
    """Asserts ``actual`` is within the tolerances of ``expected`` (module docstring); the
    message names ``where`` (and the key, for dicts) and the worst element."""
    if isinstance(expected, Mapping):
        assert isinstance(actual, Mapping) and sorted(actual) == sorted(expected), (
            f"{where or 'keys'}: {sorted(actual)} != expected {sorted(expected)}")
        for key in expected:
            assert_close(actual[key], expected[key], rtol=rtol, atol=atol, peak_rtol=peak_rtol,
                         same_nonfinite=same_nonfinite,
                         where=f"{where}: {key}" if where else str(key))
        return
    a, b = np.asarray(actual), np.asarray(expected)
    label = where or "value"
    assert a.shape == b.shape or b.ndim == 0, f"{label}: shape {a.shape} != expected {b.shape}"
    a64, b64 = np.broadcast_arrays(a.astype(np.float64), b.astype(np.float64))
    finite = np.isfinite(a64) & np.isfinite(b64)
    peak = max(1.0, float(np.abs(b64[finite]).max())) if finite.any() else 1.0
    with np.errstate(invalid="ignore"):
        allowed = np.where(finite, atol + rtol * np.abs(b64) + peak_rtol * peak, 0.0)
        error = np.where(finite, np.abs(a64 - b64), np.inf)
    ok = finite & (error <= allowed)
    if same_nonfinite:
        ok |= (np.isnan(a64) & np.isnan(b64)) | (np.isinf(a64) & (a64 == b64))
    if ok.all():
        return
    excess = np.where(ok, -np.inf, error - allowed)
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(excess)), excess.shape))
    why = (f"|difference| {error[worst]:.3g} > allowed {allowed[worst]:.3g} = atol {atol:g} + "
           f"rtol {rtol:g} * |expected| + peak_rtol {peak_rtol:g} * {peak:.3g}"
           if finite[worst] else "not finite")
    raise AssertionError(f"{label}: {int((~ok).sum())} of {ok.size} elements off; worst at "
                         f"{worst}: {a64[worst]:.9g} vs expected {b64[worst]:.9g} ({why})")
