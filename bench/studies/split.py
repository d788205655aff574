"""Split partial-channel kernels (graph_passes/split.py): step time, variables and peak, before
and after.

Two checkouts export the same schemes (run the ``export`` mode with each one's code on
``PYTHONPATH``; the script itself only uses APIs both have), then the ``compare`` mode times
the files in interleaved rounds (``bench/studies/ab_steps.py``'s loop: ai-edge-litert, one
thread) and reads from each file its variable bytes (the shapes its initialiser assigns) and
``memory.timeline(file, "train").peak_bytes``:

    git -C /work/main archive <before commit> | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before python bench/studies/split.py --export_dir /tmp/split-before
    python bench/studies/split.py --export_dir /tmp/split-after
    taskset -c 1 python -m bench.studies.split --before /tmp/split-before \\
        --after /tmp/split-after

Models: MobileNetV2 0.35 @128 (``bench.models``, BN frozen), batch 1, SGD 0.01: the last 4
layers with weights (``block_16_depthwise``, ``block_16_project``, ``Conv_1``,
``predictions``) each at ``weight_fraction`` 0.25 and 0.5 (bias where the layer has one),
and the same four trained fully, for scale; ResNet-18-style @96 (``bench.models.resnet18``,
BatchNorms left trainable) with the ``bias`` scheme: the BatchNorms' betas train, so its
frozen 3x3 stride-1 convolutions all have input gradients with constant kernels (one
convolution each since this change). The digits CNN of
``bench/studies/search_tasks.py`` (seed 0, batch 8): the search's base (the head) plus
``conv2`` and/or ``conv3`` at 1/4, the training memory the search counts (peak live
activations + variable bytes) against the 1/4 budget of that study's last run.
"""
from __future__ import annotations

import collections
import datetime
import json
import os

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS

MOBILENET_LAST4 = ("block_16_depthwise", "block_16_project", "Conv_1", "predictions")
FRACTIONS = (0.25, 0.5)
DIGITS_OPTIONS = {"conv2:1/4": ("conv2",), "conv3:1/4": ("conv3",),
                  "conv2:1/4,conv3:1/4": ("conv2", "conv3")}
DIGITS_BATCH = 8
# full fine-tuning's training memory / 4 in bench/results/2026-12-03-x86_64-2core-search.md
DIGITS_QUARTER_BUDGET = 61_107


def define_flags() -> None:
    """The command line (run as a script only: ``bench/cli.py`` says why)."""
    flags.DEFINE_string("export_dir", None, "Export mode: write the files and their "
                        "digits costs here, with the code on PYTHONPATH.")
    flags.DEFINE_string("before", None, "Compare mode: the export_dir of the old code.")
    flags.DEFINE_string("after", None, "Compare mode: the export_dir of the new code.")
    flags.DEFINE_integer("rounds", 11, "Interleaved rounds.")
    flags.DEFINE_integer("steps", 30, "Timed steps per file per round.")
    flags.DEFINE_string("name", "split", "Result file name: ...-<name>.")
    from bench import cli
    cli.define_output_flags()
    flags.adopt_module_key_flags(cli)


def mobilenet_schemes() -> dict[str, dict]:
    out = {f"last4-f{f:g}": {"default": "frozen", "layers": {
        name: {"weight_fraction": f, "bias": True} for name in MOBILENET_LAST4}}
        for f in FRACTIONS}
    out["last4-full"] = {"default": "frozen", "layers": {n: "full" for n in MOBILENET_LAST4}}
    return out


def file_figures(content: bytes) -> dict:
    """Variable bytes (float32 shapes the initialiser assigns) and the train peak."""
    from tfpock.tflite import memory, model_file
    parsed = model_file.read(content)
    peak = memory.timeline(parsed, "train").peak_op
    return {"variable_bytes": int(sum(4 * int(np.prod(s)) for s in parsed.variables())),
            "variable_shapes": [list(s) for s in parsed.variables()],
            "peak_bytes": int(peak.live_bytes), "peak_op": f"{peak.op} (op {peak.index})",
            "train_ops": dict(sorted(collections.Counter(
                op.name for op in parsed.subgraph("train").operators).items()))}


def export(out_dir: str) -> None:
    import keras

    import tfpock
    from bench import models
    from bench.studies.search_tasks import digits_task
    os.makedirs(out_dir, exist_ok=True)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    figures = {}
    for name, scheme in mobilenet_schemes().items():
        path = os.path.join(out_dir, f"{name}.tflite")
        if os.path.exists(path):   # exported by an interrupted run of the same code
            with open(path, "rb") as f:
                content = f.read()
        else:
            program = tfpock.optimize(models.mobilenet_v2(), loss=loss,
                                      optimizer=keras.optimizers.SGD(0.01), scheme=scheme,
                                      batch_size=1)
            content = program.to_tflite()
            with open(path, "wb") as f:
                f.write(content)
        figures[name] = file_figures(content)
        logging.info("%s: %s", name, figures[name])
    path = os.path.join(out_dir, "resnet18-bnbias.tflite")
    if not os.path.exists(path):
        program = tfpock.optimize(models.resnet18(freeze_bn=False), loss=loss,
                                  optimizer=keras.optimizers.SGD(0.01), scheme="bias",
                                  batch_size=1)
        with open(path, "wb") as f:
            f.write(program.to_tflite())
    with open(path, "rb") as f:
        figures["resnet18-bnbias"] = file_figures(f.read())
    model = digits_task(0, {})[0]
    for name, layers in DIGITS_OPTIONS.items():
        scheme = {"default": "frozen", "layers": {
            "head": "full", **{n: {"weight_fraction": 0.25, "bias": True} for n in layers}}}
        program = tfpock.optimize(model, loss=loss, optimizer=keras.optimizers.SGD(0.05),
                                  scheme=scheme, batch_size=DIGITS_BATCH)
        content = program.to_tflite()
        stem = name.replace(",", "+").replace(":", "-").replace("/", "of")
        with open(os.path.join(out_dir, f"digits-{stem}.tflite"), "wb") as f:
            f.write(content)
        figures[f"digits {name}"] = file_figures(content)
        logging.info("digits %s: %s", name, figures[f"digits {name}"])
    with open(os.path.join(out_dir, "figures.json"), "w") as f:
        json.dump(figures, f, indent=1)


