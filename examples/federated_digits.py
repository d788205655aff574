"""Ten devices fine-tune one digits CNN together with Flower; only the trained slice travels.

One command: ``python examples/federated_digits.py [--scheme last:2] [--clients 10]
[--rounds 5] [--local_steps 10] [--strategy fedavg]``. It

1. pre-trains a small CNN (38k parameters) with Keras on 15% of scikit-learn's digits: the
   "model shipped to the devices";
2. compiles it with ``tfpock.optimize`` for the scheme and exports the training model;
3. splits the rest of the training digits among the clients, non-IID (label skew, Dirichlet
   alpha 0.3: most clients hold a few classes);
4. runs a Flower simulation (:func:`tfpock.federated.run_simulation`): each client a tfpock
   ``Trainer`` on ai-edge-litert in a Ray worker where TensorFlow is blocked, the server
   averaging trained slices and evaluating with ``Trainer.infer`` on the test digits.

It prints the accuracy per round and the bytes each client sent. ``bench.studies.federated``
runs it for every scheme against centralised training and clients alone.
"""
from __future__ import annotations

import os
import tempfile
import time

try:
    from examples.digits import build_model, load_splits
except ImportError:          # run as a script: examples/ is on the path, the repository not
    from digits import build_model, load_splits

BATCH = 16
LEARNING_RATE = 0.05
PRETRAIN_FRACTION = 0.15
# What the devices train: Keras-like schemes, and a partial-channel one (PockEngine's sparse
# update): a quarter of the hidden layer's input rows and its bias, the classifier whole.
SCHEMES = {
    "full": "full",
    "last:1": "last:1",
    "last:2": "last:2",
    "bias": "bias",
    "partial": {"default": "frozen",
                "layers": {"hidden": {"weight_fraction": 0.25, "bias": True},
                           "classifier": "full"}},
}


def load_data(seed: int = 0):
    """(pre-training set, federated pool, test set): ``examples/digits.py``'s 80/20 split,
    the first 15% of its training part for pre-training."""
    (x, y), test = load_splits(seed)
    pre = int(PRETRAIN_FRACTION * len(x))
    return (x[:pre], y[:pre]), (x[pre:], y[pre:]), test


def pretrain(data, epochs: int = 4, seed: int = 0):
    """The model every device starts from: Keras, Adam, on the pre-training set."""
    import keras

    model = build_model(seed, hidden=64)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*data, batch_size=32, epochs=epochs, verbose=0, shuffle=True)
    return model


def export(model, scheme, path: str, learning_rate: float = LEARNING_RATE) -> str:
    """The training model of ``scheme`` (a name of SCHEMES, a scheme string or a
    ``tfpock.Scheme`` spec; SGD at ``learning_rate``, batch BATCH)."""
    import keras

    import tfpock

    program = tfpock.optimize(model, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), optimizer=keras.optimizers.SGD(learning_rate),
        scheme=SCHEMES.get(scheme, scheme) if isinstance(scheme, str) else scheme,
        batch_size=BATCH)
    return program.export(path)


def split(pool, clients: int, path: str, alpha: float = 0.3, seed: int = 0):
    from tfpock import federated

    return federated.NpzPartitions.write(path, *pool,
                                         federated.dirichlet_split(pool[1], clients, alpha,
                                                                   seed))


def federate(model_path: str, partitions, test, clients: int, rounds: int, local_steps: int,
             strategy: str = "fedavg", workers: int = 2) -> dict:
    from tfpock import federated

    server = federated.server_app(model_path, num_rounds=rounds, strategy_name=strategy,
                                  eval_data=test, local_steps=local_steps,
                                  min_clients=clients, strategy_options=STRATEGY_OPTIONS.get(
                                      strategy, {}))
    client = federated.client_app(model_path, partitions, local_steps=local_steps)
    return federated.run_simulation(server, client, num_clients=clients, workers=workers)


# FedAvgM: the server moves by 2x the clients' average change, with momentum 0.5 (an
# effective 4x). Chosen on split seed 0 among server learning rates 1-5 and momenta 0-0.9
# (larger steps diverge under the label skew); bench.studies.federated measures it on other
# seeds against FedAvg and centralised training.
STRATEGY_OPTIONS = {"fedprox": {"proximal_mu": 0.1},
                    "fedadam": {"eta": 1e-2, "eta_l": LEARNING_RATE, "tau": 1e-3},
                    "fedavgm": {"server_learning_rate": 2.0, "server_momentum": 0.5}}


def centralised(model_path: str, pool, test, steps: int, seed: int = 0) -> float:
    """One Trainer on all the clients' data pooled, ``steps`` steps: the same step budget."""
    from tfpock import federated
    from tfpock.runtime import Trainer

    t = Trainer(model_path, num_threads=1)
    for index in federated.local_batches(len(pool[0]), steps, BATCH, seed):
        t.train(pool[0][index], pool[1][index])
    return federated.accuracy(t, *test)


def alone(model_path: str, partitions, test, steps: int, seed: int = 0) -> list[float]:
    """Each non-empty client training alone for ``steps`` steps on its own data."""
    from tfpock import federated
    from tfpock.runtime import Trainer

    out = []
    for i in range(len(partitions)):
        x, y = partitions(i)
        if len(x) == 0:
            continue
        t = Trainer(model_path, num_threads=1)
        for index in federated.local_batches(len(x), steps, BATCH, [seed, i]):
            t.train(x[index], y[index])
        out.append(federated.accuracy(t, *test))
    return out


def main(argv):
    del argv
    from absl import flags, logging

    logging.set_verbosity(logging.WARNING)   # absl's INFO would echo every library's logger
    f = flags.FLAGS
    pre, pool, test = load_data()
    folder = tempfile.mkdtemp(prefix="tfpock-fed-digits-")
    started = time.perf_counter()
    model = pretrain(pre)
    model_path = export(model, f.scheme, os.path.join(folder, "model.tflite"), f.learning_rate)
    partitions = split(pool, f.clients, os.path.join(folder, "clients.npz"), f.alpha)
    sizes = [len(partitions(i)[0]) for i in range(f.clients)]
    print(f"pre-trained and exported {f.scheme!r} in {time.perf_counter() - started:.1f} s; "
          f"client sizes {sizes}")
    history = federate(model_path, partitions, test, f.clients, f.rounds, f.local_steps,
                       f.strategy)
    for r, row in sorted(history["rounds"].items()):
        sent = f", {row['bytes_up'] / max(row['replies'], 1) / 1e3:.1f} KB up per client" \
            if r else ""
        print(f"round {r}: accuracy {row['accuracy']:.3f}{sent}")
    print(f"trained slice {history['slice_bytes'] / 1e3:.1f} KB")


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("scheme", "last:2", f"One of {', '.join(SCHEMES)} or a scheme string.")
    flags.DEFINE_integer("clients", 10, "Number of clients.")
    flags.DEFINE_integer("rounds", 5, "Federated rounds.")
    flags.DEFINE_integer("local_steps", 10, "Local steps per client and round.")
    flags.DEFINE_float("alpha", 0.3, "Dirichlet concentration of the label skew.")
    flags.DEFINE_float("learning_rate", LEARNING_RATE, "SGD learning rate on the devices.")
    flags.DEFINE_enum("strategy", "fedavg", list(STRATEGY_OPTIONS) + ["fedavg"],
                      "Strategy (options: STRATEGY_OPTIONS).")


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
