"""Federated fine-tuning of tfpock models with Flower: only the trained slice travels.

Install with ``pip install "tfpock[federated]"`` (flwr with its Ray simulation). The client
side (:mod:`~tfpock.federated.client`) runs a tfpock ``Trainer`` on numpy and a TFLite runtime,
never TensorFlow; the server (:mod:`~tfpock.federated.server`) averages trained slices with
Flower's FedAvg, FedAvgM, FedProx or FedAdam and evaluates with ``Trainer.infer``.

Example:
    >>> from tfpock import federated
    >>> parts = federated.NpzPartitions.write("clients.npz", x, y,
    ...                                       federated.dirichlet_split(y, 10, alpha=0.3))
    >>> history = federated.run_simulation(
    ...     federated.server_app("model.tflite", num_rounds=5, eval_data=(x_test, y_test)),
    ...     federated.client_app("model.tflite", parts, local_steps=10), num_clients=10)

Real processes (what ``tests/federated/test_deployment.py`` runs on loopback): a Flower App
project whose components are ``server_app(...)`` and ``client_app(...)`` objects, then
``flower-superlink --insecure --disable-runtime-dependency-installation``, one
``flower-supernode --insecure --superlink HOST:PORT --node-config "partition-id=I"`` per
device, and ``flwr run APP_DIR CONNECTION``.
"""
from tfpock.federated import quiet

quiet.apply_environment()   # before Flower is imported: no telemetry, no update check

from tfpock.federated.client import LocalClient, client_app  # noqa: E402
from tfpock.federated.data import NpzPartitions, accuracy, dirichlet_split  # noqa: E402
from tfpock.federated.data import local_batches, predict  # noqa: E402
from tfpock.federated.server import server_app, strategy  # noqa: E402
from tfpock.federated.simulation import run as run_simulation  # noqa: E402

__all__ = ["client_app", "server_app", "run_simulation", "strategy", "LocalClient",
           "NpzPartitions", "dirichlet_split", "local_batches", "predict", "accuracy"]
