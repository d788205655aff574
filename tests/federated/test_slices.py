"""Trained slices on ai-edge-litert: what travels is exactly what trains, and only that.

``Trainer.trained_slice()`` cuts a partial-channel kernel to its trained channels (the
metadata's ``slice``, format /5), ``set_trained_slice()`` writes them back; a round trip is
bit-exact, frozen channels and optimizer state never move, and a malformed or hostile update
is refused before any variable is touched. A format-/4 file (no ``slice``) still loads.
"""
import json

import numpy as np
import pytest

from tests.runtime.hostile import _metadata_span, _patch_metadata
from tfpock.runtime import ModelFileError, SliceError, Trainer


def train_a_little(trainer, steps=3, seed=0):
    batch = trainer.metadata["x"]["shape"][0]
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        x = rng.uniform(-1, 1, trainer.metadata["x"]["shape"]).astype(np.float32)
        y = rng.integers(0, trainer.metadata["output"]["shape"][-1], batch).astype(np.int32)
        assert trainer.train(x, y)["applied"]


def same_bytes(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), key


def test_the_slice_is_the_trained_channels_and_the_statistics(fed_models):
    t = Trainer(fed_models["partial"])
    kernel = next(v for v in t.metadata["variables"] if v["name"] == "conv_b/kernel")
    assert t.metadata["format"] == "tfpock-training-model/5"
    assert kernel["slice"] == {"axis": 2, "channels": [0, 2]} and kernel["shape"] == [3, 3, 8, 8]
    part = t.trained_slice()
    kinds = {v["name"]: v["kind"] for v in t.metadata["variables"]}
    assert sorted(part) == sorted(k for k, kind in kinds.items() if kind != "optimizer")
    assert part["conv_b/kernel"].shape == (3, 3, 2, 8)
    same_bytes({"k": part["conv_b/kernel"]}, {"k": t.state()["conv_b/kernel"][:, :, :2, :]})
    whole = sum(v.nbytes for v in t.weights().values())
    assert sum(v.nbytes for v in part.values()) == whole - 3 * 3 * 6 * 8 * 4


def test_a_round_trip_is_bit_exact_and_moves_nothing_else(fed_models):
    source, target = Trainer(fed_models["partial"]), Trainer(fed_models["partial"])
    train_a_little(source)
    train_a_little(target, seed=1)          # its own momentum, which must stay its own
    before = target.state()
    shipped = source.trained_slice()
    target.set_trained_slice(shipped)
    same_bytes(target.trained_slice(), shipped)
    after = target.state()
    for name, value in after.items():
        if name.startswith("optimizer/"):
            assert value.tobytes() == before[name].tobytes(), name
    # the frozen channels are the file's, in both, bit for bit
    same_bytes({"k": after["conv_b/kernel"][:, :, 2:, :]},
               {"k": source.state()["conv_b/kernel"][:, :, 2:, :]})
    same_bytes({"k": after["conv_b/kernel"][:, :, 2:, :]},
               {"k": before["conv_b/kernel"][:, :, 2:, :]})
    # the model is what was written: the same slice in a fresh Trainer infers the same
    fresh = Trainer(fed_models["partial"])
    fresh.set_trained_slice(shipped)
    x = np.random.default_rng(3).uniform(-1, 1, (4, 12, 12, 3)).astype(np.float32)
    assert fresh.infer(x).tobytes() == target.infer(x).tobytes()
    assert fresh.infer(x).tobytes() != Trainer(fed_models["partial"]).infer(x).tobytes()


def hostile_updates(good: dict):
    name = "conv_b/kernel"

    def with_(**changes):
        out = dict(good)
        out.update(changes)
        return out

    nan = good[name].copy()
    nan.flat[7] = np.nan
    inf = good["logits/bias"].copy()
    inf[0] = -np.inf
    extra = dict(good)
    extra["optimizer/momentum/logits/bias"] = np.zeros(4, np.float32)
    missing = dict(good)
    del missing["bn_b/moving_mean"]
    return [
        ("a list", list(good.values()), "a dict"),
        ("a missing variable", missing, "missing ['bn_b/moving_mean']"),
        ("optimizer state", extra, "unexpected ['optimizer/momentum/logits/bias']"),
        ("a key that is not a name", {**good, 3: good[name]}, "unexpected [3]"),
        ("the whole kernel", with_(**{name: np.zeros((3, 3, 8, 8), np.float32)}),
         "conv_b/kernel has shape (3, 3, 8, 8), the model's slice is (3, 3, 2, 8)"),
        ("float64", with_(**{name: good[name].astype(np.float64)}),
         "conv_b/kernel has dtype float64"),
        ("a nested list", with_(**{name: good[name].tolist()}), "not a numpy array"),
        ("an object array", with_(**{name: np.empty((3, 3, 2, 8), object)}), "dtype object"),
        ("NaN", with_(**{name: nan}), "conv_b/kernel holds NaN or inf"),
        ("-inf", with_(**{"logits/bias": inf}), "logits/bias holds NaN or inf"),
        ("a scalar", with_(**{"logits/bias": np.float32(1.0)}), "not a numpy array"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_a_malformed_update_is_refused_and_touches_nothing(fed_models, case):
    t = Trainer(fed_models["partial"])
    train_a_little(t)
    before = t.state()
    what, update, message = hostile_updates(t.trained_slice())[case]
    with pytest.raises(SliceError, match="Trainer.set_trained_slice") as info:
        t.set_trained_slice(update)
    assert message in str(info.value), (what, str(info.value))
    same_bytes(t.state(), before)


def test_a_format_4_file_loads_and_writes_only_its_trained_channels(fed_models, tmp_path):
    content = open(fed_models["partial"], "rb").read()
    _, _, meta = _metadata_span(content)
    meta["format"] = "tfpock-training-model/4"
    for v in meta["variables"]:
        v.pop("slice", None)
    old = tmp_path / "old.tflite"
    old.write_bytes(_patch_metadata(content, json.dumps(meta, separators=(",", ":")).encode()))
    t = Trainer(old)
    assert t.fingerprint == Trainer(fed_models["partial"]).fingerprint   # checkpoints carry over
    part = t.trained_slice()
    assert part["conv_b/kernel"].shape == (3, 3, 8, 8)     # /4 does not say: it travels whole
    changed = {k: v + np.float32(1) if k == "conv_b/kernel" else v for k, v in part.items()}
    t.set_trained_slice(changed)
    after = t.state()["conv_b/kernel"]
    same_bytes({"k": after[:, :, :2]}, {"k": changed["conv_b/kernel"][:, :, :2]})
    same_bytes({"k": after[:, :, 2:]}, {"k": part["conv_b/kernel"][:, :, 2:]})


@pytest.mark.parametrize("bad", [
    {"axis": 4, "channels": [0, 2]}, {"axis": 2, "channels": [1, 2]},
    {"axis": 2, "channels": [0, 9]}, {"axis": True, "channels": [0, 1]}, "first 2"])
def test_a_bad_slice_in_the_metadata_refuses_the_file(fed_models, tmp_path, bad):
    content = open(fed_models["partial"], "rb").read()
    _, _, meta = _metadata_span(content)
    next(v for v in meta["variables"] if v["name"] == "conv_b/kernel")["slice"] = bad
    path = tmp_path / "bad.tflite"
    path.write_bytes(_patch_metadata(content, json.dumps(meta, separators=(",", ":")).encode()))
    with pytest.raises(ModelFileError, match="variable 'conv_b/kernel' has slice"):
        Trainer(path)
