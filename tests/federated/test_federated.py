"""tfpock.federated on Flower: numbers, refusals, isolation and tidiness.

One Flower simulation (3 clients, one of them empty, 1 FedAvg round of 3 local steps) is
checked against the same steps done by hand with separate Trainers; the Ray workers it ran on
report that TensorFlow was unimportable there, and no Ray process outlives it. The client's
isolation (no optimizer state from one client in another), FedProx's pull and the server's
refusal of malformed replies are checked without Ray; the device side runs in a process where
TensorFlow is blocked. Real processes (SuperLink, SuperNodes, ``flwr run``) are in
``test_deployment.py``.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfpock.federated.simulation import processes_naming as leftovers
from tests.federated.models import BATCH, ProbePartitions, data
from tests.numerics import assert_close
from tfpock import federated
from tfpock.federated import records
from tfpock.runtime import SliceError, Trainer, slices

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 3


@pytest.fixture(scope="module")
def simulation(fed_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("simulation")
    x, y = data(36)
    parts = [np.arange(0, 14), np.arange(14, 36), np.arange(0)]      # 14, 22 and 0 examples
    federated.NpzPartitions.write(folder / "clients.npz", x, y, parts)
    (folder / "probe").mkdir()
    server = federated.server_app(fed_models["tiny"], num_rounds=1, local_steps=STEPS,
                                  eval_data=data(40, seed=9), min_clients=3)
    client = federated.client_app(fed_models["tiny"], ProbePartitions(
        str(folder / "clients.npz"), str(folder / "probe")), local_steps=STEPS)
    history = federated.run_simulation(server, client, num_clients=3)
    probes = [json.loads(p.read_text()) for p in (folder / "probe").iterdir()]
    return {"history": history, "final": server.final_slice, "x": x, "y": y, "parts": parts,
            "probes": probes, "session": federated.run_simulation.last_session,
            "leftovers": federated.run_simulation.leftovers}


def test_one_fedavg_round_is_the_weighted_average_of_separate_trainers(fed_models, simulation):
    """FedAvg weights each reply by its examples (14 and 22; the empty client is left out)."""
    x, y, parts = simulation["x"], simulation["y"], simulation["parts"]
    trained, weights = [], []
    for partition, index in enumerate(parts[:2]):
        t = Trainer(fed_models["tiny"])
        for batch in federated.local_batches(len(index), STEPS, BATCH, [0, partition, 1]):
            t.train(x[index][batch], y[index][batch])
        trained.append(t.trained_slice())
        weights.append(len(index) / 36)
    # Flower's aggregate_arrayrecords: sum of value * (n / N) in float32; a sum of two terms
    # does not depend on the order the replies arrived in
    expected = {k: trained[0][k] * weights[0] + trained[1][k] * weights[1] for k in trained[0]}
    assert_close(simulation["final"], expected, where="FedAvg round")
    assert all(v.dtype == np.float32 for v in simulation["final"].values())
    before = Trainer(fed_models["tiny"]).trained_slice()
    assert not np.array_equal(simulation["final"]["tiny/head/kernel"], before["tiny/head/kernel"])


def test_the_round_sends_only_the_slice_and_leaves_out_the_empty_client(fed_models, simulation):
    history = simulation["history"]
    t = Trainer(fed_models["tiny"])
    slice_bytes = slices.nbytes(t.trained_slice())
    whole = sum(v.nbytes for v in t.weights().values())
    assert slice_bytes == whole - 9 * 8 * 4           # 9 of fc's 12 input rows stay home
    row = history["rounds"][1]
    assert (row["clients"], row["replies"], row["empty"], row["refused"]) == (3, 3, 1, [])
    # what Flower counts per client: the slice, .npy headers and names, within 2 KB of it
    assert row["bytes_down"] == row["bytes_up"]
    assert 0 < row["bytes_up"] / 3 - slice_bytes < 2048
    x_test, y_test = data(40, seed=9)
    t.set_trained_slice(simulation["final"])
    assert row["accuracy"] == federated.accuracy(t, x_test, y_test)
    assert history["rounds"][0]["accuracy"] == federated.accuracy(
        Trainer(fed_models["tiny"]), x_test, y_test)


def test_ray_workers_had_no_tensorflow_and_no_ray_process_is_left(simulation):
    probes, session = simulation["probes"], simulation["session"]
    assert len(probes) == 3                                  # every client reported
    assert all(p["import_refused"] and not p["tensorflow_in_modules"] for p in probes)
    # the mark finds Ray's processes while they run (the workers, renamed ray::..., by the
    # session in their environment) ...
    assert all(p["marked"] == session for p in probes)
    seen = {line for p in probes for line in p["ray_processes"]}
    assert any("ray::" in line for line in seen) and any("raylet" in line for line in seen)
    # ... and nothing carries it afterwards (run waits up to 10 s, ends what outstays that and
    # reports what is left)
    assert simulation["leftovers"] == [] and leftovers([session]) == []


def test_no_optimizer_state_passes_from_one_client_to_the_next(fed_models):
    x, y = data(24, seed=3)
    a, b = (x[:12], y[:12]), (x[12:], y[12:])
    cached = federated.LocalClient(fed_models["tiny"])
    start = cached.trainer.trained_slice()
    slice_a, optimizer_a, _ = cached.fit(start, *a, steps=4, seed=1)
    slice_b, _, metrics = cached.fit(start, *b, steps=4, seed=2)     # "fresh": the file's state
    alone, _, _ = federated.LocalClient(fed_models["tiny"]).fit(start, *b, steps=4, seed=2)
    assert_close(slice_b, alone, where="client b after client a")
    assert metrics["num-examples"] == 12 and metrics["local-steps"] == 4
    # optimizer_state="client": a client's own state comes back, as if it had never stopped
    kept, _, _ = cached.fit(start, *b, steps=4, seed=2, optimizer=optimizer_a)
    t = Trainer(fed_models["tiny"])
    for index in federated.local_batches(12, 4, BATCH, 1):
        t.train(a[0][index], a[1][index])
    t.set_trained_slice(start)
    for index in federated.local_batches(12, 4, BATCH, 2):
        t.train(b[0][index], b[1][index])
    assert_close(kept, t.trained_slice(), where="client b with its own momentum")
    assert not np.array_equal(kept["tiny/head/kernel"], slice_b["tiny/head/kernel"])


def test_an_empty_client_returns_the_slice_unchanged(fed_models):
    client = federated.LocalClient(fed_models["tiny"])
    start = client.trainer.trained_slice()
    out, _, metrics = client.fit(start, np.zeros((0, 12), np.float32), np.zeros(0, np.int32),
                                 steps=5, seed=0)
    assert metrics == {"num-examples": 0, "local-steps": 0, "skipped-steps": 0}
    assert_close(out, start)


def test_fedprox_pulls_the_local_weights_towards_the_global_ones(fed_models):
    x, y = data(16, seed=4)
    client = federated.LocalClient(fed_models["tiny"])
    start = client.trainer.trained_slice()
    plain, _, _ = client.fit(start, x, y, steps=6, seed=0)
    same, _, _ = client.fit(start, x, y, steps=6, seed=0, proximal_mu=0.0)
    pulled, _, _ = client.fit(start, x, y, steps=6, seed=0, proximal_mu=5.0)
    assert_close(same, plain)

    def distance(s):
        return sum(float(np.sum((s[k] - start[k]) ** 2)) for k in client.weight_names)

    assert distance(pulled) < 0.8 * distance(plain)


class Reply:
    """What the strategy reads of a Flower reply (a real Message needs a running Flower)."""

    def __init__(self, content, node=1):
        self.content = content
        self.metadata = type("Metadata", (), {"src_node_id": node})()

    def has_error(self):
        return False


def reply(values, n):
    from flwr.app import MetricRecord, RecordDict

    return Reply(RecordDict({"arrays": records.to_record(values),
                             "metrics": MetricRecord({"num-examples": n})}))


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam", "fedavgm"])
def test_the_server_refuses_malformed_replies_and_keeps_the_model_dtype(fed_models, name):
    t = Trainer(fed_models["tiny"])
    parts = slices.layout(t.metadata)
    good = t.trained_slice()
    nudged = {k: v + np.float32(0.25) for k, v in good.items()}
    nan = dict(nudged, **{"tiny/head/bias": np.array([0, np.nan, 0], np.float32)})
    wide = dict(nudged, **{"tiny/fc/kernel": np.zeros((12, 8), np.float32)})
    options = {"server_learning_rate": 2.0, "server_momentum": 0.5} if name == "fedavgm" else {}
    strategy = federated.strategy(name, parts, **options)
    if name == "fedadam":
        strategy.current_arrays = dict(good)          # what configure_train would have set
    if name == "fedavgm":
        strategy.current_arrays = records.to_record(good)
    arrays, _ = strategy.aggregate_train(1, [reply(nudged, 5), reply(nan, 5), reply(wide, 5),
                                             reply(nudged, -1)])
    refused = strategy.traffic[1]["refused"]
    assert len(refused) == 3, refused
    assert "tiny/head/bias holds NaN or inf" in refused[0]
    assert "tiny/fc/kernel has shape (12, 8), the model's slice is (3, 8)" in refused[1]
    assert "num-examples is -1" in refused[2]
    out = records.from_record(arrays, parts, "test")          # float32, finite, this slice
    if name == "fedavgm":   # the server's SGD step: twice the average's move (first round)
        assert_close(out, {k: v + np.float32(0.5) for k, v in good.items()})
    elif name != "fedadam":
        assert_close(out, nudged)                             # the one good reply, alone
    else:
        assert all(np.all(out[k] > good[k]) for k in out)     # a step towards it


def test_a_hostile_server_message_is_refused_by_the_client(fed_models):
    client = federated.LocalClient(fed_models["tiny"])
    before = client.trainer.state()
    bad = dict(client.trainer.trained_slice(), **{"tiny/head/bias": np.zeros(3, np.float64)})
    x, y = data(8)
    with pytest.raises(SliceError, match="tiny/head/bias has dtype float64"):
        client.fit(bad, x, y, steps=2, seed=0)
    assert_close(client.trainer.state(), before)


def test_the_client_side_runs_where_tensorflow_cannot_be_imported(fed_models, tmp_path):
    code = f"""
