"""A/B of exported training models: the same batches through each, the losses they report and
their step times, in interleaved rounds (so that a machine's changing load falls on every file
alike).

For a change to the compiler, export the same model and scheme at both commits (the ``export``
mode, run once in each commit's checkout), then time the files together:

    git worktree add /tmp/before <commit>
    (cd /tmp/before && python -m bench.studies.ab_steps --export resnet18_half_96:last:4:1 \\
        --export_to /tmp/before.tflite)
    python -m bench.studies.ab_steps --export resnet18_half_96:last:4:1 --export_to after.tflite
    taskset -c 1 python -m bench.studies.ab_steps --name kernel-as-is /tmp/before.tflite \\
        after.tflite

Run the export from inside the worktree: ``python -m`` puts the current directory first on
``sys.path``, ahead of ``PYTHONPATH``, so ``PYTHONPATH=/tmp/before`` from this checkout would
export with this checkout's compiler (both files the same; caught on 12-07 by their op counts).

Writes ``bench/results/<date>-<machine>-ab-<name>.{json,md}``: per file the losses of the
first steps (equal files must agree) and the median over rounds of each round's median step.
"""
from __future__ import annotations

import datetime
import os

import numpy as np
from absl import app, flags, logging

from bench import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line (run as a script only: ``bench/cli.py`` says why)."""
    flags.DEFINE_string("export", None, "MODEL:SCHEME:BATCH of bench.models to export "
                        "(e.g. resnet18_half_96:last:4:1, resnet18_half_96:full:8), BN "
                        "frozen, SGD 0.01.")
    flags.DEFINE_string("export_to", None, "Where --export writes the .tflite.")
    flags.DEFINE_integer("rounds", 11, "Interleaved rounds.")
    flags.DEFINE_integer("steps", 30, "Timed steps per file per round.")
    flags.DEFINE_string("name", "steps", "Result file name: ...-ab-<name>.")
    cli.define_output_flags()
    flags.adopt_module_key_flags(cli)


def export(spec: str, path: str) -> None:
    import keras
    import tfpock
    from bench import models
    parts = spec.split(":")
    name, scheme, batch = parts[0], ":".join(parts[1:-1]), parts[-1]
    builders = {"mobilenet_v2_035_128": models.mobilenet_v2, "resnet18_half_96": models.resnet18}
    if name not in builders:
        raise app.UsageError(f"--export: model {name!r} is not one of {sorted(builders)}")
    program = tfpock.optimize(
        builders[name](), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=keras.optimizers.SGD(0.01), scheme=scheme,
        batch_size=int(batch))
    program.export(path)


def compare(paths: list[str], rounds: int, steps: int) -> list[dict]:
    from tfpock.runtime import Trainer
    trainers = [Trainer(p, num_threads=1) for p in paths]
    meta = trainers[0].metadata
    x = np.random.default_rng(0).random(meta["x"]["shape"], np.float32)
    y = np.zeros(meta["y"]["shape"], meta["y"]["dtype"])
    rows = [{"file": p, "losses": [float(t.train(x, y, learning_rate=1e-3)["loss"])
                                   for _ in range(3)], "round_ms": []}
            for p, t in zip(paths, trainers)]
    for _ in range(rounds):
        for t, row in zip(trainers, rows):
            row["round_ms"].append(cli.median_ms(lambda t=t: t.train(x, y, learning_rate=1e-3),
                                                 steps, warm=3))
    for row in rows:
        row["median_ms"] = float(np.median(row["round_ms"]))
        logging.info("%s: %.3f ms", row["file"], row["median_ms"])
    return rows


def markdown(doc: dict) -> str:
    lines = [f"# A/B {doc['name']}, {doc['date']} ({doc['machine']})", "",
             f"`{doc['command']}`: ai-edge-litert, one thread, CPUs {doc['affinity']}, load "
             f"average {doc['load']} at the start; median over {doc['rounds']} interleaved "
             f"rounds of each round's median of {doc['steps']} steps. See the study's "
             "docstring for how the files were made.", "",
             "| file | losses of 3 steps | median step ms |", "|---|---|---|"]
    for row in doc["files"]:
        losses = ", ".join(f"{v:.6f}" for v in row["losses"])
        lines.append(f"| {os.path.basename(row['file'])} | {losses} | {row['median_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv):
    if FLAGS.export:
        if not FLAGS.export_to:
            raise app.UsageError("--export needs --export_to")
        export(FLAGS.export, FLAGS.export_to)
        return
    paths = argv[1:]
    if len(paths) < 2:
        raise app.UsageError("give two or more .tflite files to compare")
    doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": FLAGS.machine, "name": FLAGS.name, "rounds": FLAGS.rounds,
           "steps": FLAGS.steps, "affinity": sorted(os.sched_getaffinity(0)),
           "load": cli.load_average(),
           "command": "python -m bench.studies.ab_steps --name " + FLAGS.name + " "
                      + " ".join(os.path.basename(p) for p in paths),
           "files": compare(paths, FLAGS.rounds, FLAGS.steps)}
    cli.write_results(doc, markdown(doc), f"ab-{FLAGS.name}", FLAGS.out_dir)


if __name__ == "__main__":
    define_flags()
    app.run(main)
