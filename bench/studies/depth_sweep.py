"""Depth sweep (issue 11): what a sparse step costs as the scheme reaches deeper.

For each model, with its BatchNorm layers frozen (``trainable=False``) and as Keras builds
them (trainable: a scheme's frozen BatchNorms then run on their moving statistics, in tfpock
and in the ``tf.function`` contender alike), schemes ``last:1`` .. ``last:N`` (the last N
layers with trainable weights, ``model.layers`` order; with BN trainable those include BN
layers), at each batch size, on one pinned core: tfpock's step on ai-edge-litert and
``tf.function`` + ``GradientTape`` with the same scheme, against Keras ``train_on_batch`` of
the whole model and the constant-weight forward floor. Every contender of a (model, BN,
batch) group runs in its own process, rounds alternating (``bench/harness.py``).

Run from the repository root: ``python -m bench.studies.depth_sweep [--quick]``. Writes
``bench/results/<date>-<machine>-depth.{json,md}`` and ``...-depth.png``.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags, logging  # noqa: E402

from bench import cli, harness  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line (run as a script only: ``bench/cli.py`` says why)."""
    flags.DEFINE_bool("quick", False, "MobileNetV2 only, depths 1-4, batch 1, short rounds.")
    flags.DEFINE_list("models", ["mobilenet_v2_035_128", "resnet18_half_96"],
                      "Models to sweep.")
    flags.DEFINE_list("depths", ["1", "2", "3", "4", "6", "8"], "N of the last:N schemes; "
                      "'full' for full backpropagation (issue 11's stretch, at batch 8).")
    flags.DEFINE_list("batches", ["1", "8"], "Batch sizes.")
    flags.DEFINE_list("bn", ["frozen", "trainable"], "BatchNorm as the user left it.")
    flags.DEFINE_integer("rounds", 3, "Rounds per contender (alternating).")
    flags.DEFINE_string("name", "depth", "Results file name after the date and machine.")
    flags.DEFINE_string("from_json", None, "Re-write an earlier sweep's results (its .json; "
                        "its exported files must still be there) with the work columns "
                        "counted from the files (and the update floor timed, unless "
                        "--noupdate_floor).")
    flags.DEFINE_bool("update_floor", True, "Time each batch-1 scheme's least update cost "
                      "in context (bench/update_floor.py) for the reachability lines.")
    cli.define_output_flags()
    flags.adopt_module_key_flags(cli)
    flags.DEFINE_string("work_dir", os.path.join(cli.RESULTS, "tmp-depth"), "Exported models.")


FULL = 10**6   # the depth that stands for full backpropagation (sorts after every last:N)


def depth_of(scheme: str) -> int:
    return FULL if scheme == "full" else int(scheme.split(":")[1])


# Targets of issue 11 (batch 1, up to the last 4 layers with weights)
TARGET_DEPTH, FLOOR_RATIO, KERAS_SPEEDUP, TF_SPEEDUP = 4, 1.3, 15.0, 4.0


def prepare(name: str, bn: str, batches: list[int], depths: list[int], folder: str) -> dict:
    """Saves the Keras model, exports the floor and tfpock's files; returns the group's
    entry (files, trained parameter counts, how many weights each scheme trains)."""
    import tfpock
    from bench import models, prepare as bench_prepare
    os.makedirs(folder, exist_ok=True)
    spec = models.MODELS[name]
    builder = {"mobilenet_v2_035_128": models.mobilenet_v2,
               "resnet18_half_96": models.resnet18}[name]
    model = builder(freeze_bn=(bn == "frozen"))
    keras_path = os.path.join(folder, "model.keras")
    model.save(keras_path)
    entry = {"keras_file": keras_path, "data": spec.data_spec(), "forward": {}, "schemes": {}}
    for batch in batches:
        path = os.path.join(folder, f"forward-b{batch}.tflite")
        bench_prepare.export_forward(model, batch, path)
        entry["forward"][str(batch)] = path
    for n in depths:
        text = "full" if n == FULL else f"last:{n}"
        paths = tfpock.Scheme.parse(text, model).trained_paths(model)
        row = {"trained_count": len(paths), "files": {}}
        for batch in batches:
            logging.info("%s BN %s: tfpock %s batch %d", name, bn, text, batch)
            path = os.path.join(folder, f"tfpock-{text.replace(':', '')}-b{batch}.tflite")
            figures = bench_prepare.compile_tfpock(model, text, batch, path)
            row["files"][str(batch)] = path
            row["trained_parameters"] = figures["trained_parameters"]
            row["trained_layers"] = figures["trained_layers"]
        entry["schemes"][text] = row
    return entry


