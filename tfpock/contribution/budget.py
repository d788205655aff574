"""``Budget``: the device's limits a searched scheme must fit (training memory, step time)."""
from __future__ import annotations

import dataclasses
import math

from tfpock.errors import TfpockError


class BudgetError(TfpockError):
    """A budget that is malformed, or that no scheme fits (the message names the least)."""


@dataclasses.dataclass(frozen=True)
class Budget:
    """Upper bounds on a scheme's training memory (bytes) and step time (milliseconds).

    Training memory is the peak of live activations of the exported ``train`` signature plus
    the bytes of the model's variables (trained weights, optimizer state, BatchNorm
    statistics); step time is one ``train`` call on ai-edge-litert with one thread. Either
    field may be None (no bound on it); with both None the search picks the best gain.

    Example:
        >>> tfpock.Budget(memory_bytes=2 * 2**20, step_ms=5.0)
    """
    memory_bytes: int | None = None
    step_ms: float | None = None

    def __post_init__(self):
        m, t = self.memory_bytes, self.step_ms
        if m is not None:
            if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) \
                    or m <= 0 or m != int(m):
                raise BudgetError(f"Budget memory_bytes must be a positive whole number of "
                                  f"bytes or None, got {m!r}")
            object.__setattr__(self, "memory_bytes", int(m))
        if t is not None:
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) \
                    or t <= 0:
                raise BudgetError(f"Budget step_ms must be a positive finite number of "
                                  f"milliseconds or None, got {t!r}")
            object.__setattr__(self, "step_ms", float(t))

    def fits(self, memory_bytes: float, step_ms: float | None) -> bool:
        """Whether a scheme with these costs is within both bounds (an unknown time fits)."""
        if self.memory_bytes is not None and memory_bytes > self.memory_bytes:
            return False
        return not (self.step_ms is not None and step_ms is not None and step_ms > self.step_ms)

    def to_dict(self) -> dict:
        return {"memory_bytes": self.memory_bytes, "step_ms": self.step_ms}
