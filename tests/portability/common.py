"""The host half of the portability checks, shared by ``test_runtime_portability.py`` (pytest)
and ``aarch64_check.py`` (qemu, by hand): which models, how they are exported, the batches
both sides train on, the tolerances a device's numbers must meet, and a file lock.

TensorFlow is imported when a model is built, not with this module: the aarch64 check sets up
its root filesystem before it needs TensorFlow.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

BATCH = 4
LR = 0.05
SCHEMES = {"mlp": "full", "cnn": "full", "mobilenet_v2": "last:2"}   # model name -> scheme
# what the device protocol infers (tests/portability/device_protocol.py's run_protocol)
ARRAYS = ("infer_before", "infer_after", "infer_restored", "infer_fresh_restored")
# a device's numbers against ai-edge-litert on the host: two builds of the kernels round
# differently, so they are close, not bit-equal
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5
OUTPUT_RTOL, OUTPUT_ATOL = 1e-4, 1e-5


def build(name: str):
    """The Keras model ``name`` of ``SCHEMES``: the MLP, the every-layer CNN with dropout 0,
    MobileNetV2 (``tfpock.testing.models``)."""
    from tfpock.testing import models
    builders = {"mlp": models.mlp, "cnn": lambda: models.every_layer_cnn(dropout=0.0),
                "mobilenet_v2": models.mobilenet_v2}
    return builders[name]()


def export(name: str, model_path: Path, inputs_path: Path, batches: int) -> str:
    """Compiles model ``name`` with its scheme (SGD ``LR``, batch ``BATCH``), exports it to
    ``model_path`` and writes ``batches`` batches (``x0, y0, x1, y1, ...``, seed 7) to the
    .npz ``inputs_path``; returns the scheme."""
    import keras

    import tfpock
    model = build(name)
    tfpock.optimize(model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    optimizer=keras.optimizers.SGD(LR), scheme=SCHEMES[name],
                    batch_size=BATCH).export(model_path)
    rng = np.random.default_rng(7)
    arrays = {}
    for i in range(batches):
        arrays[f"x{i}"] = rng.uniform(-1, 1, (BATCH, *model.inputs[0].shape[1:])).astype(
            np.float32)
        arrays[f"y{i}"] = rng.integers(0, model.outputs[0].shape[-1], BATCH).astype(np.int32)
    np.savez(inputs_path, **arrays)
    return SCHEMES[name]


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock on the file ``path`` (two runs must not build one environment at
    once); no lock where there is no ``fcntl`` (not POSIX)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