def contenders(entry: dict, batch: int) -> list[harness.Contender]:
    base = {"batch": batch, "threads": 1, "data": entry["data"]}
    out = [harness.Contender("keras_full", "full", dict(base, kind="keras",
                                                        model_file=entry["keras_file"],
                                                        trained_layers=None)),
           harness.Contender("forward", "-", dict(base, kind="forward",
                                                  model_file=entry["forward"][str(batch)],
                                                  runtime="ai-edge-litert"))]
    for text, row in entry["schemes"].items():
        out.append(harness.Contender("tfpock", text, dict(
            base, kind="tfpock", model_file=row["files"][str(batch)], runtime="ai-edge-litert")))
        out.append(harness.Contender("tf_function", text, dict(
            base, kind="tf_function", model_file=entry["keras_file"], scheme_text=text,
            trained_count=row["trained_count"])))
    return out


def ratios(rows: list[dict]) -> list[dict]:
    """Per scheme: tfpock's median step, and its ratios to the floor, Keras full and
    tf.function with the same scheme."""
    by = {(r["id"], r["scheme"]): r for r in rows if r["status"] == "ok"}
    floor, keras_full = by.get(("forward", "-")), by.get(("keras_full", "full"))
    out = []
    for (cid, scheme), r in by.items():
        if cid != "tfpock":
            continue
        ms = r["step_ms"]["median"]
        tf_fn = by.get(("tf_function", scheme))
        out.append({
            "scheme": scheme, "depth": depth_of(scheme), "tfpock_ms": ms,
            "tfpock_rss_mb": r["peak_rss_mb"],
            "floor_ms": floor["step_ms"]["median"] if floor else None,
            "keras_full_ms": keras_full["step_ms"]["median"] if keras_full else None,
            "keras_full_rss_mb": keras_full["peak_rss_mb"] if keras_full else None,
            "tf_function_ms": tf_fn["step_ms"]["median"] if tf_fn else None,
            "tf_function_rss_mb": tf_fn["peak_rss_mb"] if tf_fn else None,
            "over_floor": ms / floor["step_ms"]["median"] if floor else None,
            "vs_keras_full": keras_full["step_ms"]["median"] / ms if keras_full else None,
            "vs_tf_function": tf_fn["step_ms"]["median"] / ms if tf_fn else None})
    return sorted(out, key=lambda row: row["depth"])


def add_work(group: dict, forward_file: str) -> None:
    """Adds to each ratio row what its ``train`` signature must do, counted from the file
    (:mod:`tfpock.tflite.work`): its multiply-accumulates over the forward floor's, the
    time the floor would take for them at the floor's own speed (``mac_bound_ms``: what a
    step could reach if every added MAC ran as fast as XNNPACK runs the forward's), and the
    bytes its variable reads and assigns copy. At batch 1 with ``--update_floor``, also
    ``update_ms``: the least its weight updates cost on builtin TFLite, timed in context
    (:mod:`bench.update_floor`; the model.keras beside the forward file)."""
    from bench import update_floor
    from tfpock.tflite import work
    forward = work.count(pathlib.Path(forward_file).read_bytes(), "serving_default")
    keras_file = os.path.join(os.path.dirname(forward_file), "model.keras")
    for r in group["ratios"]:
        content = pathlib.Path(group["schemes"][r["scheme"]]["files"]
                               [str(group["batch"])]).read_bytes()
        step = work.count(content, "train")
        r["macs_over_forward"] = step.macs / forward.macs
        r["mac_bound_ms"] = (r["floor_ms"] * r["macs_over_forward"]
                             if r["floor_ms"] else None)
        r["variable_copy_mb"] = step.variable_copy_bytes / 2**20
        if FLAGS.update_floor and group["batch"] == 1 and r["depth"] <= TARGET_DEPTH:
            r["update_ms"] = update_floor.update_in_context_ms(
                content, keras_file, group["batch"])["update_ms"]
            logging.info("%s %s: update floor %.3f ms", group["model"], r["scheme"],
                         r["update_ms"])


