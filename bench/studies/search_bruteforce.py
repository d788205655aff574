"""A brute-force anchor for tfpock.search on the digits task (issue 12), in the manner of
Samsung ONE's onert-micro training-configure-tool (every layer subset and option under a
peak-memory limit): every combination of the search's options (per layer: not trained,
bias, the first k input channels for k = 1/8, 1/4, 1/2, full; the head always trained)
whose exact compiled training memory fits the budget is fine-tuned on the device runtime for
each seed, and the best mean test accuracy is reported. It says whether "within 1 point of
full fine-tuning at 1/4 of its memory" is reachable at all with this compiler's memory.

Pruning before compiling: the base and every single option are compiled and costed exactly
(:func:`tfpock.contribution.cost.exact_cost`: peak live activations of ``train`` + variable
bytes); a combination whose variable bytes (the compiler's layout,
:func:`tfpock.contribution.cost.layout_variables`, no compile) plus the largest activation
peak of its single options exceed the largest budget is not compiled. That bound assumes
training more layers never lowers the activation peak; the study checks it on every
combination it compiles (``bound_violations`` in the results). The rest are compiled; those
that fit are fine-tuned as bench/studies/search_tasks.py fine-tunes (SGD, ``--epochs``,
batch 8, ai-edge-litert, one thread) on the same splits and seeds.

The best accuracy is chosen on the *test* set: it is an oracle over the budget's schemes, an
upper bound on what any search could pick with this compiler's memory, not a method.

Run from the repository root: ``python -m bench.studies.search_bruteforce``. Writes
``bench/results/<date>-<machine>-search-bruteforce.{json,md}``.
"""
from __future__ import annotations

import datetime
import itertools
import statistics
import time

from bench import cli


def main(argv):
    import keras
    from absl import flags, logging

    import tfpock
    from bench.studies.search_tasks import BATCH, device_finetune, digits_task
    from tfpock.contribution import candidates as cand
    from tfpock.contribution.cost import exact_cost, layout_variables
    from tfpock.runtime.slices import stored_shape
    import numpy as np
    del argv
    f = flags.FLAGS
    doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": f.machine,
           "uptime_start": cli.uptime(), "seeds": f.seeds, "epochs": f.epochs, "lr": f.lr,
           "command": f"python -m bench.studies.search_bruteforce --seeds {f.seeds} --epochs "
                      f"{f.epochs} --fraction {f.fraction}"
                      + (f" --reference_bytes {f.reference_bytes}" if f.reference_bytes else "")}
    cache: dict = {}
    models = [digits_task(seed, cache) for seed in range(f.seeds)]
    model = models[0][0]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    opt = keras.optimizers.SGD(f.lr)
    full = exact_cost(model, tfpock.Scheme.full(), loss, opt, BATCH)
    base = exact_cost(model, tfpock.Scheme(layers={"head": "full"}), loss, opt, BATCH)
    budgets = {"of this compile's full": int(full.memory_bytes * f.fraction)}
    if f.reference_bytes:
        budgets["of the reference"] = int(f.reference_bytes * f.fraction)
    largest = max(budgets.values())
    layers = [l for l in cand.candidate_layers(model) if l.name != "head"]
    choices = [[None] + cand.layer_options(l) for l in layers]
    singles = {}
    for picks in choices:
        for o in picks[1:]:
            singles[o.key] = exact_cost(model, cand.scheme_of(("head",), {o.layer: o}), loss,
                                        opt, BATCH).activation_bytes
    combos, pruned = [], 0
    for picks in itertools.product(*choices):
        choice = {o.layer: o for o in picks if o is not None}
        scheme = cand.scheme_of(("head",), choice)
        variables = sum(int(np.prod(stored_shape(v))) * np.dtype(v["dtype"]).itemsize
                        for v in layout_variables(model, scheme, opt))
        bound = variables + max([base.activation_bytes]
                                + [singles[o.key] for o in choice.values()])
        if bound > largest:
            pruned += 1
            continue
        combos.append((choice, scheme, bound))
    logging.info("%d combinations, %d pruned", len(combos) + pruned, pruned)
    rows, violations = [], []
    start = time.perf_counter()
    for choice, scheme, bound in combos:
        cost = exact_cost(model, scheme, loss, opt, BATCH)
        row = {"choice": cand.choice_key(choice), **cost.to_dict(), "bound_bytes": bound}
        if cost.memory_bytes < bound:
            violations.append(row["choice"])
        if cost.memory_bytes <= largest:
            accs = [device_finetune(m, scheme, train, test, f.lr, f.epochs, seed)["test_accuracy"]
                    for seed, (m, train, _, test) in enumerate(models)]
            row.update(accuracy_mean=statistics.mean(accs), accuracy_std=statistics.pstdev(accs),
                       accuracies=accs)
        rows.append(row)
        logging.info("%s: %d bytes %s", row["choice"], row["memory_bytes"],
                     row.get("accuracy_mean"))
    full_accs = [device_finetune(m, "full", train, test, f.lr, f.epochs, seed)["test_accuracy"]
                 for seed, (m, train, _, test) in enumerate(models)]
    doc.update(full_memory_bytes=full.memory_bytes, base_memory_bytes=base.memory_bytes,
               full_accuracy_mean=statistics.mean(full_accs), full_accuracies=full_accs,
               budgets=budgets, combinations=len(combos) + pruned, pruned=pruned,
               compiled=len(combos), rows=rows, bound_violations=violations,
               wall_s=time.perf_counter() - start,
               uptime_end=cli.uptime())
    doc["best"] = {}
    for label, budget in budgets.items():
        fit = [r for r in rows if r["memory_bytes"] <= budget and "accuracy_mean" in r]
        doc["best"][label] = max(fit, key=lambda r: r["accuracy_mean"], default=None)
    cli.write_results(doc, markdown(doc), f.name, f.out_dir)
    return 0


