"""tfpock.search on MobileNetV2 0.35 @96 (issue 12): the whole search in under 15 minutes on
the 2-core machine, with costs predicted from a few compiles (``costs="predicted"``,
tfpock/contribution/estimate.py) instead of 206 compiles; other budgets from the cache.

Task: MobileNetV2 (alpha 0.35, 96x96x3, random init: ImageNet weights are not available
offline) pre-trained on the host (Keras ``fit``, Adam, ``--pretrain_epochs``) on
scikit-learn's digits 0-4, upscaled bilinearly from 8x8 to 96x96 and repeated over 3
channels; its head replaced by a fresh 5-class one and adapted to the disjoint digits 5-9
(150 train, 100 validation, the rest test; the test digits are never seen by the search).

What is measured: the cold search's wall time under whatever load the machine has (``uptime``
at start and end in the report), what it compiled, the predicted vs exact memory and the
predicted vs measured step of the chosen scheme; then other budgets from the cache (wall
time, compiles); then, with ``--epochs`` > 0, the chosen scheme and hand-made ones fine-tuned
on ai-edge-litert (one thread) and their test accuracy.

Run from the repository root: ``python -m bench.studies.search_mobilenet``. Writes
``bench/results/<date>-<machine>-search-mobilenet.{json,md}``.
"""
from __future__ import annotations

import datetime
import os
import time

import numpy as np

from bench import cli
from bench.studies.search_tasks import BATCH, device_finetune

SIZE = 96


def digits_96():
    """sklearn digits upscaled to 96x96x3 in [-1, 1] (MobileNetV2's input range), labels."""
    import tensorflow as tf
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images[..., None] / 8.0 - 1.0).astype(np.float32)
    x = tf.image.resize(x, (SIZE, SIZE), method="bilinear").numpy()
    return np.repeat(x, 3, axis=-1), d.target.astype(np.int32)


def mobilenet_task(seed: int, pretrain_epochs: int, x, y, keep: str | None = None):
    """(pre-trained model with a fresh head, train, val, test, pre-training accuracy);
    ``keep``: a .weights.h5 path where the pre-trained model is kept between runs."""
    import keras
    keras.utils.set_random_seed(0)
    trunk = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35,
                                           include_top=False, weights=None, pooling="avg")
    # Keras' MobileNetV2 keeps BatchNorm moving statistics at momentum 0.999: after a brief
    # pre-training they are still near their initial values, and the frozen BatchNorm a
    # tfpock step runs (moving statistics) would see another network (measured: 20% train
    # accuracy in inference mode, chance, against 96% in training mode). 0.9 lets them settle.
    for layer in trunk.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    low = y < 5
    pre = keras.Model(trunk.input, keras.layers.Dense(5, name="pre_head")(trunk.output))
    pre.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    path = keep and f"{keep}-{pretrain_epochs}-bn09.weights.h5"
    if path and os.path.exists(path):
        pre.load_weights(path)
    else:
        pre.fit(x[low], y[low], epochs=pretrain_epochs, batch_size=32, verbose=0)
        if path:
            pre.save_weights(path)
    # inference mode (moving statistics), as the adapted model's frozen BatchNorm runs
    accuracy = float(pre.evaluate(x[low], y[low], verbose=0)[1])
    keras.utils.set_random_seed(1000 + seed)
    model = keras.Model(trunk.input, keras.layers.Dense(5, name="head")(trunk.output),
                        name="mobilenet_adapted")
    high = np.flatnonzero(y >= 5)
    order = np.random.default_rng(seed).permutation(high)
    tr, va, te = order[:150], order[150:250], order[250:]
    return (model, (x[tr], y[tr] - 5), (x[va], y[va] - 5), (x[te], y[te] - 5),
            accuracy)


def search_row(label: str, result, wall: float) -> dict:
    s = result.summary
    c = s["chosen"]
    return {"label": label, "wall_s": wall, "choice": c["choice"],
            "budget_bytes": s["budget"]["memory_bytes"],
            "from_cache": s["timing"]["analysis_from_cache"],
            "analysis_s": s["timing"]["analysis_s"], "selection_s": s["timing"]["selection_s"],
            "compiles": s["timing"]["compiles"], "probe_runs": s["timing"]["probe_runs"],
            "predicted_gain": c["predicted_gain"], "measured_gain": c["measured_gain"],
            "predicted_memory_bytes": c["predicted_memory_bytes"],
            "exact_memory_bytes": c["exact_memory_bytes"],
            "predicted_step_ms": c["predicted_step_ms"], "measured_step_ms": c["measured_step_ms"],
            "repairs": s["repairs"], "refinement": s["refinement"], "noise": s["noise"],
            "confirmation": s.get("confirmation")}


