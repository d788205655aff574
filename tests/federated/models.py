"""Host side: the tiny models the federated tests train (needs TensorFlow; once a session)."""
from __future__ import annotations

import os

import numpy as np

FEATURES, CLASSES, BATCH = 12, 3, 4

# conv_b trains 2 of its 8 input channels (and its statistics' BatchNorm), the head whole
PARTIAL = {"default": "frozen", "layers": {"conv_b": {"weight_fraction": 0.25},
                                           "bn_b": "full", "logits": "full"}}
# the federated tests' model: 3 of 12 input features of fc, the head whole
TINY = {"default": "frozen", "layers": {"fc": {"weight_fraction": 0.25, "bias": True},
                                        "head": "full"}}


def tiny(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((FEATURES,)),
                             keras.layers.Dense(8, activation="tanh", name="fc"),
                             keras.layers.Dense(CLASSES, name="head")], name="tiny")


def export_models(folder: str | os.PathLike) -> dict[str, str]:
    """Writes into ``folder`` and returns {name: path}:

    * ``partial``: ``tfpock.testing.models.bn_cnn()`` with :data:`PARTIAL`, SGD with momentum,
      BatchNorms in training mode (weights, statistics and optimizer state all present);
    * ``tiny``: :func:`tiny` with :data:`TINY`, SGD with momentum (0.5), batch :data:`BATCH`.
    """
    import keras

    import tfpock
    from tfpock.testing import models

    folder = os.fspath(folder)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def export(name, model, optimizer, **options):
        program = tfpock.optimize(model, loss=loss, optimizer=optimizer, **options)
        return program.export(os.path.join(folder, f"{name}.tflite"))

    return {
        "partial": export("partial", models.bn_cnn(), keras.optimizers.SGD(0.05, momentum=0.9),
                          scheme=PARTIAL, batch_size=4, frozen_batchnorm="batch_statistics"),
        "tiny": export("tiny", tiny(), keras.optimizers.SGD(0.1, momentum=0.5), scheme=TINY,
                       batch_size=BATCH),
    }


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` examples of a learnable toy task: the class is the argmax of three features."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, FEATURES)).astype(np.float32)
    return x, np.argmax(x[:, :CLASSES], axis=1).astype(np.int32)


class ProbePartitions:
    """:class:`~tfpock.federated.NpzPartitions` that also records, in ``probe_dir``, what the
    process serving the client knows about TensorFlow and which Ray processes it can see
    (so a test can check that the mark it looks for afterwards does find them)."""

    def __init__(self, npz: str, probe_dir: str):
        from tfpock.federated import NpzPartitions

        self.partitions, self.probe_dir = NpzPartitions(npz), os.fspath(probe_dir)

    def __call__(self, partition_id: int):
        import json
        import sys

        from tfpock.federated.simulation import processes_naming as leftovers

        try:
            import tensorflow  # noqa: F401
            refused = False
        except ModuleNotFoundError:
            refused = True
        record = {"pid": os.getpid(), "tensorflow_in_modules": "tensorflow" in sys.modules,
                  "import_refused": refused, "ray_processes": leftovers(["tfpock-ray-"]),
                  "marked": os.environ.get("TFPOCK_RAY_SESSION")}
        path = os.path.join(self.probe_dir, f"{os.getpid()}-{partition_id}.json")
        with open(path, "w") as f:
            json.dump(record, f)
        return self.partitions(partition_id)
