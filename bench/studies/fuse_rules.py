"""What the file pass fuse's rules do on exported models: where they fire, the peaks, the
numbers and the step time with and without them.

    python -m bench.studies.fuse_rules --rules all --steps 3 --time 30 [MODEL.tflite ...]

Without files it exports the suite's MobileNetV2 0.35 @128 and ResNet-18-style (BN frozen,
SGD) with schemes full and last:2 at batch 8 (``--models``, ``--schemes``, ``--batch``). Per
file, each rule's fired and declined counts and the ``train``/``infer`` timeline peaks
before and after (:func:`tfpock.tflite.fuse.fuse`); then, on the device side
(``tfpock.runtime.Trainer``, one thread), ``--steps`` train steps of the original and the
fused file from the same start and batches, compared (bit-identical or the largest
difference), and the median of ``--time`` interleaved steps of each. Writes
``bench/results/<date>-<machine>-fuse-rules.{json,md}``.
"""
from __future__ import annotations

import datetime
import os
import tempfile
import time

import numpy as np
from absl import app, flags

from bench import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    from tfpock.tflite.fuse import DEFAULT_RULES
    flags.DEFINE_list("rules", list(DEFAULT_RULES), "Rule names, or 'all'.")
    flags.DEFINE_integer("steps", 3, "Train steps compared between original and fused.")
    flags.DEFINE_integer("time", 0, "Interleaved steps to time (0: none).")
    flags.DEFINE_list("models", ["mobilenet_v2_035_128", "resnet18_half_96"],
                      "bench.models names to export when no files are given.")
    flags.DEFINE_list("schemes", ["full", "last:2"], "Schemes to export.")
    flags.DEFINE_integer("batch", 8, "Batch size of the exported files.")
    cli.define_output_flags()


def export_suite_models(folder: str) -> list[str]:
    """tfpock files of the suite's models for ``--models`` x ``--schemes`` (default passes,
    so fuse's default rules already ran)."""
    import keras

    import tfpock
    from bench.models import MODELS
    paths = []
    for name in FLAGS.models:
        for scheme in FLAGS.schemes:
            program = tfpock.optimize(
                MODELS[name].build(), scheme=scheme, batch_size=FLAGS.batch,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                optimizer=keras.optimizers.SGD(0.01))
            paths.append(program.export(os.path.join(
                folder, f"{name}-{scheme.replace(':', '')}-b{FLAGS.batch}.tflite")))
    return paths


def compare(original: str, fused: str, steps: int, timed: int) -> dict:
    """Train steps of both files from the same start; the losses, the state's agreement and
    (``timed`` > 0) the median step times."""
    from tfpock.runtime import Trainer
    trainers = [Trainer(p, num_threads=1) for p in (original, fused)]
    meta, rng = trainers[0].metadata, np.random.default_rng(0)
    losses = []
    for _ in range(steps):   # a new batch each step, the same for both
        x = rng.uniform(-1, 1, meta["x"]["shape"]).astype(meta["x"]["dtype"])
        y = rng.integers(0, meta["output"]["shape"][-1], meta["y"]["shape"]).astype(
            meta["y"]["dtype"])
        losses.append([t.train(x, y)["loss"] for t in trainers])
    states = [t.state() for t in trainers]
    same = all(np.array_equal(states[0][k].view(np.uint8), states[1][k].view(np.uint8))
               for k in states[0])
    diff = max(float(np.max(np.abs(states[0][k].astype(np.float64) - states[1][k]),
                            initial=0.0)) for k in states[0])
    out = {"losses": losses[-1] if losses else [], "state_bit_identical": same,
           "state_max_abs_difference": diff}
    if timed:
        times: list[list[float]] = [[], []]
        for _ in range(timed):
            for t, spent in zip(trainers, times):
                start = time.perf_counter()
                t.train(x, y)
                spent.append(time.perf_counter() - start)
        out["step_ms_median"] = [float(np.median(t) * 1e3) for t in times]
    return out


def measure(path: str, rules: list[str], folder: str) -> dict:
    from tfpock.tflite.fuse import fuse
    with open(path, "rb") as f:
        content, result = fuse(f.read(), ["train", "infer"], rules)
    fused = os.path.join(folder, "fused-" + os.path.basename(path))
    with open(fused, "wb") as f:
        f.write(content)
    return {"file": path, "signatures": result.stats,
            **compare(path, fused, FLAGS.steps, FLAGS.time)}


def markdown(doc: dict) -> str:
    lines = [f"# fuse rules, {doc['date']} ({doc['machine']})", "",
             f"Rules {', '.join(doc['rules'])}; `python -m bench.studies.fuse_rules "
             f"--rules {','.join(doc['rules'])} --steps {doc['steps']} --time {doc['time']}` "
             "(files exported from bench.models; ai-edge-litert, one thread, pinned with "
             "`taskset -c 0` on a shared machine).", ""]
    for row in doc["files"]:
        lines.append(f"## {os.path.basename(row['file'])}")
        for name, s in row["signatures"].items():
            fired = "; ".join(f"{r} fired {v['fired']} declined {v['declined']}"
                              for r, v in s["rules"].items())
            lines.append(f"- {name}: ops {s['ops_before']} -> {s['ops_after']}, timeline peak "
                         f"{s['peak_bytes_before'] / 2**20:.1f} -> "
                         f"{s['peak_bytes_after'] / 2**20:.1f} MB; {fired}")
        state = ("bit-identical" if row["state_bit_identical"]
                 else f"max abs difference {row['state_max_abs_difference']:.3g}")
        lines.append(f"- {doc['steps']} steps: state {state}")
        if "step_ms_median" in row:
            before, after = row["step_ms_median"]
            lines.append(f"- step, median of {doc['time']} interleaved: {before:.2f} -> "
                         f"{after:.2f} ms")
        lines.append("")
    return "\n".join(lines)


def main(argv):
    from tfpock.tflite.fuse import RULES
    rules = list(RULES) if FLAGS.rules == ["all"] else FLAGS.rules
    folder = tempfile.mkdtemp(prefix="tfpock-fuse-")
    paths = argv[1:] or export_suite_models(folder)
    doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": FLAGS.machine, "rules": rules, "steps": FLAGS.steps, "time": FLAGS.time,
           "files": [measure(p, rules, folder) for p in paths]}
    cli.write_results(doc, markdown(doc), "fuse-rules", FLAGS.out_dir)

if __name__ == "__main__":
    define_flags()
    app.run(main)
