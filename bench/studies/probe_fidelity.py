"""Does the search's probe rank schemes as the final fine-tuning does? (issue 12, digits task)

``tfpock.search`` scores an option by a brief fine-tuning run (the probe,
:mod:`tfpock.contribution.probe`): ``steps`` SGD steps from the model's weights, averaged
over 3 batch orders, the gain being the validation *loss* drop over training the base (the
head) alone. The study's final fine-tuning runs 20 epochs (360 steps on the digits task's
150 training examples). On the digits task combinations with ``conv2`` options measured 8.7-
15.9 below their additive prediction at 20 steps, so the search never picked them, yet full
fine-tuning ends 2 points above the search's ``conv3:full``
(bench/results/2026-12-07-x86_64-2core-search-kxk-ref.md).

Per seed of ``bench/studies/search_tasks.py``'s digits task (split and head) and per scheme
(every single option, the hand-made ``last:1..4`` and head + biases, conv2 x conv3
combinations), this measures

* the probe's gain for several probe lengths and learning rates, as the validation loss
  drop (the search's metric) and as the validation accuracy gain, each the mean over the
  search's 3 batch orders (with their spread: the noise);
* the final test accuracy after ``--epochs`` epochs on the device runtime (ai-edge-litert,
  one thread, SGD at ``--lr``), as search_tasks.py fine-tunes.

Summary: Spearman's rank correlation between each probe variant's gain and the final
accuracy over the schemes, per seed and on the seed means; and for the conv2+conv3
combinations the probe's measured minus additive gain (does the deficit go with length?).

Measured (bench/results/2026-12-07-x86_64-2core-probe-fidelity.md): it is the length. At
20 steps the head alone is still in its first transient (validation loss 9.38, accuracy
0.253 on 5 classes: ...-search-kxk-ref-images/report.md), each option's gain is how much it
damps that, the gains saturate at the base's excess loss (so combinations add up 1.9 below
their parts) and the best schemes tie within the batch-order noise: full fine-tuning probes
below ``conv3:full`` though it ends 2.3 points above. A probe as long as the fine-tuning (360
steps) ranks the schemes with Spearman 0.99 against the final accuracy (20 steps 0.87,
60-150 steps 0.80-0.81) and picks the best final scheme at all 7 budgets; the loss is the
better score there (the accuracy gain picks a 0.7-1.8 points worse scheme at 3). A lower
rate (0.02) also tracks (0.98 at 150 steps), but the probe is to measure the fine-tuning the
user runs, at its rate. So ``tfpock.search`` keeps the short probe to screen and confirms
finalists with one that long (``core._State.confirm``).

Run from the repository root: ``python -m bench.studies.probe_fidelity``. Writes
``bench/results/<date>-<machine>-probe-fidelity.{json,md}``.
"""
from __future__ import annotations

import datetime
import time

import numpy as np

from bench import cli

BASE = ("head",)
# (steps, learning rate) of the probe variants; 20 at the optimizer's rate is the search's.
VARIANTS = ((20, 0.05), (60, 0.05), (90, 0.05), (150, 0.05), (360, 0.05),
            (20, 0.02), (20, 0.15), (150, 0.02), (150, 0.15))


def schemes(model) -> dict[str, dict]:
    """Label -> choice ({layer: Option}, base = the head) of every scheme measured."""
    from tfpock.contribution import candidates as cand
    opts = {l.name: {o.label: o for o in cand.layer_options(l)}
            for l in cand.candidate_layers(model) if l.name not in BASE}
    out = {"last:1 (base)": {}}
    for layer, by_label in opts.items():
        for label, o in by_label.items():
            out[o.key] = {layer: o}
    out["last:2 (conv3:full)"] = out.pop("conv3:full")
    out["last:3"] = {"conv2": opts["conv2"]["full"], "conv3": opts["conv3"]["full"]}
    out["last:4 (full)"] = {k: v["full"] for k, v in opts.items()}
    out["head+bias"] = {k: v["bias"] for k, v in opts.items()}
    for c2 in ("bias", "1/8", "1/4", "1/2"):
        for c3 in ("1/4", "1/2", "full"):
            out[f"conv2:{c2},conv3:{c3}"] = {"conv2": opts["conv2"][c2],
                                             "conv3": opts["conv3"][c3]}
    out["conv2:full,conv3:1/2"] = {"conv2": opts["conv2"]["full"], "conv3": opts["conv3"]["1/2"]}
    return out