def main(argv):
    import keras
    from absl import flags, logging

    import tfpock
    from tfpock.contribution import BudgetError
    from tfpock.contribution.cost import exact_cost
    del argv
    f = flags.FLAGS
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    doc = {"schema": "tfpock-search-mobilenet/1",
           "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": f.machine, "uptime_start": cli.uptime(),
           "command": "python -m bench.studies.search_mobilenet " + " ".join(
               f"--{k} {getattr(f, k)}" for k in ("pretrain_epochs", "steps", "seeds",
                                                  "refine", "depth_compiles", "epochs",
                                                  "fractions", "full_memory_bytes",
                                                  "hand_schemes", "cache_dir", "warm_only",
                                                  "refine_cached", "confirm", "confirm_epochs",
                                                  "confirm_cached")
           ).replace("[", "").replace("]", "").replace("', '", ",").replace("'", ""),
           "settings": {k: getattr(f, k) for k in ("pretrain_epochs", "steps", "seeds", "refine",
                                                   "depth_compiles", "lr", "epochs", "confirm",
                                                   "confirm_epochs")}}
    x, y = digits_96()
    start = time.perf_counter()
    model, train, val, test, pre_acc = mobilenet_task(0, f.pretrain_epochs, x, y,
                                                      f.pretrained_keep)
    doc["pretrain"] = {"train_accuracy": pre_acc, "wall_s": time.perf_counter() - start}
    logging.info("pre-trained in %.0f s, train accuracy %.3f", doc["pretrain"]["wall_s"], pre_acc)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    opt = keras.optimizers.SGD(f.lr)
    start = time.perf_counter()
    if f.full_memory_bytes:
        doc["full_memory_bytes"] = f.full_memory_bytes
        doc["full_memory_note"] = "given (--full_memory_bytes: an earlier run's compile)"
    else:
        doc["full_memory_bytes"] = exact_cost(model, tfpock.Scheme.full(), loss, opt,
                                              BATCH).memory_bytes
        doc["full_memory_note"] = f"compiled here in {time.perf_counter() - start:.0f} s"
    logging.info("full fine-tuning: %d bytes", doc["full_memory_bytes"])
    settings = dict(steps=f.steps, seeds=f.seeds, refine=f.refine, costs="predicted",
                    depth_compiles=f.depth_compiles, time_steps=10, cache_dir=f.cache_dir,
                    confirm=f.confirm, confirm_epochs=f.confirm_epochs,
                    confirm_cached=f.confirm_cached)
    doc["searches"] = []
    fractions = [float(v) for v in f.fractions]
    if f.warm_only:
        doc["searches"] = warm_budgets(model, train, val, loss, opt, settings, fractions[1:],
                                       doc["full_memory_bytes"],
                                       [int(v) for v in f.refine_cached])
        doc["uptime_searches_end"] = doc["uptime_end"] = cli.uptime()
        doc["device"] = []
        cli.write_results(doc, markdown(doc), f.name, f.out_dir)
        return 0
    # the first budget is the cold search; each other budget from the cache twice: with
    # exact_checks=0 (no compile: the best known-cost scheme that fits) and with the default
    # exact check (the pick compiled unless known, repaired if over)
    runs = [(fractions[0], 2)] + [(fr, checks) for fr in fractions[1:] for checks in (0, 2)]
    for i, (fraction, checks) in enumerate(runs):
        budget = tfpock.Budget(memory_bytes=int(doc["full_memory_bytes"] * fraction))
        start = time.perf_counter()
        label = f"{fraction:g}" + ("" if i == 0 else f", exact_checks={checks}")
        try:
            result = tfpock.search(model, train, val, loss, opt, budget, BATCH,
                                   exact_checks=checks, **settings)
        except BudgetError as exc:
            doc["searches"].append({"label": label, "wall_s": time.perf_counter() - start,
                                    "error": str(exc)})
            continue
        row = search_row(label, result, time.perf_counter() - start)
        if i == 0:
            if f.cache_dir:   # the cold cache as saved, for --warm_only
                keep_cold_cache(f.cache_dir)
            row["uptime_after"] = cli.uptime()
            row["table"] = result.table
            row["estimate"] = result.summary.get("estimate")
            doc["scheme"] = result.scheme
        doc["searches"].append(row)
        logging.info("search at %s: %s in %.1f s (%d compiles)", label, row["choice"],
                     row["wall_s"], row["compiles"])
    doc["uptime_searches_end"] = cli.uptime()
    doc["device"] = []
    if f.epochs > 0:
        schemes = {"searched@" + fractions[0].__format__("g"): doc.pop("scheme"),
                   **{s: s for s in f.hand_schemes}}
        for label, scheme in schemes.items():
            r = device_finetune(model, scheme, train, test, f.lr, f.epochs, 0)
            doc["device"].append({"scheme": label, **r})
            logging.info("%s: test accuracy %.3f, %d bytes", label, r["test_accuracy"],
                         r["memory_bytes"])
    doc.pop("scheme", None)
    doc["uptime_end"] = cli.uptime()
    cli.write_results(doc, markdown(doc), f.name, f.out_dir)
    return 0


