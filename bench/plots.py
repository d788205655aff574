"""PNG plots of a result JSON (matplotlib, the ``bench`` extra): latency per step per model,
peak RSS of every contender. Log scales: the contenders differ by orders of magnitude."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SHORT = {"keras_full": "1 Keras full", "keras_frozen": "2 Keras frozen",
         "tf_function": "3 tf.function", "stock_tflite": "4 stock TFLite",
         "tfpock_litert": "5 tfpock litert", "tfpock_tflite_runtime": "5 tfpock tflite-rt",
         "tfpock_infer": "6' tfpock infer", "forward": "6 forward floor"}


def _rows(doc, model, batch, threads):
    return [r for r in doc["results"] if (r["model"], r["batch"], r["threads"]) == (
        model, batch, threads) and r["status"] == "ok"]


def _label(r):
    return SHORT[r["id"]] + ("" if r["scheme"] == "-" else f"\n{r['scheme']}")


def latency(doc, model: str, path: str) -> None:
    """One panel per batch size; a bar per contender and scheme, one per thread count, with
    the interquartile range as the error bar."""
    batches, threads = doc["batches"], doc["threads"]
    fig, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 4.8), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        keys = []
        for t in threads:
            for r in _rows(doc, model, batch, t):
                if (r["id"], r["scheme"]) not in keys:
                    keys.append((r["id"], r["scheme"]))
        width = 0.8 / len(threads)
        for k, t in enumerate(threads):
            rows = {(r["id"], r["scheme"]): r for r in _rows(doc, model, batch, t)}
            xs, med, lo, hi = [], [], [], []
            for i, key in enumerate(keys):
                if key in rows:
                    s = rows[key]["step_ms"]
                    xs.append(i + (k - (len(threads) - 1) / 2) * width)
                    med.append(s["median"])
                    lo.append(s["median"] - s["q1"])
                    hi.append(s["q3"] - s["median"])
            ax.bar(xs, med, width, yerr=[lo, hi], capsize=2, label=f"{t} thread(s)")
            for x, m in zip(xs, med):
                ax.annotate(f"{m:.3g}", (x, m), ha="center", va="bottom", fontsize=7)
        _style(ax, keys, "ms per step (median, IQR)", f"{model}, batch {batch}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _style(ax, keys, ylabel: str, title: str) -> None:
    """The axes both plots share: one tick per (contender, scheme), log scale, grid."""
    ax.set_xticks(np.arange(len(keys)))
    ax.set_xticklabels([_label({"id": i, "scheme": s}) for i, s in keys], rotation=45,
                       ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)


def memory(doc, path: str) -> None:
    """Peak RSS per contender and model at the largest batch, one thread."""
    batch, threads = max(doc["batches"]), min(doc["threads"])
    models = list(doc["models"])
    keys = []
    for m in models:
        for r in _rows(doc, m, batch, threads):
            if (r["id"], r["scheme"]) not in keys:
                keys.append((r["id"], r["scheme"]))
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(keys) * len(models) ** 0.5), 4.8))
    width = 0.8 / len(models)
    for k, m in enumerate(models):
        rows = {(r["id"], r["scheme"]): r for r in _rows(doc, m, batch, threads)}
        xs = [i + (k - (len(models) - 1) / 2) * width for i, key in enumerate(keys)
              if key in rows]
        ys = [rows[key]["peak_rss_mb"] for key in keys if key in rows]
        ax.bar(xs, ys, width, label=m)
    _style(ax, keys, "peak RSS of the process, MB",
           f"Peak memory, batch {batch}, {threads} thread(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
