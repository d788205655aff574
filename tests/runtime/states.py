"""The kill test's two checkpoint states, computed the same way in the saver and the test."""
from __future__ import annotations

import numpy as np

from tfpock.runtime import Trainer

X_SEED = 7


def two_states(trainer: Trainer) -> tuple[dict, dict]:
    """State A (as exported) and state B (after one step on a fixed batch): the kill test's
    two candidates. Deterministic, so the test process computes the same two."""
    a = trainer.state()
    rng = np.random.default_rng(X_SEED)
    x_shape, x_dtype = tuple(trainer.metadata["x"]["shape"]), trainer.metadata["x"]["dtype"]
    y_shape = tuple(trainer.metadata["y"]["shape"])
    trainer.train(rng.standard_normal(x_shape).astype(x_dtype),
                  rng.integers(0, 5, y_shape).astype(np.int32))
    b = trainer.state()
    trainer.set_state(a)
    return a, b
