"""``kill -9`` in the middle of ``Trainer.save``, many times: the checkpoint under its name is
always whole (the previous one or the new one), never partial; leftovers of killed writers are
only ``.tfpock-*.part`` files, which the next save removes.

A real subprocess (``device.py saver``, TensorFlow blocked) saves two distinct states A and B
of the 1.1 MB ``wide`` model in turn; after it reports its first save it is killed with
SIGKILL after a seeded random 0-20 ms (a save takes a few ms here, so the kills land before,
inside and after writes). After each kill the checkpoint must restore with ``Trainer.restore``
and equal A or B exactly.
"""
from __future__ import annotations

import collections
import glob
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tfpock.runtime import Trainer
from tfpock.runtime.atomic import STALE_AFTER_SECONDS
from tests.runtime.states import two_states

DEVICE = Path(__file__).resolve().parent / "device.py"
KILLS = 40
SEED = 15
logger = logging.getLogger(__name__)


def _equal(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_kill_during_save_leaves_a_whole_checkpoint(model_files, tmp_path):
    model = model_files["wide"]
    trainer = Trainer(model, num_threads=1)
    a, b = two_states(trainer)
    assert not _equal(a, b)
    ckpt = tmp_path / "ckpt.npz"
    rng = random.Random(SEED)
    found = collections.Counter()
    killed_mid_write = 0
    started = time.monotonic()
    for _ in range(KILLS):
        before = set(os.listdir(tmp_path))
        child = subprocess.Popen([sys.executable, str(DEVICE), "saver", model, str(ckpt)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = child.stdout.readline()
            assert line.strip() == "saved", child.stderr.read() if child.poll() else line
            time.sleep(rng.uniform(0, 0.020))
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close()
            child.stderr.close()
        after = set(os.listdir(tmp_path))
        new = after - before - {ckpt.name}
        assert all(n.startswith(".tfpock-") and n.endswith(".part") for n in new), new
        killed_mid_write += bool(new)
        trainer.restore(ckpt)   # raises CheckpointError on a partial or damaged file
        state = trainer.state()
        which = "A" if _equal(state, a) else "B" if _equal(state, b) else "neither"
        found[which] += 1
    elapsed = time.monotonic() - started
    logger.warning("kill test: %d kills in %.1f s; found %s; %d killed mid-write (left a .part)",
                   KILLS, elapsed, dict(found), killed_mid_write)
    assert found["neither"] == 0
    assert found["A"] + found["B"] == KILLS
    assert found["A"] and found["B"], found       # the kills spread over the loop
    assert killed_mid_write >= 3, killed_mid_write  # and some landed inside a write

    # the next save removes the leftovers of killed writers (once they are old enough to be
    # sure they are not being created right now)
    parts = glob.glob(str(tmp_path / ".tfpock-*.part"))
    old = time.time() - 2 * STALE_AFTER_SECONDS
    for part in parts:
        os.utime(part, (old, old))
    trainer.save(ckpt)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]