def probe_gains(model, train, val, choices: dict, steps: int, lr: float, seed: int) -> dict:
    """Per scheme: the probe's loss gain and accuracy gain (means over 3 batch orders) and
    the loss gain's spread, as ``tfpock.search`` measures them (its own measuring state)."""
    import keras

    from tfpock.contribution.core import _State
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    state = _State(model, loss, keras.optimizers.SGD(0.05), 8, steps, 3, BASE,
                   train[0], train[1].astype(np.int32), val[0], val[1].astype(np.int32),
                   key=f"probe-fidelity-{seed}-{steps}-{lr}",
                   cache={"measured": {}, "exact": {}}, learning_rate=lr, show=False)
    losses, accs = state._losses({})
    state.cache["base"] = {"val_losses": losses, "val_loss": float(np.mean(losses)),
                           "val_accuracy": float(np.mean(accs))}
    out = {}
    for label, choice in choices.items():
        m = state.measure(choice)
        out[label] = {"loss_gain": m["gain"], "loss_gain_std": m["gain_std"],
                      "accuracy_gain": m["val_accuracy"] - state.cache["base"]["val_accuracy"]}
    return out


def spearman(a, b) -> float:
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic)


def main(argv):
    from absl import flags, logging

    from bench.studies.search_tasks import device_finetune, digits_task
    from tfpock.contribution import candidates as cand
    del argv
    f = flags.FLAGS
    doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": f.machine,
           "uptime_start": cli.uptime(), "seeds": f.seeds, "epochs": f.epochs, "lr": f.lr,
           "variants": [list(v) for v in VARIANTS],
           "command": f"python -m bench.studies.probe_fidelity --seeds {f.seeds} --epochs "
                      f"{f.epochs}", "per_seed": []}
    models: dict = {}
    started = time.perf_counter()
    for seed in range(f.seeds):
        model, train, val, test = digits_task(seed, models)
        choices = schemes(model)
        final, memory = {}, {}
        for label, choice in choices.items():
            r = device_finetune(model, cand.scheme_of(BASE, choice), train, test, f.lr,
                                f.epochs, seed)
            final[label] = r["test_accuracy"]
            memory[label] = r["memory_bytes"]
            logging.info("seed %d %s: final %.3f", seed, label, final[label])
        probes = {}
        for steps, lr in VARIANTS:
            t0 = time.perf_counter()
            probes[f"{steps}@{lr:g}"] = probe_gains(model, train, val, choices, steps, lr, seed)
            logging.info("seed %d probe %d@%g: %.1f s", seed, steps, lr,
                         time.perf_counter() - t0)
        doc["per_seed"].append({"seed": seed, "final": final, "memory": memory,
                                "probes": probes})
    doc["wall_s"] = time.perf_counter() - started
    doc["uptime_end"] = cli.uptime()
    doc["summary"] = summarise(doc)
    cli.write_results(doc, markdown(doc), f.name, f.out_dir)
    return 0


