"""The server side: a Flower ServerApp averaging trained slices, evaluated with ``Trainer.infer``.

The strategies are Flower's (FedAvg, FedAvgM, FedProx, FedAdam), each wrapped by
:func:`strategy` so that what it averages is the model's trained slice and nothing else:

* a client reply that is not this model's slice (names, shapes, exact dtypes, finite, one
  ``num-examples`` >= 0) is refused and logged, never averaged in
  (:func:`tfpock.federated.records.reply_problem`);
* a reply with ``num-examples`` 0 (a client without data) is left out, so an empty client
  neither drags the average nor divides by zero; a round where every client is empty keeps
  the previous model;
* the aggregate is cast back to the model's dtypes (FedAdam's server step computes in
  float64) and checked like a client's update before it is sent or evaluated.

The wrapper also counts what travelled: bytes of slices sent to and received from clients
(Flower's ``ArrayRecord.count_bytes``: the serialised arrays and their names).
"""
from __future__ import annotations

import json
import logging
import time

import numpy as np
from flwr.app import ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx

from tfpock.federated import records
from tfpock.federated.data import accuracy
from tfpock.runtime import Trainer, slices
from tfpock.runtime.atomic import write_atomically

logger = logging.getLogger(__name__)

STRATEGIES = {"fedavg": FedAvg, "fedavgm": FedAvgM, "fedprox": FedProx, "fedadam": FedAdam}


def strategy(name: str, parts: dict[str, slices.Part], **options):
    """Flower's strategy ``name`` (a key of STRATEGIES) over the trained slice ``parts``;
    ``options`` go to its constructor (e.g. ``proximal_mu`` for FedProx, ``eta`` for
    FedAdam)."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    base = STRATEGIES[name]

    class Sliced(base):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.traffic: dict[int, dict] = {}

        def configure_train(self, server_round, arrays, config, grid):
            messages = list(super().configure_train(server_round, arrays, config, grid))
            self.traffic[server_round] = {
                "clients": len(messages), "bytes_down": len(messages) * _nbytes(arrays),
                "bytes_up": 0, "replies": 0, "empty": 0, "refused": []}
            return messages

        def aggregate_train(self, server_round, replies):
            kept, seen = [], self.traffic.setdefault(server_round, {
                "clients": 0, "bytes_down": 0, "bytes_up": 0, "replies": 0, "empty": 0,
                "refused": []})
            for msg in replies:
                if msg.has_error():
                    kept.append(msg)          # Flower's strategy logs and skips it
                    continue
                problem = records.reply_problem(msg.content, parts)
                if problem is not None:
                    logger.warning("round %d: refused the reply of node %s: %s", server_round,
                                   msg.metadata.src_node_id, problem)
                    seen["refused"].append(problem)
                    continue
                seen["replies"] += 1
                seen["bytes_up"] += _nbytes(next(iter(msg.content.array_records.values())))
                if next(iter(msg.content.metric_records.values()))[records.WEIGHT] == 0:
                    seen["empty"] += 1
                    continue
                kept.append(msg)
            arrays, metrics = super().aggregate_train(server_round, kept)
            if arrays is None:
                return None, metrics
            return records.to_record(conform(arrays, parts, server_round)), metrics

    return Sliced(**options)


def conform(arrays, parts: dict[str, slices.Part], server_round: int) -> dict[str, np.ndarray]:
    """The aggregate in the model's dtypes, checked like any update (a non-finite aggregate,
    e.g. a diverging FedAdam, is refused here, naming the variable)."""
    values = {}
    for name in arrays:
        value = arrays[name].numpy()
        part = parts.get(name)
        values[name] = value.astype(part.dtype) if part is not None else value
    return slices.check(values, parts, f"aggregate of round {server_round}")


def _nbytes(record) -> int:
    """Flower's count of an ArrayRecord: each array serialised (.npy bytes with their header)
    plus its name; what a message carries before gRPC/HTTP framing."""
    return int(record.count_bytes())


def server_app(model_path: str, *, num_rounds: int = 5, strategy_name: str = "fedavg",
               eval_data=None, local_steps: int | None = None,
               learning_rate: float | None = None, fraction_train: float = 1.0,
               min_clients: int = 2, strategy_options: dict | None = None,
               history_path: str | None = None, slice_path: str | None = None,
               runtime: str = "auto") -> ServerApp:
    """A Flower ServerApp that fine-tunes ``model_path``'s trained slice with the clients.

    Each round it sends the slice (and ``local-steps``, ``learning-rate`` when given) to a
    ``fraction_train`` of the clients, averages their replies with ``strategy_name`` and, when
    ``eval_data=(x, y)`` is given, evaluates the new slice with ``Trainer.infer`` on the
    server (accuracy, also before round 1). The history (per round: accuracy, clients, bytes
    down and up, seconds) is ``app.history`` after the run and, with ``history_path``, a JSON
    file; the final slice is ``app.final_slice`` and, with ``slice_path``, an .npz (both
    files written atomically: a ServerApp run by a SuperLink is another process).

    Example:
        >>> app = server_app("model.tflite", num_rounds=5, eval_data=(x_test, y_test))
    """
    strategy(strategy_name, {}, **(strategy_options or {}))   # refuse a bad name now
    app = ServerApp()
    app.history, app.final_slice = {}, None

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        trainer = Trainer(model_path, runtime=runtime, num_threads=1)
        parts = slices.layout(trainer.metadata)
        chosen = strategy(strategy_name, parts, fraction_train=fraction_train,
                          fraction_evaluate=0.0, min_train_nodes=min_clients,
                          min_available_nodes=min_clients, **(strategy_options or {}))
        config = ConfigRecord()
        if local_steps is not None:
            config["local-steps"] = int(local_steps)
        if learning_rate is not None:
            config["learning-rate"] = float(learning_rate)
        history = {"model": model_path, "strategy": strategy_name, "rounds": {}}
        clock = [time.perf_counter()]

        def evaluate(server_round: int, arrays) -> MetricRecord:
            trainer.set_trained_slice(records.from_record(arrays, parts, "evaluation"))
            row = {"seconds": time.perf_counter() - clock[0]}
            if eval_data is not None:
                row["accuracy"] = accuracy(trainer, *eval_data)
            row.update({k: v for k, v in chosen.traffic.get(server_round, {}).items()})
            history["rounds"][server_round] = row
            clock[0] = time.perf_counter()
            return MetricRecord({k: float(v) for k, v in row.items()
                                 if isinstance(v, (int, float))})

        result = chosen.start(grid=grid, initial_arrays=records.to_record(trainer.trained_slice()),
                              num_rounds=num_rounds, train_config=config, evaluate_fn=evaluate)
        history["slice_bytes"] = slices.nbytes(trainer.trained_slice())
        app.history.clear()
        app.history.update(history)
        app.final_slice = records.from_record(result.arrays, parts, "final") \
            if result.arrays is not None else trainer.trained_slice()
        if slice_path:
            write_atomically(slice_path, lambda f: np.savez(f, **app.final_slice))
        if history_path:
            text = json.dumps(history, indent=1, sort_keys=True, default=str)
            write_atomically(history_path, lambda f: f.write(text.encode()))

    return app
