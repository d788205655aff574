"""The Markdown report and PNG plots of a benchmark result JSON; also issue 5's targets.

``python bench/report.py bench/results/<file>.json`` rewrites the report of a result file.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402

from bench.contenders import LABELS  # noqa: E402

TARGET_MODEL = "mobilenet_v2_035_128"
ORDER = [("keras_full", "full"), ("keras_frozen", "last"), ("tf_function", "last"),
         ("tf_function", "full"), ("stock_tflite", "last"), ("stock_tflite", "full"),
         ("tfpock_litert", "last"), ("tfpock_litert", "full"), ("tfpock_tflite_runtime", "last"),
         ("tfpock_tflite_runtime", "full"), ("tfpock_infer", "last"), ("forward", "-")]


def _find(doc, model, cid, scheme, batch, threads):
    for r in doc["results"]:
        if (r["model"], r["id"], r["scheme"], r["batch"], r["threads"]) == (
                model, cid, scheme, batch, threads):
            return r
    return None


def _median(doc, *key):
    r = _find(doc, *key)
    return r["step_ms"]["median"] if r and r["status"] == "ok" else None


def _rss(doc, *key):
    r = _find(doc, *key)
    return r["peak_rss_mb"] if r and r["status"] == "ok" else None


def _ratio(a, b):
    return a / b if a is not None and b is not None and b > 0 else None


def targets(doc) -> list[dict]:
    """Issue 5's targets on MobileNetV2 0.35 @128, one thread; ``value`` is the measured
    ratio, ``target`` the bound, ``pass`` None if not measured."""
    m, out = TARGET_MODEL, []

    def add(name, value, target, higher_is_better, detail):
        ok = None if value is None else (value >= target if higher_is_better else
                                         value <= target)
        out.append({"target": name, "value": value, "bound": target, "pass": ok,
                    "higher_is_better": higher_is_better, "detail": detail})

    tp = lambda b: _median(doc, m, "tfpock_litert", "last", b, 1)  # noqa: E731
    add("tfpock last vs 1. Keras full, batch 1 (speed-up)",
        _ratio(_median(doc, m, "keras_full", "full", 1, 1), tp(1)), 15, True,
        f"{_fmt(_median(doc, m, 'keras_full', 'full', 1, 1))} vs {_fmt(tp(1))} ms")
    for b in (1, 8):
        tf_ms = _median(doc, m, "tf_function", "last", b, 1)
        add(f"tfpock last vs 3. tf.function last, batch {b} (speed-up)", _ratio(tf_ms, tp(b)),
            4, True, f"{_fmt(tf_ms)} vs {_fmt(tp(b))} ms")
    for b in (1, 8):
        floor = _median(doc, m, "forward", "-", b, 1)
        add(f"tfpock last / 6. forward floor, batch {b} (slow-down)", _ratio(tp(b), floor),
            1.25, False, f"{_fmt(tp(b))} vs {_fmt(floor)} ms")
    for b in (1, 8):
        k, t = _rss(doc, m, "keras_full", "full", b, 1), _rss(doc, m, "tfpock_litert", "last",
                                                             b, 1)
        add(f"peak RSS 1. Keras full / tfpock last, batch {b}", _ratio(k, t), 10, True,
            f"{_fmt(k, 0)} vs {_fmt(t, 0)} MB")
    return out


def _fmt(v, digits=2):
    if v is None:
        return "n/a"
    return f"{v:.{digits}f}" if v < 100 else f"{v:.0f}"


def _verdict(t) -> str:
    if t["pass"] is None:
        return "not measured"
    if t["pass"]:
        return f"PASS (measured/bound {t['value'] / t['bound']:.2f})"
    missing = t["bound"] / t["value"] if t["higher_is_better"] else t["value"] / t["bound"]
    return f"MISS (a further {missing:.2f}x needed)"


def targets_text(doc) -> str:
    lines = [f"Targets (issue 5: {TARGET_MODEL}, 1 thread):"]
    for t in targets(doc):
        op = ">=" if t["higher_is_better"] else "<="
        lines.append(f"  {t['target']}: {_fmt(t['value'])}x (target {op} {t['bound']}x; "
                     f"{t['detail']}) {_verdict(t)}")
    return "\n".join(lines)


def _cell(r) -> str:
    if r is None:
        return ""
    if r["status"] != "ok":
        return r["status"]
    s = r["step_ms"]
    return f"{_fmt(s['median'])} [{_fmt(s['q1'])}-{_fmt(s['q3'])}]"


def _model_section(doc, name, entry, stem) -> list[str]:
    configs = [(b, t) for b in doc["batches"] for t in doc["threads"]]
    lines = [f"## {name}", "", f"{entry['description']}; {entry['parameters']:,} parameters. "
             f"Sparse scheme `{entry['schemes']['last']['scheme']}`: "
             f"{', '.join(entry['schemes']['last']['trained_layers'])} "
             "(the last layers with trainable weights; frozen BatchNorm layers have none).",
             "",
             "Milliseconds per step, median [interquartile range] over all timed steps:", "",
             "| contender | scheme | " + " | ".join(f"b{b} t{t}" for b, t in configs) + " |",
             "|---|---|" + "---|" * len(configs)]
    for cid, scheme in ORDER:
        cells = [_find(doc, name, cid, scheme, b, t) for b, t in configs]
        if any(cells):
            lines.append(f"| {LABELS[cid]} | {scheme} | " + " | ".join(_cell(c) for c in cells)
                         + " |")
    lines += ["", "Peak RSS of each contender's process (MB, `VmHWM` after its rounds; `ru_maxrss` "
              "is in the JSON but carries the forking parent's high-water mark):", "",
              "| contender | scheme | " + " | ".join(f"b{b} t{t}" for b, t in configs) + " |",
              "|---|---|" + "---|" * len(configs)]
    for cid, scheme in ORDER:
        cells = [_find(doc, name, cid, scheme, b, t) for b, t in configs]
        if any(c and c["status"] == "ok" for c in cells):
            lines.append(f"| {LABELS[cid]} | {scheme} | " + " | ".join(
                _fmt(c["peak_rss_mb"], 0) if c and c["status"] == "ok" else "" for c in cells)
                + " |")
    lines += ["", f"![latency]({os.path.basename(stem)}-{name}-latency.png)", "",
              "tfpock compile (host, TF): time, file, graph ops of the train signature "
              "(traced -> final) and gradient ops the prune pass removed:", "",
              "| scheme | batch | compile s | export s | file KB | ops | gradient ops removed "
              "| trained parameters |", "|---|---|---|---|---|---|---|---|"]
    for scheme, per_batch in entry["tfpock"].items():
        for b, t in per_batch.items():
            lines.append(f"| {entry['schemes'][scheme]['scheme']} | {b} | {t['compile_s']:.1f} "
                         f"| {t['export_s']:.1f} | {t['file_bytes'] / 1024:.0f} | "
                         f"{t['train_ops_traced']} -> {t['train_ops_final']} | "
                         f"{t['gradient_ops_removed']} | {t['trained_parameters']:,} |")
    lines += ["", "Stock TFLite recipe (tf.Module + converter):", ""]
    for scheme, s in entry["stock"].items():
        text = entry["schemes"][scheme]["scheme"]
        if s["builtins_only"]:
            lines.append(f"- `{text}`: converts with builtins only; timed above.")
            continue
        ops = ", ".join(s["flex_ops"]) or "(no op list in the error)"
        run = s.get("run_error", "not run").replace("\n", " ")[:240]
        lines.append(f"- `{text}`: builtins only refused; needs Flex for **{ops}**. "
                     f"With SELECT_TF_OPS it converts, then ai-edge-litert: `{run}`; "
                     f"TF's tf.lite.Interpreter: `{s.get('tf_lite_interpreter', 'not run')[:200]}`."
                     + (f" {s['error']}" if s["error"] else ""))
    return lines + [""]


def write(doc, stem: str) -> None:
    """Writes ``<stem>.md`` and its PNGs."""
    from bench import plots
    m = doc["machine"]
    lines = [f"# tfpock benchmark, {doc['date'][:10]}, {m['name']} ({doc['mode']} run)", "",
             f"{m['cpu']}, {m['cores']} cores, {m['platform']}; Python {m['python']}, "
             f"TF {m['tensorflow']}, Keras {m['keras']}, ai-edge-litert {m['ai_edge_litert']}.",
             "", "Each contender runs in its own process; all contenders of a (model, batch, "
             "threads) group are set up together (unpinned), then pinned with taskset (1 "
             "thread: core 0; 2 threads: cores 0,1, all their threads), then "
             f"{doc['timing']['rounds']} rounds alternate between them (order rotated per "
             f"round), {doc['timing']['warmup']} warm-up steps, "
             f"{doc['timing']['min_steps']}-{doc['timing']['max_steps']} steps per round "
             f"(about {doc['timing']['round_s']} s). SGD, sparse categorical cross-entropy, "
             "random inputs. A shared machine: read spreads, not only medians.", "",
             "## Targets (issue 5)", "", "| target | measured | bound | detail | verdict |",
             "|---|---|---|---|---|"]
    for t in targets(doc):
        op = ">=" if t["higher_is_better"] else "<="
        lines.append(f"| {t['target']} | {_fmt(t['value'])}x | {op} {t['bound']}x | "
                     f"{t['detail']} | {_verdict(t)} |")
    lines += ["", f"![peak memory]({os.path.basename(stem)}-memory.png)", ""]
    for name, entry in doc["models"].items():
        lines += _model_section(doc, name, entry, stem)
        plots.latency(doc, name, f"{stem}-{name}-latency.png")
    plots.memory(doc, f"{stem}-memory.png")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines))


def main(argv) -> None:
    if len(argv) != 2 or not argv[1].endswith(".json"):
        raise app.UsageError("usage: python bench/report.py bench/results/<file>.json")
    with open(argv[1]) as f:
        document = json.load(f)
    write(document, argv[1][:-len(".json")])
    print(targets_text(document))


if __name__ == "__main__":
    app.run(main)