def _f(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def verdicts(row: dict) -> str:
    if row["depth"] > TARGET_DEPTH or None in (row["over_floor"], row["vs_keras_full"],
                                               row["vs_tf_function"]):
        return ""
    checks = [("floor", row["over_floor"] <= FLOOR_RATIO),
              ("Keras", row["vs_keras_full"] >= KERAS_SPEEDUP),
              ("tf.function", row["vs_tf_function"] >= TF_SPEEDUP)]
    return " ".join(f"{name} {'PASS' if ok else 'MISS'}" for name, ok in checks)


def reachability(group: dict) -> list[str]:
    """Lines saying which targets no step can reach: a step runs at least the forward, so a
    speed-up over Keras full (or tf.function) above the floor's own is out of reach, and a
    step cannot beat the floor by more than its MACs allow (``mac_bound_ms``) unless the
    added MACs run faster than the forward's, plus the least its weight updates cost on
    builtin TFLite (``update_ms``, where timed)."""
    if group["batch"] != 1:
        return []
    out = []
    for r in group["ratios"]:
        if r["depth"] > TARGET_DEPTH or None in (r["floor_ms"], r["keras_full_ms"],
                                                 r["tf_function_ms"]):
            continue
        keras_ms, tf_ms = r["keras_full_ms"] / KERAS_SPEEDUP, r["tf_function_ms"] / TF_SPEEDUP
        bound, update = r.get("mac_bound_ms"), r.get("update_ms")
        least = (bound or r["floor_ms"]) + (update or 0.0)
        limits = (("floor", FLOOR_RATIO * r["floor_ms"]), ("Keras", keras_ms),
                  ("tf.function", tf_ms))
        verdict = ", ".join(f"{name} {'reachable' if limit >= least else 'out of reach'}"
                            for name, limit in limits)
        out.append(
            f"* {r['scheme']}: the targets ask for a step of at most "
            f"{limits[0][1]:.2f} ms (floor), {keras_ms:.2f} ms (Keras), {tf_ms:.2f} ms "
            f"(tf.function); the floor is {r['floor_ms']:.2f} ms"
            + (f", the step's MACs at the floor's speed {bound:.2f} ms" if bound else "")
            + (f", plus its least weight update {update:.2f} ms = {least:.2f} ms"
               if update is not None else "")
            + f": {verdict}")
    return [""] + out if out else []


def markdown(doc: dict) -> str:
    lines = [f"# Depth sweep, {doc['date']} ({doc['machine']})", "",
             "One pinned core, ai-edge-litert; median step of all timed steps; ratios as "
             "tfpock over the floor, Keras full and tf.function over tfpock. Targets (batch 1, "
             f"depth <= {TARGET_DEPTH}): <= {FLOOR_RATIO}x the floor, >= {KERAS_SPEEDUP}x "
             f"Keras full, >= {TF_SPEEDUP}x tf.function. Reproduce: `python -m "
             "bench.studies.depth_sweep`. MACs x floor: the train signature's "
             "multiply-accumulates over the forward's (`tfpock.tflite.work`), the floor a "
             "step reaches if its added MACs run at the forward's speed; variable copies: "
             "what its READ_VARIABLE and ASSIGN_VARIABLE copy per step; least weight update "
             "(reachability lines, where timed): `bench/update_floor.py`, the READ, SUB and "
             "ASSIGN an SGD update of the step's written tensors needs, timed after the "
             "forward in one invoke, minus the forward.", ""]
    for group in doc["groups"]:
        lines += [f"## {group['model']}, BN {group['bn']}, batch {group['batch']}", "",
                  "| scheme | trained params | tfpock ms | floor ms | x floor | Keras full ms | "
                  "vs Keras | tf.function ms | vs tf.function | RSS tfpock / Keras MB | "
                  "MACs x floor | variable copies MB | targets |", "|" + "---|" * 13]
        params = {s: row["trained_parameters"] for s, row in group["schemes"].items()}
        for r in group["ratios"]:
            lines.append(" | ".join([
                f"| {r['scheme']}", f"{params[r['scheme']]:,}", _f(r["tfpock_ms"], ".2f"),
                _f(r["floor_ms"], ".2f"), _f(r["over_floor"], ".2f"),
                _f(r["keras_full_ms"], ".1f"), _f(r["vs_keras_full"], ".1f", "x"),
                _f(r["tf_function_ms"], ".2f"), _f(r["vs_tf_function"], ".1f", "x"),
                f"{_f(r['tfpock_rss_mb'], '.0f')} / {_f(r['keras_full_rss_mb'], '.0f')}",
                _f(r.get("macs_over_forward"), ".2f"), _f(r.get("variable_copy_mb"), ".2f"),
                verdicts(r) if group["batch"] == 1 else ""]) + " |")
        lines += reachability(group)
        failed = [f"{r['id']} {r['scheme']}: {r['error'][:200]}" for r in group["rows"]
                  if r["status"] != "ok"]
        lines += [""] + [f"* failed: {f}" for f in failed] + ([""] if failed else [])
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    batches = sorted({g["batch"] for g in doc["groups"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for g in (g for g in doc["groups"] if g["batch"] == batch):
            points = [(r["depth"], r["over_floor"]) for r in g["ratios"]
                      if r["over_floor"] and r["depth"] != FULL]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                    linestyle="-" if g["bn"] == "frozen" else "--",
                    label=f"{g['model']}, BN {g['bn']}")
        ax.axhline(FLOOR_RATIO, color="grey", linewidth=0.8, linestyle=":")
        ax.set(title=f"batch {batch}: tfpock step / constant-weight forward",
               xlabel="last:N (layers with weights trained)", ylabel="x forward floor")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rewrite_with_work(path: str) -> None:
    """``--from_json``: an earlier sweep's document with the work columns, under --name."""
    import json
    with open(path) as f:
        doc = json.load(f)
    for group in doc["groups"]:
        forward = os.path.join(os.path.dirname(next(iter(group["schemes"].values()))
                                               ["files"][str(group["batch"])]),
                               f"forward-b{group['batch']}.tflite")
        add_work(group, forward)
    doc["work_from"] = path
    stem = cli.write_results(doc, markdown(doc), FLAGS.name, FLAGS.out_dir)
    plot(doc, stem + ".png")


def main(argv):
    del argv
    if FLAGS.from_json:
        return rewrite_with_work(FLAGS.from_json)
    names = ["mobilenet_v2_035_128"] if FLAGS.quick else FLAGS.models
    depths = [1, 2, 3, 4] if FLAGS.quick else [FULL if d == "full" else int(d)
                                               for d in FLAGS.depths]
    batches = [1] if FLAGS.quick else [int(b) for b in FLAGS.batches]
    timing = harness.Timing(FLAGS.rounds, warmup=3, round_s=0.3 if FLAGS.quick else 0.8,
                            min_steps=5, max_steps=20)
    groups = []
    for name in names:
        for bn in FLAGS.bn:
            entry = prepare(name, bn, batches, depths,
                            os.path.join(FLAGS.work_dir, f"{name}-bn_{bn}"))
            for batch in batches:
                logging.info("timing %s BN %s batch %d", name, bn, batch)
                rows = harness.run_group(contenders(entry, batch), timing)
                group = {"model": name, "bn": bn, "batch": batch, "rows": rows,
                         "schemes": entry["schemes"], "ratios": ratios(rows)}
                add_work(group, entry["forward"][str(batch)])
                groups.append(group)
    doc = {"schema": "tfpock-depth/1",
           "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": FLAGS.machine, "mode": "quick" if FLAGS.quick else "full",
           "timing": dataclasses.asdict(timing),
           "groups": groups}
    stem = cli.write_results(doc, markdown(doc), FLAGS.name, FLAGS.out_dir)
    plot(doc, stem + ".png")


if __name__ == "__main__":
    define_flags()
    app.run(main)