def compare(before: str, after: str, rounds: int, steps: int) -> dict:
    from bench.studies.ab_steps import compare as ab
    figures = {side: json.load(open(os.path.join(d, "figures.json")))
               for side, d in (("before", before), ("after", after))}
    timed = {}
    for group in (list(mobilenet_schemes()), ["resnet18-bnbias"]):   # one input shape each
        paths = [os.path.join(d, f"{name}.tflite") for name in group for d in (before, after)]
        timed.update({row["file"]: row for row in ab(paths, rounds, steps)})
    rows = []
    for name in figures["after"]:
        row = {"scheme": name, **{f"{side}_{k}": figures[side][name][k]
                                  for side in ("before", "after")
                                  for k in ("variable_bytes", "peak_bytes", "peak_op")}}
        for side, d in (("before", before), ("after", after)):
            t = timed.get(os.path.join(d, f"{name}.tflite"))
            if t is not None:
                row[f"{side}_ms"], row[f"{side}_losses"] = t["median_ms"], t["losses"]
        rows.append(row)
    return {"rows": rows, "figures": figures}


def markdown(doc: dict) -> str:
    lines = [f"# Split partial-channel kernels, {doc['date']} ({doc['machine']})", "",
             f"`{doc['command']}`; ai-edge-litert, one thread, CPUs {doc['affinity']}, load "
             f"average {doc['load']} at the start and {doc['load_end']} at the end (2 cores "
             "shared with other jobs); step time: median over "
             f"{doc['rounds']} interleaved rounds of each round's median of {doc['steps']} "
             "steps. before = main at f972bdd (no graph_passes/split.py, a frozen kxk input "
             "gradient as patches + matmul), after = this branch. The last4-full files are "
             "identical on both sides (nothing to split): their ratio is the noise. See "
             "bench/studies/split.py's docstring.", "",
             "## MobileNetV2 0.35 @128, BN frozen, batch 1, SGD: the last 4 layers with weights "
             "(and ResNet-18-style @96, BN trainable, batch 1, the bias scheme)",
             "", "| scheme | step ms before | after | after/before | variable bytes before | "
             "after | train peak bytes before | after | losses equal |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        if "before_ms" not in r:
            continue
        same = np.allclose(r["before_losses"], r["after_losses"], rtol=1e-5)
        lines.append(f"| {r['scheme']} | {r['before_ms']:.3f} | {r['after_ms']:.3f} | "
                     f"{r['after_ms'] / r['before_ms']:.2f} | {r['before_variable_bytes']:,} | "
                     f"{r['after_variable_bytes']:,} | {r['before_peak_bytes']:,} | "
                     f"{r['after_peak_bytes']:,} | {same} |")
    lines += ["", f"## Digits CNN (search_tasks, seed 0, batch {DIGITS_BATCH}): the search's "
              f"training memory of its base (head) plus options at 1/4, against the 1/4 "
              f"budget {DIGITS_QUARTER_BUDGET:,}", "",
              "| option | peak + variables before | after | variables before | after | "
              "peak at before | after | fits the 1/4 budget after |",
              "|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        if not r["scheme"].startswith("digits"):
            continue
        before = r["before_peak_bytes"] + r["before_variable_bytes"]
        after = r["after_peak_bytes"] + r["after_variable_bytes"]
        lines.append(f"| {r['scheme'][7:]} | {before:,} | {after:,} | "
                     f"{r['before_variable_bytes']:,} | {r['after_variable_bytes']:,} | "
                     f"{r['before_peak_op']} | {r['after_peak_op']} | "
                     f"{after <= DIGITS_QUARTER_BUDGET} |")
    return "\n".join(lines) + "\n"


def main(argv):
    from bench import cli
    if FLAGS.export_dir:
        export(FLAGS.export_dir)
        return
    if not (FLAGS.before and FLAGS.after):
        raise app.UsageError("give --export_dir, or --before and --after")
    doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": FLAGS.machine, "rounds": FLAGS.rounds, "steps": FLAGS.steps,
           "affinity": sorted(os.sched_getaffinity(0)),
           "load": cli.load_average(),
           "command": f"taskset -c 1 python -m bench.studies.split --before {FLAGS.before} "
                      f"--after {FLAGS.after} --rounds {FLAGS.rounds} --steps {FLAGS.steps} "
                      f"--name {FLAGS.name}"}
    doc.update(compare(FLAGS.before, FLAGS.after, FLAGS.rounds, FLAGS.steps))
    doc["load_end"] = cli.load_average()
    cli.write_results(doc, markdown(doc), FLAGS.name, FLAGS.out_dir)


if __name__ == "__main__":
    define_flags()
    app.run(main)
