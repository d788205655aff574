"""tfpock's benchmark suite (issue 5): every contender, every model, one command.

Run from the repository root: ``python bench/run.py [--quick]``. Writes
``bench/results/<date>-<machine>.json`` and a Markdown report with PNG plots beside it
(``bench/report.py`` rewrites the report from the JSON). How it measures: ``bench/harness.py``;
the contenders: ``bench/contenders.py``; the device side: ``bench/README.md``.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import app, flags, logging  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench import cli, contenders, harness, report  # noqa: E402
from bench.models import MODELS  # noqa: E402

SCHEMA = "tfpock-bench/1"
FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line (run as a script only: ``bench/cli.py`` says why)."""
    flags.DEFINE_bool("quick", False, "Fewer models, one thread count, shorter rounds (< 5 min).")
    flags.DEFINE_list("models", None, f"Models to run (default: all, or the quick ones); "
                      f"choices: {', '.join(MODELS)}")
    flags.DEFINE_list("batches", ["1", "8"], "Batch sizes.")
    flags.DEFINE_list("threads", None, "Thread counts (default: 1,2; --quick: 1).")
    flags.DEFINE_integer("rounds", 5, "Rounds per contender (alternating).")
    cli.define_output_flags()
    flags.adopt_module_key_flags(cli)
    flags.DEFINE_string("work_dir", os.path.join(cli.RESULTS, "tmp-work"),
                        "Exported models and manifest.json (for bench/device.py).")
    flags.DEFINE_bool("prepare_only", False, "Export the models and manifest.json, time nothing "
                      "(the host half of the Raspberry Pi procedure).")


def machine_info(name: str) -> dict:
    import ai_edge_litert
    import keras
    import tensorflow as tf
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    return {"name": name, "cpu": cpu, "cores": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "ai_edge_litert": getattr(ai_edge_litert, "__version__", "?"),
            "taskset": bool(shutil.which("taskset"))}


def measure(models: dict, batches: list[int], threads: list[int], timing: harness.Timing,
            tflite_runtime: str | None, include_tf: bool = True) -> list[dict]:
    """Runs every (model, batch, threads) group; returns the result rows. A stock-recipe
    model that failed to run (Flex) records its error in ``models`` and is not started
    again in later groups."""
    groups = [(n, b, t) for n in models for b in batches for t in threads]
    estimate = sum(len(contenders.group(models[n], b, t, include_tf, tflite_runtime)[0])
                   for n, b, t in groups) * timing.rounds
    results = []
    # a bar on a terminal only: redirected to a file it would write every redraw
    with tqdm(total=estimate, unit="round", desc="timing", disable=not sys.stderr.isatty()) as bar:
        for i, (name, batch, nthreads) in enumerate(groups):
            where = f"{name} b{batch} t{nthreads}"
            if bar.disable:
                logging.info("timing group %d/%d: %s", i + 1, len(groups), where)
            bar.set_postfix_str(f"{where} (setting up)")
            run, skipped = contenders.group(models[name], batch, nthreads, include_tf,
                                            tflite_runtime)

            def progress(c, r, where=where):
                bar.set_postfix_str(f"{where} {c.id}/{c.scheme} round {r + 1}")
                bar.update(1)
            rows = harness.run_group(run, timing, progress) + skipped
            for row in rows:
                row.update(model=name, batch=batch, threads=nthreads)
                if row["id"] == "stock_tflite" and row["status"] == "failed":
                    models[name]["stock"][row["scheme"]]["run_error"] = row["error"]
            results += rows
    return results


def document(mode: str, machine: dict, timing: harness.Timing, batches, threads, models,
             results) -> dict:
    return {"schema": SCHEMA, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "mode": mode, "machine": machine, "timing": dataclasses.asdict(timing),
            "batches": batches, "threads": threads, "models": models, "results": results}


def main(argv):
    del argv
    from bench import prepare
    names = FLAGS.models or [n for n, m in MODELS.items() if m.quick or not FLAGS.quick]
    batches = [int(b) for b in FLAGS.batches]
    threads = [int(t) for t in (FLAGS.threads or (["1"] if FLAGS.quick else ["1", "2"]))]
    timing = (harness.Timing(FLAGS.rounds, warmup=3, round_s=0.3, min_steps=4, max_steps=8)
              if FLAGS.quick else
              harness.Timing(FLAGS.rounds, warmup=5, round_s=1.5, min_steps=5, max_steps=20))
    models = prepare.prepare_all([MODELS[n] for n in names], batches, FLAGS.work_dir,
                                 logging.info)
    contenders.write_manifest(os.path.join(FLAGS.work_dir, "manifest.json"), models, batches)
    if FLAGS.prepare_only:
        logging.info("exported to %s", FLAGS.work_dir)
        return
    results = measure(models, batches, threads, timing, contenders.tflite_runtime_python(REPO))
    doc = document("quick" if FLAGS.quick else "full", machine_info(FLAGS.machine), timing,
                   batches, threads, models, results)
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    stem = os.path.join(FLAGS.out_dir, f"{doc['date'][:10]}-{FLAGS.machine}")
    with open(stem + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    report.write(doc, stem)
    print(f"wrote {stem}.json and {stem}.md")
    print(report.targets_text(doc))


if __name__ == "__main__":
    define_flags()
    app.run(main)