def markdown(doc: dict) -> str:
    lines = [f"# Brute force over the search's options, digits task ({doc['date'][:10]}, "
             f"{doc['machine']})", "", f"Command: `{doc['command']}`.", "",
             f"Load: `{doc['uptime_start']}` at the start, `{doc['uptime_end']}` at the end "
             f"(2 shared cores). {doc['combinations']} combinations (head always trained), "
             f"{doc['pruned']} pruned by variable bytes + their single options' largest "
             f"activation peak (the bound was above the exact memory for "
             f"{len(doc['bound_violations'])} of the compiled ones: "
             f"{doc['bound_violations'] or 'none'}), {doc['compiled']} compiled; those "
             "fitting the largest budget fine-tuned on "
             f"ai-edge-litert for {doc['seeds']} seeds ({doc['epochs']} epochs, SGD lr "
             f"{doc['lr']}, batch 8, the splits of bench/studies/search_tasks.py); "
             f"{doc['wall_s']:.0f} s. The best is chosen on the test accuracy: an oracle, the "
             "most any search could reach within the budget.", "",
             f"Full fine-tuning: {doc['full_memory_bytes']:,} bytes, test accuracy "
             f"{100 * doc['full_accuracy_mean']:.1f} (mean over seeds); the base (head only) "
             f"{doc['base_memory_bytes']:,} bytes.", "",
             "| budget | bytes | best combination | its memory | accuracy (mean +- sd) | gap to "
             "full |", "|---|---|---|---|---|---|"]
    for label, budget in doc["budgets"].items():
        b = doc["best"][label]
        if b is None:
            lines.append(f"| {label} | {budget:,} | none fits | | | |")
            continue
        lines.append(f"| {label} | {budget:,} | `{b['choice']}` | {b['memory_bytes']:,} | "
                     f"{100 * b['accuracy_mean']:.1f} +- {100 * b['accuracy_std']:.1f} | "
                     f"{100 * (doc['full_accuracy_mean'] - b['accuracy_mean']):.1f} |")
    lines += ["", "Every compiled combination that fits the largest budget, best first:", "",
              "| combination | memory | activations | accuracy |", "|---|---|---|---|"]
    for r in sorted((r for r in doc["rows"] if "accuracy_mean" in r),
                    key=lambda r: -r["accuracy_mean"]):
        lines.append(f"| `{r['choice']}` | {r['memory_bytes']:,} | {r['activation_bytes']:,} | "
                     f"{100 * r['accuracy_mean']:.1f} |")
    return "\n".join(lines) + "\n"


def define_flags() -> None:
    from absl import flags
    flags.DEFINE_integer("seeds", 3, "Seeds (splits, head initialisations, batch orders).")
    flags.DEFINE_integer("epochs", 20, "Device fine-tuning epochs.")
    flags.DEFINE_float("lr", 0.05, "SGD learning rate.")
    flags.DEFINE_float("fraction", 0.25, "The budget as a fraction of full fine-tuning.")
    flags.DEFINE_integer("reference_bytes", None, "Also a budget of fraction x these bytes "
                         "(e.g. full fine-tuning's memory under an earlier compiler).")
    flags.DEFINE_string("name", "search-bruteforce", "Results file name.")
    cli.define_output_flags()
    flags.adopt_module_key_flags(cli)


if __name__ == "__main__":
    from absl import app
    define_flags()
    app.run(main)
