"""The device side of the portability tests: runs exported tfpock models with
``tfpock.runtime.Trainer`` and nothing else (numpy and a TFLite interpreter).

Used two ways, with the same protocol (:func:`run_protocol`) so results can be compared
exactly:

* imported by ``test_runtime_portability.py`` and ``aarch64_check.py`` and run in their
  process, the host;
* run as a script in a subprocess (the "device"; under qemu, ``aarch64_check.py`` copies this
  file alone into the arm64 root filesystem):

      python tests/portability/device_protocol.py [--block-tensorflow] REQUEST.json

  REQUEST.json holds {"runtime", "num_threads", "steps", "workdir",
  "models": {name: {"path": model file, "inputs": an .npz of x0, y0, x1, y1, ...}}}.
  The script prints one JSON object on stdout: per model the losses, weights and outputs
  (arrays as base64 of their bytes, so the comparison is bit-exact), plus what the process
  knows about TensorFlow.

``--block-tensorflow`` installs, before anything else is imported, a meta-path finder that
refuses ``tensorflow``, ``keras``, ``tf_keras`` and their submodules: with TensorFlow
installed next to the runtime, the process still behaves as a device without it. Keep this
file importable with numpy 1.x and without TensorFlow.
"""
import sys

BLOCKED = ("tensorflow", "keras", "tf_keras")
BLOCKED_ATTEMPTS = []


class _BlockTensorFlow:
    """A meta-path finder that makes the BLOCKED packages (and submodules) unimportable."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            BLOCKED_ATTEMPTS.append(fullname)
            raise ImportError(f"{fullname} is blocked: this process plays a device without "
                              "TensorFlow")
        return None


def _block_tensorflow():
    already = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    if already:  # something (a .pth file?) imported it before the script ran
        raise SystemExit(f"cannot block TensorFlow: already imported {already}")
    sys.meta_path.insert(0, _BlockTensorFlow())


if __name__ == "__main__" and "--block-tensorflow" in sys.argv[1:]:
    _block_tensorflow()

import base64  # noqa: E402  (after the blocker on purpose)
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402

DISTRIBUTIONS = {"ai-edge-litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime"}


def encode(array) -> dict:
    array = np.ascontiguousarray(array)
    return {"dtype": array.dtype.str, "shape": list(array.shape),
            "b64": base64.b64encode(array.tobytes()).decode("ascii")}


def decode(obj: dict) -> np.ndarray:
    raw = base64.b64decode(obj["b64"])
    return np.frombuffer(raw, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()


def load_inputs(path) -> list:
    """The batches of an inputs .npz: [(x0, y0), (x1, y1), ...]."""
    with np.load(path, allow_pickle=False) as data:
        n = len([k for k in data.files if k.startswith("x")])
        return [(data[f"x{i}"], data[f"y{i}"]) for i in range(n)]


def run_protocol(model_path, runtime: str, batches: list, steps: int, workdir,
                 num_threads=1) -> dict:
    """Everything a device does with a model: load, infer, ``steps`` train steps, weights,
    save a checkpoint, train on, restore, and restore into a fresh Trainer. Uses the batches
    in turn; needs ``len(batches) >= steps + 1``. Returns plain JSON-able results."""
    from tfpock.runtime import Trainer

    os.makedirs(workdir, exist_ok=True)
    trainer = Trainer(model_path, runtime=runtime, num_threads=num_threads)
    x0 = batches[0][0]
    out = {"runtime": trainer.runtime, "infer_before": encode(trainer.infer(x0))}
    out["losses"] = [trainer.train(*batches[i])["loss"] for i in range(steps)]
    weights = trainer.weights()
    out["weights"] = {p: encode(v) for p, v in weights.items()}
    out["infer_after"] = encode(trainer.infer(x0))

    ckpt = os.path.join(os.fspath(workdir), "ckpt.npz")
    trainer.save(ckpt)
    extra = batches[steps]
    out["loss_after_save"] = trainer.train(*extra)["loss"]
    moved = {p: v for p, v in trainer.weights().items()}
    out["weights_moved_after_save"] = sorted(
        p for p in weights if not np.array_equal(moved[p], weights[p]))
    trainer.restore(ckpt)
    out["restored_equal"] = _equal(trainer.weights(), weights)
    out["infer_restored"] = encode(trainer.infer(x0))
    # the restored state trains like the saved one did
    out["loss_after_restore"] = trainer.train(*extra)["loss"]

    fresh = Trainer(model_path, runtime=runtime, num_threads=num_threads)
    fresh.restore(ckpt)
    out["fresh_restored_equal"] = _equal(fresh.weights(), weights)
    out["infer_fresh_restored"] = encode(fresh.infer(x0))
    return out


def _equal(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(
        a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)


def _version(dist: str):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv) -> int:
    args = [a for a in argv if a != "--block-tensorflow"]
    with open(args[0]) as f:
        request = json.load(f)
    results = {}
    for name, model in request["models"].items():
        try:
            results[name] = run_protocol(model["path"], request["runtime"],
                                         load_inputs(model["inputs"]), request["steps"],
                                         os.path.join(request["workdir"], name),
                                         request.get("num_threads", 1))
        except Exception as exc:  # reported per model, so the other models still run
            results[name] = {"error": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc()}
    attempts_by_runtime = list(BLOCKED_ATTEMPTS)
    try:
        import tensorflow  # noqa: F401
        tf_import_error = None
    except ImportError as exc:
        tf_import_error = f"{type(exc).__name__}: {exc}"
    import tfpock.runtime
    report = {
        "results": results,
        "python": sys.version.split()[0],
        "prefix": sys.prefix,
        "numpy": np.__version__,
        "runtime_version": _version(DISTRIBUTIONS[request["runtime"]]),
        "tfpock_runtime_file": tfpock.runtime.__file__,
        "tensorflow_import_error": tf_import_error,
        "blocked_attempts": attempts_by_runtime,
        "tf_modules_loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
    }
    assert "tensorflow" not in sys.modules, "tensorflow was imported on the device"
    sys.stdout.write(json.dumps(report))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
