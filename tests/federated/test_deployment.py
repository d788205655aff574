"""Real Flower processes on loopback: a SuperLink, two SuperNodes and ``flwr run``.

The run (1 FedAvg round, 3 local steps per client) must give the slice the same steps give by
hand with separate Trainers, and leave no process behind: every process it started names its
loopback ports or its Flower home on the command line, and none may be alive afterwards.
"""
import numpy as np
import pytest

from tests.federated.deployment import run_deployment
from tfpock.federated.simulation import processes_naming as leftovers
from tests.federated.models import BATCH, data
from tests.numerics import assert_close
from tfpock import federated
from tfpock.runtime import Trainer, slices

STEPS = 3


@pytest.fixture(scope="module")
def deployment(fed_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("deployment")
    x, y = data(30, seed=5)
    parts = [np.arange(0, 10), np.arange(10, 30)]
    federated.NpzPartitions.write(folder / "clients.npz", x, y, parts)
    x_test, y_test = data(40, seed=9)
    np.savez(folder / "eval.npz", x=x_test, y=y_test)
    (folder / "model.tflite").write_bytes(open(fed_models["tiny"], "rb").read())
    history, marks, stragglers = run_deployment(folder, clients=2, rounds=1, steps=STEPS)
    with np.load(folder / "final.npz") as f:
        final = {k: f[k] for k in f.files}
    return {"history": history, "marks": marks, "stragglers": stragglers, "final": final,
            "x": x, "y": y, "parts": parts}


def test_a_round_over_real_processes_equals_the_hand_average(fed_models, deployment):
    x, y, parts = deployment["x"], deployment["y"], deployment["parts"]
    trained = []
    for partition, index in enumerate(parts):
        t = Trainer(fed_models["tiny"])
        for batch in federated.local_batches(len(index), STEPS, BATCH, [0, partition, 1]):
            t.train(x[index][batch], y[index][batch])
        trained.append(t.trained_slice())
    expected = {k: trained[0][k] * (10 / 30) + trained[1][k] * (20 / 30) for k in trained[0]}
    assert_close(deployment["final"], expected, where="FedAvg over flwr processes")
    row = deployment["history"]["rounds"]["1"]
    t = Trainer(fed_models["tiny"])
    assert row["bytes_up"] == row["bytes_down"]
    assert 0 < row["bytes_up"] / 2 - slices.nbytes(t.trained_slice()) < 2048
    t.set_trained_slice(deployment["final"])
    assert row["accuracy"] == federated.accuracy(t, *data(40, seed=9))


def test_no_flower_process_outlives_the_run(deployment):
    assert len(deployment["marks"]) == 4          # the SuperLink's port, 2 nodes', the home
    assert deployment["stragglers"] == []         # all gone within 10 s of the stop
    assert leftovers(deployment["marks"]) == []