import sys
from tests.portability.device_protocol import _block_tensorflow
_block_tensorflow()
import numpy as np
from tfpock.federated.client import LocalClient, client_app
from tfpock.federated.data import NpzPartitions
client = LocalClient({fed_models["tiny"]!r})
x = np.random.default_rng(0).standard_normal((8, 12)).astype(np.float32)
out, _, m = client.fit(client.trainer.trained_slice(), x, np.zeros(8, np.int32), 2, seed=0)
client_app({fed_models["tiny"]!r}, NpzPartitions("unused.npz"))
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")), m)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].startswith("[] {'num-examples': 8")


def test_the_dirichlet_split_gives_every_example_to_one_client_with_label_skew():
    labels = np.repeat(np.arange(10), 50)
    parts = federated.dirichlet_split(labels, 10, alpha=0.3, seed=0)
    joined = np.sort(np.concatenate(parts))
    assert np.array_equal(joined, np.arange(500))
    # skew: with alpha 0.3 a typical client's largest class is far above the 10% of IID
    shares = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts if len(p)]
    assert np.median(shares) > 0.25                 # 0.37 here; about 0.11 when IID
    iid = federated.dirichlet_split(labels, 10, alpha=1000.0, seed=0)
    assert max(np.bincount(labels[p], minlength=10).max() / len(p) for p in iid) < 0.2
    assert [p.tolist() for p in parts] == [p.tolist() for p in federated.dirichlet_split(
        labels, 10, alpha=0.3, seed=0)]
    with pytest.raises(ValueError, match="alpha must be > 0"):
        federated.dirichlet_split(labels, 10, alpha=0.0)