def summarise(doc: dict) -> dict:
    """Spearman (per seed, and of the seed means) of each variant's loss and accuracy gain
    against the final accuracy; the conv2+conv3 additivity deficit; the noise."""
    labels = list(doc["per_seed"][0]["final"])
    out = {}
    for v in doc["per_seed"][0]["probes"]:
        row = {}
        for metric in ("loss_gain", "accuracy_gain"):
            per = [spearman([s["probes"][v][k][metric] for k in labels],
                            [s["final"][k] for k in labels]) for s in doc["per_seed"]]
            mean_gain = [np.mean([s["probes"][v][k][metric] for s in doc["per_seed"]])
                         for k in labels]
            mean_final = [np.mean([s["final"][k] for s in doc["per_seed"]]) for k in labels]
            row[metric] = {"per_seed": per, "of_means": spearman(mean_gain, mean_final)}
        deficits = []
        for s in doc["per_seed"]:
            p = s["probes"][v]
            for k in labels:
                if k.startswith("conv2:") and ",conv3:" in k:
                    c2, c3 = k.split(",")
                    single3 = "last:2 (conv3:full)" if c3 == "conv3:full" else c3
                    deficits.append(p[k]["loss_gain"] - p[c2]["loss_gain"]
                                    - p[single3]["loss_gain"])
        row["conv2_conv3_deficit"] = {"mean": float(np.mean(deficits)),
                                      "min": float(np.min(deficits)),
                                      "max": float(np.max(deficits))}
        row["median_loss_gain_std"] = float(np.median(
            [s["probes"][v][k]["loss_gain_std"] for s in doc["per_seed"] for k in labels]))
        # how far the probe's best-ranked scheme is from the best final accuracy (seed means)
        best = max(labels, key=lambda k: np.mean([s["probes"][v][k]["loss_gain"]
                                                  for s in doc["per_seed"]]))
        row["loss_top"] = best
        row["loss_top_final"] = float(np.mean([s["final"][best] for s in doc["per_seed"]]))
        out[v] = row
    return {"variants": out, "picks": picks(doc)}


# budgets (bytes): fractions of full fine-tuning's memory under today's compiler (138,956) and
# under the one before the per-offset kxk input gradient (244,428), as search_tasks.py sets them
REFERENCES = {"today's full": 138_956, "the old full": 244_428}
FRACTIONS = (0.125, 0.25, 0.5, 0.75)


def picks(doc: dict) -> list[dict]:
    """Per budget and probe variant/metric: the scheme with the best mean probe gain among
    those whose training memory fits, and its mean final accuracy, against the scheme with
    the best mean final accuracy that fits (the oracle among these schemes)."""
    seeds = doc["per_seed"]
    labels = list(seeds[0]["final"])
    final = {k: float(np.mean([s["final"][k] for s in seeds])) for k in labels}
    out = []
    for ref, full in REFERENCES.items():
        for f in FRACTIONS:
            budget = int(full * f)
            fit = [k for k in labels if max(s["memory"][k] for s in seeds) <= budget]
            if not fit:
                continue
            oracle = max(fit, key=lambda k: final[k])
            row = {"reference": ref, "fraction": f, "budget": budget, "oracle": oracle,
                   "oracle_final": final[oracle], "picks": {}}
            for v in seeds[0]["probes"]:
                for metric in ("loss_gain", "accuracy_gain"):
                    pick = max(fit, key=lambda k: np.mean([s["probes"][v][k][metric]
                                                           for s in seeds]))
                    row["picks"][f"{v} {metric}"] = {"scheme": pick, "final": final[pick]}
            out.append(row)
    return out


