"""Quiet and tidy: no telemetry, no TensorFlow where only the runtime runs, short logs.

Flower reports usage and checks for updates over the network unless told not to, and Ray
reports usage stats: :data:`ENVIRONMENT` switches all three off. It is applied (``setdefault``:
a user's own setting wins) when :mod:`tfpock.federated` is imported, before Flower is, and
passed to every Ray worker and every flwr process tfpock starts.

Flower's simulation imports TensorFlow into every Ray worker when it is installed
(``flwr.simulation.ray_transport.utils`` tries ``import tensorflow`` for its GPU option): about
785 MB and 8 s per worker for nothing, the clients only run the TFLite runtime.
:func:`block_tensorflow` is the workers' setup hook: it makes ``tensorflow``, ``keras`` and
``tf_keras`` unimportable (``ModuleNotFoundError``, which Flower's import expects when TF is
absent), so a worker is a device without TensorFlow.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys

ENVIRONMENT = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",   # silences Ray's FutureWarning; no GPUs here
    "TF_CPP_MIN_LOG_LEVEL": "2",
}
BLOCKED = ("tensorflow", "keras", "tf_keras")


def apply_environment() -> None:
    for key, value in ENVIRONMENT.items():
        os.environ.setdefault(key, value)


class _BlockTensorFlow:
    """A meta-path finder that refuses the BLOCKED packages and their submodules."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{fullname} is blocked in this process: a federated "
                                      "client runs the TFLite runtime, not TensorFlow",
                                      name=fullname)
        return None


def block_tensorflow() -> None:
    """Makes TensorFlow unimportable in this process from now on (a Ray worker's setup hook).
    Refuses (RuntimeError) if it is already imported: then it is too late to keep it out."""
    already = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if already:
        raise RuntimeError(f"cannot block TensorFlow: already imported {already[:3]}")
    if not any(isinstance(f, _BlockTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _BlockTensorFlow())


class _DropNoise(logging.Filter):
    """Flower's per-round INFO lines and its notice that ``run_simulation`` is deprecated
    (it is; tfpock calls it because ``flwr run`` needs an app project and leaves a SuperLink)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "deprecated" not in message and "Federated evaluation will be skipped" not in \
            message


@contextlib.contextmanager
def short_logs(verbose: bool = False):
    """Within it Flower logs warnings and errors only (unless ``verbose``); restored after."""
    logger = logging.getLogger("flwr")
    level, noise = logger.level, _DropNoise()
    if not verbose:
        logger.setLevel(logging.WARNING)
        logger.addFilter(noise)
    try:
        yield
    finally:
        logger.setLevel(level)
        logger.removeFilter(noise)
