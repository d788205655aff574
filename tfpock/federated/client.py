"""The device side of federated fine-tuning: a Flower ClientApp around a tfpock ``Trainer``.

Numpy, Flower and a TFLite runtime only: never TensorFlow (``tests/federated`` runs it with
TensorFlow blocked). Each message starts from a whole state rebuilt from the file and the
server's slice, so nothing of one client survives into another even where a process serves
many clients (Ray workers do, and cache one Trainer per model file):

* weights and BatchNorm statistics: the server's trained slice, frozen channels the file's;
* optimizer state: ``optimizer_state="fresh"`` the file's initial one every round (FedAvg's
  usual choice), ``"client"`` the client's own from its last round, kept in Flower's per-node
  ``Context.state`` (the probe found a cached Trainer carrying one client's momentum into the
  next: this is what prevents it).

FedProx: Flower's FedProx sends ``proximal-mu``; the compiled step cannot add a term to its
loss, so after each step the client moves each trained weight by ``-lr * mu * (w_before -
w_global)``, the proximal term's gradient taken at the step's starting point: exactly FedProx
for plain SGD, the proximal pull beside the optimizer for momentum and Adam.
"""
from __future__ import annotations

import logging

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from tfpock.federated import records
from tfpock.federated.data import local_batches
from tfpock.runtime import Trainer, fit, slices

logger = logging.getLogger(__name__)

OPTIMIZER_STATES = ("fresh", "client")
_STATE_KEY = "tfpock-optimizer"
_CLIENTS: dict = {}   # one LocalClient per model file and runtime, per process


class LocalClient:
    """One model file's Trainer and its initial state; :meth:`fit` runs a client's round."""

    def __init__(self, model_path: str, runtime: str = "auto", num_threads: int | None = 1):
        self.trainer = Trainer(model_path, runtime=runtime, num_threads=num_threads)
        self.initial = self.trainer.state()
        self.parts = slices.layout(self.trainer.metadata)
        kinds = {v["name"]: v["kind"] for v in self.trainer.metadata["variables"]}
        self.optimizer_names = sorted(k for k, kind in kinds.items() if kind == "optimizer")
        self.weight_names = [k for k in self.parts if kinds[k] == "weight"]

    def fit(self, global_slice: dict[str, np.ndarray], x, y, steps: int, seed,
            optimizer: dict[str, np.ndarray] | None = None, learning_rate: float | None = None,
            proximal_mu: float = 0.0) -> tuple[dict, dict, dict]:
        """``steps`` local steps from ``global_slice`` (checked) on batches of (x, y) drawn by
        :func:`~tfpock.federated.data.local_batches` (``seed``). Returns (the trained slice,
        the optimizer state, metrics with ``num-examples``). No examples: the slice comes back
        as it came, with ``num-examples`` 0 (the server leaves such a reply out)."""
        checked = slices.check(global_slice, self.parts, "client fit")
        state = slices.merge(self.initial, checked, self.parts)
        if optimizer is not None:
            if sorted(optimizer) != self.optimizer_names:
                raise slices.SliceError(f"client fit: optimizer state holds {sorted(optimizer)}, "
                                        f"the model's is {self.optimizer_names}")
            state.update(optimizer)
        self.trainer.set_state(state)
        lr = self.trainer.learning_rate if learning_rate is None else float(learning_rate)
        losses, skipped = [], 0
        x, y = np.asarray(x), np.asarray(y)
        batch = fit.batch_size(self.trainer)
        for index in local_batches(len(x), steps, batch, seed):
            before = self.trainer.trained_slice() if proximal_mu else None
            out = self.trainer.train(x[index], y[index], learning_rate=lr)
            losses.append(out["loss"])
            skipped += not out["applied"]
            if proximal_mu:
                self._proximal(before, checked, lr * proximal_mu)
        metrics = {records.WEIGHT: int(len(x)), "local-steps": len(losses),
                   "skipped-steps": skipped}
        if losses:
            metrics["train-loss"] = float(np.mean(losses))
        everything = self.trainer.state()
        return (slices.extract(everything, self.parts),
                {k: everything[k] for k in self.optimizer_names}, metrics)

    def _proximal(self, before: dict, global_slice: dict, scale: float) -> None:
        now = self.trainer.trained_slice()
        for name in self.weight_names:
            pull = np.float32(scale) * (before[name] - global_slice[name])
            now[name] = (now[name] - pull).astype(now[name].dtype)
        self.trainer.set_trained_slice(now)


def local_client(model_path: str, runtime: str = "auto",
                 num_threads: int | None = 1) -> LocalClient:
    key = (model_path, runtime, num_threads)
    if key not in _CLIENTS:
        _CLIENTS[key] = LocalClient(model_path, runtime, num_threads)
    return _CLIENTS[key]


def client_app(model_path: str, partitions, *, local_steps: int = 10,
               optimizer_state: str = "fresh", runtime: str = "auto",
               num_threads: int | None = 1, seed: int = 0) -> ClientApp:
    """A Flower ClientApp training ``model_path`` (a tfpock training model) on the node's
    partition.

    Args:
        partitions: ``partitions(partition_id) -> (x, y)``, e.g.
            :class:`~tfpock.federated.data.NpzPartitions`; the node's ``partition-id`` comes
            from its node config (Flower's simulation sets it, a SuperNode takes
            ``--node-config "partition-id=3"``).
        local_steps: steps per round (a round's config ``local-steps`` overrides it).
        optimizer_state: ``"fresh"`` or ``"client"`` (module docstring).

    Example:
        >>> app = client_app("model.tflite", NpzPartitions("clients.npz"), local_steps=10)
    """
    if optimizer_state not in OPTIMIZER_STATES:
        raise ValueError(f"optimizer_state must be one of {OPTIMIZER_STATES}, got "
                         f"{optimizer_state!r}")
    if not isinstance(local_steps, int) or local_steps < 0:
        raise ValueError(f"local_steps must be an int >= 0, got {local_steps!r}")
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        client = local_client(model_path, runtime, num_threads)
        config = msg.content[records.CONFIG] if records.CONFIG in msg.content else {}
        partition = int(context.node_config["partition-id"])
        x, y = partitions(partition)
        global_slice = records.from_record(msg.content[records.ARRAYS], client.parts,
                                           "server message")
        kept = context.state.array_records.get(_STATE_KEY) if \
            optimizer_state == "client" else None
        optimizer = {k: kept[k].numpy() for k in kept} if kept else None
        server_round = int(config.get("server-round", 0))
        new_slice, new_optimizer, metrics = client.fit(
            global_slice, x, y, int(config.get("local-steps", local_steps)),
            seed=[seed, partition, server_round], optimizer=optimizer,
            learning_rate=config.get("learning-rate"),
            proximal_mu=float(config.get("proximal-mu", 0.0)))
        if optimizer_state == "client":
            context.state[_STATE_KEY] = records.to_record(new_optimizer)
        content = RecordDict({records.ARRAYS: records.to_record(new_slice),
                              records.METRICS: MetricRecord(metrics)})
        return Message(content=content, reply_to=msg)

    return app


__all__ = ["client_app", "LocalClient", "OPTIMIZER_STATES"]
