"""Checkpoint format 2: the fingerprint decides which model a checkpoint fits, the checksum
catches damage, and every refusal names the file and the problem with nothing loaded."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import time
import zipfile

import numpy as np
import pytest

from tfpock.runtime import CheckpointError, InputError, Trainer, checkpoint
from tfpock.runtime.atomic import STALE_AFTER_SECONDS, remove_stale_parts
from tests.runtime.models import batch


@pytest.fixture
def trained(model_files, tmp_path):
    """A Trainer of ``mlp`` one step away from its export, a checkpoint of that state, and
    the Trainer moved on one more step (the state a bad restore must leave alone)."""
    trainer = Trainer(model_files["mlp"], num_threads=1)
    trainer.train(*batch(0))
    ckpt = tmp_path / "ckpt.npz"
    trainer.save(ckpt)
    trainer.train(*batch(1))
    return trainer, ckpt


def _state_unchanged(trainer, before):
    after = trainer.state()
    return all(after[k].tobytes() == before[k].tobytes() for k in before)


def _refused(trainer, path, *words):
    before = trainer.state()
    with pytest.raises(CheckpointError) as info:
        trainer.restore(path)
    message = str(info.value)
    assert str(path) in message, message
    for word in words:
        assert word in message, message
    assert _state_unchanged(trainer, before)
    return message


def test_format_fields(trained):
    trainer, ckpt = trained
    with zipfile.ZipFile(ckpt) as archive:
        assert sorted(archive.namelist()) == sorted(
            [f"{k}.npy" for k in trainer.state()] + ["__tfpock__.npy"])
    with np.load(ckpt) as data:
        meta = json.loads(data["__tfpock__"].tobytes())
        arrays = {k: data[k] for k in data.files if k != "__tfpock__"}
    assert meta == {"format": "tfpock-checkpoint/2", "fingerprint": trainer.fingerprint,
                    "model": "mlp (scheme full)", "checksum": checkpoint.checksum(arrays)}


def test_fingerprint_is_the_model_and_scheme(model_files, trained):
    trainer, ckpt = trained
    again = Trainer(model_files["mlp_again"])   # the same model exported again, batch 8
    other = Trainer(model_files["mlp_last1"])   # the same model, another scheme
    assert again.fingerprint == trainer.fingerprint
    assert other.fingerprint != trainer.fingerprint
    again.restore(ckpt)
    saved = checkpoint.load(ckpt, {k: (v.shape, v.dtype) for k, v in trainer.state().items()},
                            trainer.fingerprint)
    assert all(again.state()[k].tobytes() == v.tobytes() for k, v in saved.items())
    message = _refused(other, ckpt, "another model", "mlp (scheme full)",
                       trainer.fingerprint[:16], other.fingerprint[:16])
    assert "nothing was loaded" in message


def test_flipped_byte_in_an_array_is_refused(trained, tmp_path):
    trainer, ckpt = trained
    content = bytearray(ckpt.read_bytes())
    with zipfile.ZipFile(ckpt) as archive:
        info = archive.getinfo("mlp/hidden_1/kernel.npy")
    content[info.header_offset + 200] ^= 0x10   # inside the data (header is ~100 bytes)
    flipped = tmp_path / "flipped.npz"
    flipped.write_bytes(bytes(content))
    _refused(trainer, flipped, "not a readable .npz", "CRC")   # the zip's CRC sees it first
    # the same change with the zip rebuilt (CRCs right): the checksum sees it
    with np.load(ckpt) as data:
        arrays = {k: data[k].copy() for k in data.files}
    arrays["mlp/hidden_1/kernel"].reshape(-1).view(np.uint8)[100] ^= 0x10
    rezipped = tmp_path / "rezipped.npz"
    np.savez(rezipped, **arrays)
    _refused(trainer, rezipped, "damaged", "checksum")


@pytest.mark.parametrize("keep", [0, 10, 0.5, -30, -1])
def test_truncated_checkpoint_is_refused(trained, tmp_path, keep):
    trainer, ckpt = trained
    content = ckpt.read_bytes()
    cut = keep if isinstance(keep, int) and keep >= 0 else \
        int(len(content) * keep) if keep > 0 else len(content) + keep
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(content[:cut])
    _refused(trainer, truncated, "not a readable .npz")


def test_wrong_shapes_with_right_names_and_nan_are_refused(trained, tmp_path):
    trainer, _ = trained
    state = trainer.state()
    wrong = dict(state, **{"mlp/logits/bias": np.zeros(7, np.float32)})
    path = tmp_path / "wrong_shape.npz"
    checkpoint.save(path, wrong, trainer.fingerprint)   # right fingerprint and checksum
    _refused(trainer, path, "'mlp/logits/bias' is float32 (7,)", "the model has float32 (5,)")
    wrong_dtype = dict(state, **{"mlp/logits/bias": np.zeros(5, np.float64)})
    path = tmp_path / "wrong_dtype.npz"
    checkpoint.save(path, wrong_dtype, trainer.fingerprint)
    _refused(trainer, path, "'mlp/logits/bias' is float64 (5,)")
    nan = {k: v.copy() for k, v in state.items()}
    nan["mlp/hidden_2/kernel"][3, 4] = np.nan
    path = tmp_path / "nan.npz"
    checkpoint.save(path, nan, trainer.fingerprint)
    _refused(trainer, path, "'mlp/hidden_2/kernel' holds NaN or inf")
    missing = {k: v for k, v in state.items() if k != "mlp/hidden_1/bias"}
    path = tmp_path / "missing.npz"
    checkpoint.save(path, missing, trainer.fingerprint)
    _refused(trainer, path, "missing ['mlp/hidden_1/bias']")


def test_broken_metadata_entry_is_refused(trained, tmp_path):
    trainer, _ = trained
    state = trainer.state()
    for name, entry, words in [
            ("not_json", b"{not json", "not tfpock's JSON"),
            ("list", b"[1, 2]", "not a JSON object"),
            ("future", json.dumps({"format": "tfpock-checkpoint/9", "fingerprint": "",
                                   "checksum": ""}).encode(), "tfpock-checkpoint/9"),
            ("no_checksum", json.dumps({"format": "tfpock-checkpoint/2",
                                        "fingerprint": trainer.fingerprint}).encode(),
             "lacks 'checksum'")]:
        path = tmp_path / f"{name}.npz"
        np.savez(path, **state, __tfpock__=np.frombuffer(entry, np.uint8))
        _refused(trainer, path, words)


def test_format_1_is_refused_unless_accepted(trained, tmp_path, caplog):
    trainer, _ = trained
    state = trainer.state()
    path = tmp_path / "v1.npz"
    np.savez(path, **state)
    _refused(trainer, path, "format-1", "accept_v1=True")
    trainer.train(*batch(2))
    with caplog.at_level(logging.WARNING, logger="tfpock.runtime.checkpoint"):
        trainer.restore(path, accept_v1=True)
    assert "format 1" in caplog.text
    assert _state_unchanged(trainer, state)
    trainer.save(path)   # upgraded
    trainer.restore(path)


def test_set_state_checks_shapes_dtypes_and_values(trained):
    trainer, _ = trained
    state = trainer.state()
    with pytest.raises(InputError, match=r"mlp/logits/bias has shape \(7,\)"):
        trainer.set_state(dict(state, **{"mlp/logits/bias": np.zeros(7, np.float32)}))
    with pytest.raises(InputError, match="mlp/logits/bias holds NaN or inf"):
        trainer.set_state(dict(state, **{"mlp/logits/bias": np.full(5, np.inf, np.float32)}))
    assert _state_unchanged(trainer, state)


def test_stale_parts_of_dead_writers_are_removed(tmp_path):
    old = time.time() - 2 * STALE_AFTER_SECONDS
    dead = tmp_path / ".tfpock-dead.part"
    live = tmp_path / ".tfpock-live.part"
    fresh = tmp_path / ".tfpock-fresh.part"
    other = tmp_path / "other.part"
    for path in (dead, live, fresh, other):
        path.write_bytes(b"partial")
    for path in (dead, live, other):
        os.utime(path, (old, old))
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)   # a writer at work
        assert remove_stale_parts(str(tmp_path)) == [str(dead)]
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (live, fresh, other))