def keep_cold_cache(cache_dir: str) -> None:
    """Copies the search cache files to ``<cache_dir>/cold/`` (what ``--warm_only`` starts
    every budget from)."""
    import shutil
    os.makedirs(os.path.join(cache_dir, "cold"), exist_ok=True)
    for n in os.listdir(cache_dir):
        if n.endswith(".json"):
            shutil.copy(os.path.join(cache_dir, n), os.path.join(cache_dir, "cold", n))


def warm_budgets(model, train, val, loss, opt, settings, fractions, full_bytes,
                 refine_cached) -> list[dict]:
    """Other budgets from a warm cache (``--warm_only``: the cold search ran before with
    ``--cache_dir``): each budget starts from the cold search's cache as saved (the
    process-wide copy is dropped and the file restored before each), so no budget profits
    from another's measurements. A first search, not reported, pays the probe's trace (a new
    process); the rows are then as a second budget in the cold search's process would run,
    with ``exact_checks`` 0 and 2 and each of ``refine_cached``."""
    import tfpock
    from tfpock.contribution import core
    cold = os.path.join(settings["cache_dir"] or "", "cold")
    files = sorted(n for n in os.listdir(cold) if n.endswith(".json")) \
        if os.path.isdir(cold) else []
    if not files:
        raise SystemExit(f"--warm_only: no cold search cache in {cold}; run the cold search "
                         "with --cache_dir first")
    pristine = {}
    for n in files:
        with open(os.path.join(cold, n), "rb") as f:
            pristine[n] = f.read()

    def restore():
        core._MEMORY_CACHE.clear()
        for n, data in pristine.items():
            with open(os.path.join(settings["cache_dir"], n), "wb") as out:
                out.write(data)

    runs = [(None, fractions[0], 0, 1)] + [(True, fr, checks, rc) for rc in refine_cached
                                           for fr in fractions for checks in (0, 2)]
    rows = []
    for report, fraction, checks, rc in runs:
        restore()
        budget = tfpock.Budget(memory_bytes=int(full_bytes * fraction))
        start = time.perf_counter()
        result = tfpock.search(model, train, val, loss, opt, budget, BATCH,
                               exact_checks=checks, refine_cached=rc, **settings)
        if report:
            rows.append(search_row(f"{fraction:g}, exact_checks={checks}, refine_cached={rc}",
                                   result, time.perf_counter() - start))
    restore()
    return rows