def test_local_batches_are_epochs_of_a_seeded_permutation():
    batches = federated.local_batches(10, 5, 4, seed=3)
    flat = np.concatenate(batches)
    assert [len(b) for b in batches] == [4] * 5
    assert sorted(flat[:10].tolist()) == list(range(10))        # a whole epoch first
    assert all(np.array_equal(a, b) for a, b in zip(
        batches, federated.local_batches(10, 5, 4, seed=3)))
    small = federated.local_batches(2, 3, 4, seed=0)              # fewer examples than a batch
    assert all(len(b) == 4 and set(b.tolist()) <= {0, 1} for b in small)
    assert federated.local_batches(0, 3, 4, seed=0) == []


def test_predict_pads_the_last_batch_and_drops_its_outputs(fed_models):
    t = Trainer(fed_models["tiny"])
    x, _ = data(10, seed=2)                                       # 2 batches of 4, then 2
    out = federated.predict(t, x)
    assert out.shape == (10, 3)
    assert_close(out[8:], t.infer(np.concatenate([x[8:], np.zeros((2, 12), np.float32)]))[:2])
    assert_close(out[:4], t.infer(x[:4]))


def test_a_process_that_outstays_the_grace_is_ended(tmp_path):
    """A Ray actor slow to exit after the shutdown (seen on a loaded machine) is ended, so a
    run leaves nothing behind; it is reported as stopped."""
    import subprocess
    import sys

    from tfpock.federated.simulation import MARK, stop_stragglers

    mark = str(tmp_path / "tfpock-ray-straggler")
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal("
                              "signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                              "time.sleep(120)"],
                             env={MARK: mark, "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "ready"      # SIGTERM is ignored from now
        stopped, left = stop_stragglers([mark], grace=0.5)
        assert [line.split(":")[0] for line in stopped] == [str(child.pid)]
        assert left == [] and child.wait(5) == -9          # SIGTERM ignored, SIGKILL ends it
    finally:
        child.kill()
