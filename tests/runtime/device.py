"""Device side of the runtime stress tests, run as a script with TensorFlow blocked:

    python tests/runtime/device.py saver MODEL CKPT      # the kill test's victim
    python tests/runtime/device.py case CASE.json        # one hostile case

``saver`` saves two distinct states of a Trainer (A: as exported, B: after one training step)
to CKPT in turn, forever, printing ``saved`` after the first save (state A) and flushing; the
kill test kills it with SIGKILL. ``case`` runs one hostile case (see ``tests/runtime/hostile.py``)
and prints one JSON line: ``{"outcome": "ok" | "error", "type", "message", "state_unchanged"}``.
Keep this file free of TensorFlow: it plays the device.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.portability.device_protocol import _block_tensorflow  # noqa: E402

_block_tensorflow()

import json  # noqa: E402

import numpy as np  # noqa: E402

from tests.runtime.states import two_states  # noqa: E402
from tfpock.runtime import Trainer  # noqa: E402

def saver(model: str, ckpt: str) -> None:
    trainer = Trainer(model, num_threads=1)
    a, b = two_states(trainer)
    trainer.save(ckpt)
    print("saved", flush=True)
    while True:
        for state in (b, a):
            trainer.set_state(state)
            trainer.save(ckpt)


def _array(recipe: dict):
    """An input built from a JSON recipe: {"dtype", "shape", "fill"} or {"python": literal}."""
    if "python" in recipe:
        return recipe["python"]
    fill = recipe.get("fill", "random")
    shape, dtype = tuple(recipe["shape"]), recipe["dtype"]
    if dtype == "object":
        return np.full(shape, "a", dtype=object)
    if fill == "random":
        value = np.random.default_rng(0).standard_normal(shape)
    else:
        value = np.full(shape, float(fill) if fill not in ("nan", "inf") else
                        {"nan": np.nan, "inf": np.inf}[fill])
    if np.dtype(dtype).kind in "iu":
        value = np.clip(np.nan_to_num(value), -3, 3)
    value = value.astype(dtype)
    for index, v in recipe.get("set", []):
        value.flat[index] = v
    return value


def run_case(case: dict) -> dict:
    """What a device does with the case's files or inputs; the first exception ends it."""
    trainer = None
    before = None
    try:
        if case["action"] == "model":   # a model file: load it, then use it all the way
            trainer = Trainer(case["model"], num_threads=1)
            spec = trainer.metadata["x"]
            x = np.zeros(spec["shape"], spec["dtype"])
            y = np.zeros(trainer.metadata["y"]["shape"], trainer.metadata["y"]["dtype"])
            trainer.infer(x)
            trainer.train(x, y)
            ckpt = os.path.join(case["folder"], "ckpt.npz")
            trainer.save(ckpt)
            trainer.restore(ckpt)
            return {"outcome": "ok"}
        trainer = Trainer(case["model"], num_threads=1)
        before = trainer.state()
        if case["action"] == "restore":
            trainer.restore(case["checkpoint"])
            with np.load(case["same_as"]) as good:   # accepted: it must be the good state
                after = trainer.state()
                return {"outcome": "ok", "state_matches": all(
                    after[k].tobytes() == good[k].tobytes() for k in after)}
        elif case["action"] == "train":
            lr = case.get("learning_rate")
            trainer.train(_array(case["x"]), _array(case["y"]),
                          learning_rate=float(lr) if lr is not None else None)
        elif case["action"] == "infer":
            trainer.infer(_array(case["x"]))
        else:
            raise SystemExit(f"unknown action {case['action']!r}")
        return {"outcome": "ok"}
    except Exception as exc:  # reported, classified by the parent
        result = {"outcome": "error", "type": type(exc).__name__, "message": str(exc)[:500]}
        if before is not None and case["action"] == "restore":
            after = trainer.state()
            result["state_unchanged"] = all(
                after[k].tobytes() == before[k].tobytes() for k in before)
        return result


def main(argv) -> int:
    if argv[0] == "saver":
        saver(argv[1], argv[2])
    elif argv[0] == "case":
        with open(argv[1]) as f:
            case = json.load(f)
        result = run_case(case)
        result["tf_loaded"] = "tensorflow" in sys.modules
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
