"""The contenders of one (model, batch, threads) group, from a model's prepared entry.

TF-free, shared by ``bench/run.py`` (all contenders) and ``bench/device.py`` (only the TFLite
ones, from copied files). Numbers follow issue 5's list; ``LABELS`` is what the report shows.
"""
from __future__ import annotations

import json
import os

from bench.harness import Contender

LABELS = {
    "keras_full": "1. Keras train_on_batch, all layers trainable",
    "keras_frozen": "2. Keras train_on_batch, scheme's layers trainable",
    "tf_function": "3. tf.function + GradientTape, SGD",
    "stock_tflite": "4. stock TFLite recipe, ai-edge-litert",
    "tfpock_litert": "5. tfpock, ai-edge-litert",
    "tfpock_tflite_runtime": "5. tfpock, tflite-runtime 2.14",
    "tfpock_infer": "6'. infer signature of tfpock's file, ai-edge-litert",
    "forward": "6. TFLite forward only, constant weights (floor)",
}
TF_KINDS = ("keras_full", "keras_frozen", "tf_function")


def tflite_runtime_python(repo: str) -> str | None:
    """The tflite-runtime 2.14 venv made by tests/portability/test_runtime_portability.py, if
    present."""
    venv = os.environ.get("TFPOCK_TFLITE_RUNTIME_VENV", os.path.join(repo, ".venv-tflite-runtime"))
    python = os.path.join(venv, "bin", "python")
    return python if os.path.exists(python) else None


def group(entry: dict, batch: int, threads: int, include_tf: bool = True,
          tflite_runtime: str | None = None) -> tuple[list[Contender], list[dict]]:
    """(contenders to run, rows that cannot run: ``{"id", "scheme", "status", "error"}``)."""
    data = {k: entry[k] for k in ("input_shape", "input_dtype", "vocab", "classes")}
    base = {"batch": batch, "threads": threads, "data": data}
    b = str(batch)
    run, skipped = [], []

    def add(cid, scheme, **spec):
        run.append(Contender(cid, scheme, dict(base, **spec)))

    if include_tf:
        add("keras_full", "full", kind="keras", model_file=entry["keras_file"],
            trained_layers=None)
        add("keras_frozen", "last", kind="keras", model_file=entry["keras_file"],
            trained_layers=entry["schemes"]["last"]["trained_layers"])
        for scheme in ("last", "full"):
            add("tf_function", scheme, kind="tf_function", model_file=entry["keras_file"],
                scheme_text=entry["schemes"][scheme]["scheme"],
                trained_count=len(entry["schemes"][scheme]["trained_paths"]))
    for scheme in ("last", "full"):
        stock = entry["stock"][scheme]
        if stock.get("run_error") or not stock["files"]:   # Flex fails the same every time
            skipped.append({"id": "stock_tflite", "scheme": scheme, "status": "failed",
                            "error": stock.get("run_error") or stock["error"]})
            continue
        # a SELECT_TF_OPS model exists at the first batch only: it is run to record the error
        at = b if b in stock["files"] else next(iter(stock["files"]))
        add("stock_tflite", scheme, kind="signature", model_file=stock["files"][at],
            runtime="ai-edge-litert", batch=int(at))
    for scheme in ("last", "full"):
        path = entry["tfpock"][scheme][b]["file"]
        add("tfpock_litert", scheme, kind="tfpock", model_file=path, runtime="ai-edge-litert")
        if tflite_runtime:
            run.append(Contender("tfpock_tflite_runtime", scheme,
                                 dict(base, kind="tfpock", model_file=path,
                                      runtime="tflite-runtime"), python=tflite_runtime))
        else:
            skipped.append({"id": "tfpock_tflite_runtime", "scheme": scheme,
                            "status": "not installed",
                            "error": "no .venv-tflite-runtime (made by "
                                     "tests/portability/test_runtime_portability.py)"})
    add("tfpock_infer", "last", kind="tfpock_infer",
        model_file=entry["tfpock"]["last"][b]["file"], runtime="ai-edge-litert")
    add("forward", "-", kind="forward", model_file=entry["forward"][b]["file"],
        runtime="ai-edge-litert")
    return run, skipped


def _relocate(obj, fn):
    """``obj`` with every model file path (``*.tflite``, ``*.keras``) mapped by ``fn``."""
    if isinstance(obj, dict):
        return {k: _relocate(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relocate(v, fn) for v in obj]
    if isinstance(obj, str) and obj.endswith((".tflite", ".keras")):
        return fn(obj)
    return obj


def write_manifest(path: str, models: dict, batches: list[int]) -> None:
    """What ``bench/device.py`` reads: the model entries with file paths relative to the
    manifest's folder, so the folder can be copied to a device as it is."""
    root = os.path.dirname(os.path.abspath(path))
    with open(path, "w") as f:
        json.dump({"models": _relocate(models, lambda p: os.path.relpath(p, root)),
                   "batches": batches}, f, indent=1)


def read_manifest(path: str) -> dict:
    root = os.path.dirname(os.path.abspath(path))
    with open(path) as f:
        return _relocate(json.load(f), lambda p: os.path.join(root, p))