def markdown(doc: dict) -> str:
    labels = list(doc["per_seed"][0]["final"])
    variants = list(doc["per_seed"][0]["probes"])
    mean = lambda k, fn: np.mean([fn(s) for s in doc["per_seed"]])
    best_final = max(mean(k, lambda s: s["final"][k]) for k in labels)
    lines = [f"# Probe fidelity: the search's probe vs the final fine-tuning, digits task "
             f"({doc['date'][:10]}, {doc['machine']})", "",
             f"Command: `{doc['command']}`. Load: `{doc['uptime_start']}` at the start, "
             f"`{doc['uptime_end']}` at the end (2 shared cores); {doc['wall_s']:.0f} s.", "",
             f"Per seed of bench/studies/search_tasks.py's digits task: {len(labels)} schemes "
             "(head always trained), each fine-tuned "
             f"{doc['epochs']} epochs on ai-edge-litert (SGD lr {doc['lr']}, batch 8; 18 steps "
             "an epoch) for the final test accuracy, and probed (tfpock.search's measuring "
             "state: the gain over the head alone, mean over 3 batch orders) at each probe "
             "length (steps) and learning rate. `20@0.05` is the search's probe today.", "",
             "## Rank agreement with the final accuracy (Spearman)", "",
             "| probe | loss gain: per seed | of seed means | accuracy gain: per seed | "
             "of seed means | conv2+conv3 measured - additive loss gain (mean, min..max) | "
             "median spread of a gain over batch orders | top by loss gain (its final) |",
             "|---|---|---|---|---|---|---|---|"]
    for v in variants:
        r = doc["summary"]["variants"][v]
        d = r["conv2_conv3_deficit"]
        lines.append(
            f"| {v} | {', '.join(f'{x:.2f}' for x in r['loss_gain']['per_seed'])} | "
            f"{r['loss_gain']['of_means']:.2f} | "
            f"{', '.join(f'{x:.2f}' for x in r['accuracy_gain']['per_seed'])} | "
            f"{r['accuracy_gain']['of_means']:.2f} | {d['mean']:+.3f} ({d['min']:+.3f}.."
            f"{d['max']:+.3f}) | {r['median_loss_gain_std']:.3f} | `{r['loss_top']}` "
            f"({100 * r['loss_top_final']:.1f}) |")
    lines += ["", f"Best final accuracy (seed means): {100 * best_final:.1f}.", "",
              "## What each probe would pick under a budget", "",
              "Among these schemes, the one with the best mean probe gain whose training memory "
              "fits (memory: the exported file's, as search_tasks.py measures it), and its mean "
              "final accuracy; the oracle is the fitting scheme with the best final accuracy.",
              "", "| budget | oracle (final) | " + " | ".join(
                  f"{v} {m}" for v in variants for m in ("loss", "acc")) + " |",
              "|---|---|" + "---|" * (2 * len(variants))]
    for p in doc["summary"]["picks"]:
        lines.append(f"| {p['fraction']:g} of {p['reference']} ({p['budget']:,}) | "
                     f"`{p['oracle']}` ({100 * p['oracle_final']:.1f}) | " + " | ".join(
                         f"`{p['picks'][f'{v} {m}']['scheme']}` "
                         f"({100 * p['picks'][f'{v} {m}']['final']:.1f})"
                         for v in variants for m in ("loss_gain", "accuracy_gain")) + " |")
    lines += ["",
              "## Per scheme (means over seeds)", "",
              "| scheme | memory | final test accuracy (per seed) | "
              + " | ".join(f"loss gain {v}" for v in variants) + " |",
              "|---|---|---|" + "---|" * len(variants)]
    for k in sorted(labels, key=lambda k: -mean(k, lambda s: s["final"][k])):
        finals = [s["final"][k] for s in doc["per_seed"]]
        lines.append(f"| `{k}` | {doc['per_seed'][0]['memory'][k]:,} | "
                     f"{100 * np.mean(finals):.1f} ("
                     + ", ".join(f"{100 * x:.1f}" for x in finals) + ") | "
                     + " | ".join(f"{mean(k, lambda s: s['probes'][v][k]['loss_gain']):.3f}"
                                  for v in variants) + " |")
    lines += ["", "Accuracy gains (validation, points, means over seeds):", "",
              "| scheme | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    for k in sorted(labels, key=lambda k: -mean(k, lambda s: s["final"][k])):
        lines.append(f"| `{k}` | " + " | ".join(
            f"{100 * mean(k, lambda s: s['probes'][v][k]['accuracy_gain']):.1f}"
            for v in variants) + " |")
    return "\n".join(lines) + "\n"


def define_flags() -> None:
    from absl import flags
    flags.DEFINE_integer("seeds", 3, "Seeds (splits, head initialisations).")
    flags.DEFINE_integer("epochs", 20, "Final device fine-tuning epochs.")
    flags.DEFINE_float("lr", 0.05, "SGD learning rate of the final fine-tuning.")
    flags.DEFINE_string("name", "probe-fidelity", "Results file name.")
    cli.define_output_flags()
    flags.adopt_module_key_flags(cli)


if __name__ == "__main__":
    from absl import app
    define_flags()
    app.run(main)