def markdown(doc: dict) -> str:
    s = doc["settings"]
    lines = [f"# tfpock.search on MobileNetV2 0.35 @96 ({doc['date'][:10]}, {doc['machine']})",
             "", f"Command: `{doc['command']}`.", "",
             "Task: MobileNetV2 (alpha 0.35, 96x96x3, random init: no ImageNet weights offline) "
             f"pre-trained on the host for {s['pretrain_epochs']} epochs (Keras fit, Adam) on "
             "sklearn digits 0-4 upscaled to 96x96x3, BatchNorm momentum 0.9 (Keras' 0.999 "
             "leaves the moving statistics unsettled after a brief run; train accuracy in "
             "inference mode "
             f"{100 * doc['pretrain']['train_accuracy']:.1f}%, {doc['pretrain']['wall_s']:.0f} s); "
             "fresh 5-class head adapted to digits 5-9 (150 train / 100 val / rest test). "
             f"Probe: {s['steps']} SGD steps (lr {s['lr']}) x {s['seeds']} seeds per candidate; "
             f"refinement {s['refine']} probe evaluations; costs predicted from "
             f"{s['depth_compiles']} exported compiles along the depth and the compiler's variable "
             "layout (tfpock/contribution/estimate.py).", "",
             f"Load: `{doc['uptime_start']}` at the start; `{doc['uptime_searches_end']}` after "
             f"the searches; `{doc['uptime_end']}` at the end (2 shared cores).", "",
             f"Full fine-tuning's training memory: {doc['full_memory_bytes']:,} bytes "
             f"({doc['full_memory_note']}).", "",
             "| budget (fraction of full) | choice | wall s | compiles | probe runs | from cache | "
             "gain pred / meas | memory pred / exact | step ms pred / meas |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in doc["searches"]:
        if "error" in r:
            lines.append(f"| {r['label']} | {r['error']} | {r['wall_s']:.1f} | | | | | | |")
            continue
        repaired = "".join(f" (repaired: `{p['choice']}` compiled to "
                           f"{p['exact_memory_bytes']:,})" for p in r["repairs"])
        lines.append(f"| {r['label']} | `{r['choice']}`{repaired} | {r['wall_s']:.1f} | "
                     f"{r['compiles']} | {r['probe_runs']} | {r['from_cache']} | "
                     f"{r['predicted_gain']:.4f} / "
                     f"{r['measured_gain']:.4f} | {r['predicted_memory_bytes']:,.0f} / "
                     f"{r['exact_memory_bytes']:,} | {r['predicted_step_ms']:.2f} / "
                     f"{r['measured_step_ms']:.2f} |")
    cold = doc["searches"][0]
    if "error" not in cold and "uptime_after" in cold:
        est = cold.get("estimate") or {}
        lines += ["", f"Cold search: {cold['wall_s']:.0f} s ({cold['analysis_s']:.0f} s "
                  f"analysis: {cold['probe_runs']} probe runs and {cold['compiles']} compiles in "
                  f"all, then selection and the exact check); load after it: "
                  f"`{cold['uptime_after']}`. Depth grid (layers compiled and exported): "
                  f"{est.get('grid')}. Noise (gain sd over seeds): median "
                  f"{cold['noise']['median_gain_std']:.4f}, max "
                  f"{cold['noise']['max_gain_std']:.4f}; gains "
                  f"{cold['noise']['gain_range'][0]:.4f} .. {cold['noise']['gain_range'][1]:.4f}."]
    for row in doc["searches"]:
        c = row.get("confirmation")
        if c:
            lines += ["", f"Confirmation at {row['label']} ({c['steps']}-step probe): "
                      + ", ".join(f"`{x['choice']}` {x['gain']:.4f}" for x in c["finalists"])
                      + f"; chosen `{c['choice']}`"
                      + (f" over the short probe's `{c['short_choice']}`." if c["changed"]
                         else " (the short probe's pick).")]
    if doc["device"]:
        lines += ["", f"Fine-tuned on ai-edge-litert (1 thread, SGD lr {s['lr']}, {s['epochs']} "
                  f"epochs, batch {BATCH}):", "",
                  "| scheme | test accuracy | training memory | fraction of full |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {d['scheme']} | {100 * d['test_accuracy']:.1f} | {d['memory_bytes']:,} | "
                  f"{d['memory_bytes'] / doc['full_memory_bytes']:.3f} |" for d in doc["device"]]
    return "\n".join(lines) + "\n"


def define_flags() -> None:
    from absl import flags
    flags.DEFINE_integer("pretrain_epochs", 4, "Host pre-training epochs on digits 0-4.")
    flags.DEFINE_integer("steps", 8, "Probe steps per contribution run.")
    flags.DEFINE_integer("seeds", 2, "Batch orders each contribution is averaged over.")
    flags.DEFINE_integer("refine", 6, "Probe evaluations of the evolutionary refinement.")
    flags.DEFINE_integer("depth_compiles", 5, "Exported compiles along the depth.")
    flags.DEFINE_integer("confirm", 6, "Finalists re-measured by the confirmation probe "
                         "(tfpock.search's confirm; 0: none).")
    flags.DEFINE_float("confirm_epochs", 20.0, "The confirmation probe's length in epochs.")
    flags.DEFINE_integer("confirm_cached", None, "The confirmation's finalists for a budget "
                         "from the cache (default --confirm; 0: none).")
    flags.DEFINE_string("pretrained_keep", None, "Path stem to keep the pre-trained weights "
                        "between runs.")
    flags.DEFINE_float("lr", 0.05, "SGD learning rate (probe and device).")
    flags.DEFINE_integer("epochs", 0, "Device fine-tuning epochs (0: none).")
    flags.DEFINE_integer("full_memory_bytes", None, "Full fine-tuning's training memory, if "
                         "known (it depends on the graph only); else compiled.")
    flags.DEFINE_list("fractions", ["0.25", "0.125", "0.5"],
                      "Budgets as fractions of full fine-tuning's memory; the first is cold.")
    flags.DEFINE_list("hand_schemes", ["last:1"], "Hand-made schemes fine-tuned too.")
    flags.DEFINE_string("cache_dir", None, "Where the search cache is kept (default: this "
                        "process only); with --warm_only, the cold search's cache.")
    flags.DEFINE_bool("warm_only", False, "Only time the budgets after the first from the "
                      "warm cache in --cache_dir (each from the cold cache as saved).")
    flags.DEFINE_string("name", "search-mobilenet", "Results file name.")
    flags.DEFINE_list("refine_cached", ["6", "1"], "With --warm_only: the refinement "
                      "evaluations of a budget from the cache, each timed.")
    cli.define_output_flags()
    flags.adopt_module_key_flags(cli)


if __name__ == "__main__":
    from absl import app
    define_flags()
    app.run(main)
