"""The device side of the suite: times the exported TFLite models with numpy, a TFLite
runtime and absl-py only (no TensorFlow, no matplotlib), e.g. on a Raspberry Pi.

On the host: ``python bench/run.py --prepare_only --work_dir out/bench-device`` exports the
models and ``manifest.json``; copy that folder and this repository (or ``bench/`` and
``tfpock/``) to the device, then run there::

    python bench/device.py --manifest out/bench-device/manifest.json [--threads 1,4]

Contenders 4 (stock recipe, where it converted), 5 (tfpock) and 6 (forward floor), with the
same harness as ``bench/run.py`` (own process each, pinned, alternating rounds). Writes
``bench/results/<date>-<machine>-device.json`` in the same schema; ``python bench/report.py
<that file>`` on the host makes its report (the TF rows are then absent: run ``bench/run.py``
on the device for those, see ``bench/README.md``).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import app, flags  # noqa: E402

from bench import cli, contenders, harness  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line (run as a script only: ``bench/cli.py`` says why)."""
    flags.DEFINE_string("manifest", None, "manifest.json written by bench/run.py --prepare_only.")
    flags.mark_flag_as_required("manifest")
    flags.DEFINE_list("threads", ["1", "2"], "Thread counts.")
    flags.DEFINE_integer("rounds", 3, "Rounds per contender (alternating).")
    cli.define_output_flags()
    flags.adopt_module_key_flags(cli)


def main(argv) -> None:
    del argv
    manifest = contenders.read_manifest(FLAGS.manifest)
    threads = [int(t) for t in FLAGS.threads]
    timing = harness.Timing(FLAGS.rounds, warmup=5, round_s=1.5, min_steps=5, max_steps=20)
    venv = contenders.tflite_runtime_python(REPO)
    results = []
    for name, entry in manifest["models"].items():
        for batch in manifest["batches"]:
            for t in threads:
                print(f"{name} batch {batch} threads {t} ...", flush=True)
                run, skipped = contenders.group(entry, batch, t, include_tf=False,
                                                tflite_runtime=venv)
                rows = harness.run_group(run, timing) + skipped
                for row in rows:
                    row.update(model=name, batch=batch, threads=t)
                    ms = row.get("step_ms", {}).get("median")
                    print(f"  {contenders.LABELS[row['id']]:<52} {row['scheme']:<5} "
                          + (f"{ms:8.2f} ms  {row['peak_rss_mb']:6.0f} MB" if ms is not None
                             else row["status"]), flush=True)
                results += rows
    now = datetime.datetime.now()
    doc = {"schema": "tfpock-bench/1", "date": now.isoformat(timespec="seconds"),
           "mode": "device", "machine": {
               "name": FLAGS.machine, "cpu": platform.processor() or platform.machine(),
               "cores": os.cpu_count(), "platform": platform.platform(),
               "python": platform.python_version(), "tensorflow": "not used",
               "keras": "not used", "ai_edge_litert": _litert_version(), "taskset": True},
           "timing": dataclasses.asdict(timing), "batches": manifest["batches"],
           "threads": threads, "models": manifest["models"], "results": results}
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    path = os.path.join(FLAGS.out_dir, f"{now:%Y-%m-%d}-{FLAGS.machine}-device.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {path}")


def _litert_version() -> str:
    try:
        import ai_edge_litert
        return getattr(ai_edge_litert, "__version__", "?")
    except ImportError:
        return "not installed"


if __name__ == "__main__":
    define_flags()
    app.run(main)
