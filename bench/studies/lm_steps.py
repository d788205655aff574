"""Language-model training steps (issue 13's benchmark): tokens per second and peak RSS of a
step of KerasHub's Llama (``bench/lm.py``: about 15M parameters) for tfpock on ai-edge-litert
(schemes full, LoRA r=8, last 2 blocks, norms), TF ``tf.function`` + GradientTape with the same
scheme, and Keras ``train_on_batch`` of every weight; one thread, sequence 64 and 256, batch 1
and 4. With ``--kv``: the cost of generation with the full-window ``infer`` (what a
key/value-cache signature would save).

Method (``bench/harness.py``): every contender in its own process, pinned to one core after
its set-up, the contenders of a (sequence, batch) group run one at a time in rounds whose
order rotates, so the load of this shared machine falls on all alike; ratios are of medians
over all timed steps. The tfpock files are exported first (cached in ``--cache_dir``).

    python -m bench.studies.lm_steps                 # the steps (lm-steps results)
    python -m bench.studies.lm_steps --kv            # infer per token vs window (lm-generate)

Targets (issue 13): the sparse (norms) and LoRA steps at least 8x faster than Keras full and
3x faster than tf.function with the same scheme, at least 5x less peak memory than Keras full.

Measured (``bench/results/2026-12-06-x86_64-2core-lm-steps.md``, load 5-22 on the 2 shared
cores, TF with oneDNN): none met. Over the four groups, tfpock's LoRA step is 1.2-1.8x faster
than Keras full (target 8x) and 0.8-0.9x of tf.function's LoRA step (target 3x); the norms
step 1.1-2.4x and 0.65-1.6x; last 2 blocks 0.8-1.5x and 0.6-0.7x; full 0.5-0.8x of Keras
full. Peak RSS is 1.6-3.0x below Keras full's (target 5x). The matmuls are the step: TFLite's
FULLY_CONNECTED/BATCH_MATMUL kernels (XNNPACK, one thread) against TF's oneDNN ones on this
AVX-512 machine; the tied 8192x512 head's two FULLY_CONNECTED are the largest single ops
(``bench/results/2026-12-06-x86_64-2core-op-profile-llama15m-norms-b1-s64.json``).
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import sys

from absl import app, flags, logging

from bench import cli, harness, lm

FLAGS = flags.FLAGS
TARGETS = {"keras_speed": 8.0, "tf_function_speed": 3.0, "keras_memory": 5.0}


def define_flags() -> None:
    """The command line (run as a script only: ``bench/cli.py`` says why)."""
    flags.DEFINE_list("seqs", ["64", "256"], "Sequence lengths.")
    flags.DEFINE_list("batches", ["1", "4"], "Batch sizes.")
    flags.DEFINE_list("schemes", list(lm.SCHEMES), "tfpock and tf.function schemes.")
    flags.DEFINE_string("config", None, "JSON overriding bench.lm.CONFIG (a smaller model).")
    flags.DEFINE_bool("kv", False, "Time infer per generated token against the window.")
    flags.DEFINE_list("kv_seqs", ["1", "16", "64", "256"], "--kv: window lengths.")
    flags.DEFINE_string("cache_dir", "/tmp/tfpock-lm-bench", "Exported files (reused).")
    flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
    flags.DEFINE_float("round_s", 2.0, "Seconds per contender per round (steps from warm-up).")
    flags.DEFINE_string("name", "lm-steps", "Result file name: <date>-<machine>-<name>.")
    flags.DEFINE_string("from_json", None, "Re-write an earlier run's results (its .json) "
                        "with this version's ratios, timing nothing.")
    cli.define_output_flags()
    flags.adopt_module_key_flags(cli)


def export(config: dict, scheme: str, batch: int, seq: int, cache_dir: str,
           kv_cache: bool = False) -> str:
    """The tfpock file of (scheme, batch, seq), exported unless ``cache_dir`` has it; with
    ``kv_cache`` the file has the ``decode`` signature too. An export writes ``<file>.json``
    beside it: its wall time and the load average (what ``lm_kvcache`` reports)."""
    name = hashed(config) + f"-{scheme}-b{batch}-s{seq}{'-kv' if kv_cache else ''}.tflite"
    path = os.path.join(cache_dir, name)
    if os.path.exists(path):
        return path
    import time
    import keras
    import tfpock
    keras.backend.clear_session()
    start, load = time.perf_counter(), os.getloadavg()
    model = lm.build(config, scheme)
    program = tfpock.optimize(model, loss=lm.loss_fn(),
                              optimizer=keras.optimizers.SGD(lm.LEARNING_RATE),
                              scheme=lm.scheme_for(model, scheme), batch_size=batch,
                              sample_weight=True, kv_cache=kv_cache,
                              input_shapes={"token_ids": (seq,), "padding_mask": (seq,)})
    os.makedirs(cache_dir, exist_ok=True)
    program.export(path)
    with open(path + ".json", "w") as f:
        json.dump({"export_s": time.perf_counter() - start,
                   "load": [round(v, 2) for v in load + os.getloadavg()]}, f)
    logging.info("exported %s", path)
    return path


def hashed(config: dict) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]


def count_parameters(config: dict) -> int:
    return int(lm.build(config, "full").count_params())


def contenders(config, seq, batch, schemes, cache_dir) -> list[harness.Contender]:
    base = {"config": config, "seq": seq, "batch": batch, "threads": 1}
    out = [harness.Contender("keras_full", "full", dict(base, kind="lm_keras", scheme="full")),
           harness.Contender("forward", "-", dict(base, kind="lm_infer", model_file=export(
               config, "norms", batch, seq, cache_dir)))]
    for scheme in schemes:
        out.append(harness.Contender("tfpock", scheme, dict(
            base, kind="lm_tfpock", scheme=scheme,
            model_file=export(config, scheme, batch, seq, cache_dir))))
        out.append(harness.Contender("tf_function", scheme, dict(base, kind="lm_tf_function",
                                                                 scheme=scheme)))
    return out


def ratios(rows: list[dict], schemes: list[str], files: dict | None = None) -> list[dict]:
    """Per tfpock scheme: Keras full / tfpock and tf.function / tfpock step time, Keras full
    / tfpock peak RSS, each against its target; with ``files`` (scheme -> exported file),
    the step's multiply-accumulates over its forward's (:mod:`tfpock.tflite.work`)."""
    by = {(r["id"], r["scheme"]): r for r in rows if r["status"] == "ok"}
    out = []
    keras_row, floor = by.get(("keras_full", "full")), by.get(("forward", "-"))
    for scheme in schemes:
        mine, tf_row = by.get(("tfpock", scheme)), by.get(("tf_function", scheme))
        if mine is None:
            continue
        ms = mine["step_ms"]["median"]
        entry = {"scheme": scheme}
        if keras_row:
            entry["keras_speed"] = keras_row["step_ms"]["median"] / ms
            entry["keras_memory"] = keras_row["peak_rss_mb"] / mine["peak_rss_mb"]
        if tf_row:
            entry["tf_function_speed"] = tf_row["step_ms"]["median"] / ms
        if floor:
            entry["over_floor"] = ms / floor["step_ms"]["median"]
            if keras_row:   # the most any step that runs the forward could reach
                entry["keras_speed_at_floor"] = (keras_row["step_ms"]["median"]
                                                 / floor["step_ms"]["median"])
                entry["keras_memory_at_floor"] = keras_row["peak_rss_mb"] / floor["peak_rss_mb"]
        if files and scheme in files:
            from tfpock.tflite import model_file, work
            parsed = model_file.read(pathlib.Path(files[scheme]).read_bytes())
            entry["macs_over_forward"] = (work.count(parsed, "train").macs
                                          / work.count(parsed, "infer").macs)
        out.append(entry)
    return out


def run_steps(config, seqs, batches, schemes, timing, cache_dir, written=None) -> list[dict]:
    """Every (sequence, batch) group in turn; ``written(groups)`` after each (the results so
    far are written as they come: a long run stopped early keeps its finished groups)."""
    groups = []
    for seq in seqs:
        for batch in batches:
            group = contenders(config, seq, batch, schemes, cache_dir)
            files = {c.scheme: c.spec["model_file"] for c in group if c.id == "tfpock"}
            rows = harness.run_group(group, timing)
            for row in rows:
                if row["status"] == "ok":
                    row["tokens_per_s"] = batch * seq / row["step_ms"]["median"] * 1e3
                else:
                    logging.warning("%s %s failed: %s", row["id"], row["scheme"], row["error"])
            groups.append({"seq": seq, "batch": batch, "rows": rows,
                           "ratios": ratios(rows, schemes, files)})
            logging.info("seq %d batch %d done", seq, batch)
            if written:
                written(groups)
    return groups


def run_kv(config, seqs, timing, cache_dir) -> list[dict]:
    """Batch 1, one thread: ``infer`` of a window of each length, all in one interleaved group
    (a file per length; the scheme does not change ``infer``)."""
    group = [harness.Contender("infer", f"seq{seq}", {
        "config": config, "seq": seq, "batch": 1, "threads": 1, "kind": "lm_infer",
        "model_file": export(config, "norms", 1, seq, cache_dir)}) for seq in seqs]
    rows = harness.run_group(group, timing)
    return [{"seq": seq, "infer_ms": r["step_ms"]["median"] if r["status"] == "ok" else None,
             "error": r["error"]} for seq, r in zip(seqs, rows)]


def _fmt(value, digits=1):
    return "" if value is None else f"{value:.{digits}f}"


def steps_markdown(doc: dict) -> str:
    lines = [f"# Language-model training steps, {doc['date']} ({doc['machine']})", "",
             f"`{doc['command']}`. Model: KerasHub LlamaCausalLM {json.dumps(doc['config'])}, "
             f"{doc['parameters'] / 1e6:.1f}M parameters (tied embeddings). One thread per "
             f"contender (pinned), each in its own process, {doc['timing']['rounds']} "
             f"interleaved rounds; load average {doc['load_start']} at the start, "
             f"{doc['load_end']} at the end (2 cores shared with other jobs: absolute times "
             "are loaded, the ratios are the result). tokens/s = batch x sequence / median "
             "step; RSS: the process's peak (`VmHWM`). forward floor: the `infer` signature "
             "of the norms file (every matmul weight a constant, XNNPACK): a step runs at "
             "least the forward, so Keras full / forward floor is the most any step could be "
             "faster than Keras full, and Keras' RSS over the forward's the most it could save "
             "(the forward process holds the mmapped file and XNNPACK's packed weights).", ""]
    for g in doc["groups"]:
        lines += [f"## sequence {g['seq']}, batch {g['batch']}", "",
                  "| contender | scheme | median step ms | tokens/s | peak RSS MB |",
                  "|---|---|---|---|---|"]
        for r in g["rows"]:
            if r["status"] != "ok":
                lines.append(f"| {r['id']} | {r['scheme']} | failed: {r['error'][:120]} | | |")
                continue
            lines.append(f"| {r['id']} | {r['scheme']} | {r['step_ms']['median']:.1f} | "
                         f"{r['tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} |")
        lines += ["", "| tfpock scheme | Keras full / tfpock (target 8) | tf.function same "
                  "scheme / tfpock (target 3) | Keras RSS / tfpock RSS (target 5) | tfpock / "
                  "forward floor | its MACs / the forward's | Keras full / forward floor "
                  "(time, RSS) |", "|---|---|---|---|---|---|---|"]
        for e in g["ratios"]:
            lines.append(f"| {e['scheme']} | {_fmt(e.get('keras_speed'), 2)} | "
                         f"{_fmt(e.get('tf_function_speed'), 2)} | "
                         f"{_fmt(e.get('keras_memory'), 2)} | {_fmt(e.get('over_floor'), 2)} | "
                         f"{_fmt(e.get('macs_over_forward'), 2)} | "
                         f"{_fmt(e.get('keras_speed_at_floor'), 2)}, "
                         f"{_fmt(e.get('keras_memory_at_floor'), 2)} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def kv_markdown(doc: dict) -> str:
    rows = doc["kv"]
    lines = [f"# Generation with the full-window infer: is a KV cache worth it? {doc['date']} "
             f"({doc['machine']})", "",
             f"`{doc['command']}`. Model: {json.dumps(doc['config'])}, "
             f"{doc['parameters'] / 1e6:.1f}M parameters; tfpock's `infer` on ai-edge-litert, "
             f"batch 1, one thread, {doc['timing']['rounds']} interleaved rounds; load "
             f"average {doc['load_start']} at the start, {doc['load_end']} at the end.", "",
             "`Trainer.generate` runs the whole window for every token, so a token costs "
             "infer(window). A key/value cache runs one position per token (plus attention "
             "over the cached keys, which is small beside the weights' matmuls at these "
             "sizes): its cost is bounded below by infer(1). The gain a cache could give is "
             "at most infer(window) / infer(1).", "",
             "| window | infer ms (= ms per generated token) | / infer(1) |", "|---|---|---|"]
    base = rows[0]["infer_ms"]
    for r in rows:
        ratio = r["infer_ms"] / base if r["infer_ms"] and base else None
        lines.append(f"| {r['seq']} | {_fmt(r['infer_ms'], 2)} | {_fmt(ratio, 1)} |")
    return "\n".join(lines) + "\n"


def rewrite(path: str) -> None:
    """``--from_json``: an earlier run's document, ratios recomputed, under its own name."""
    with open(path) as f:
        doc = json.load(f)
    for group in doc["groups"]:
        schemes = [r["scheme"] for r in group["rows"] if r["id"] == "tfpock"]
        files = {scheme: export(doc["config"], scheme, group["batch"], group["seq"],
                                FLAGS.cache_dir) for scheme in schemes}
        group["ratios"] = ratios(group["rows"], schemes, files)
    text = steps_markdown(doc)
    print(text)
    cli.write_results(doc, text, FLAGS.name, FLAGS.out_dir)


def main(argv):
    del argv
    if FLAGS.from_json:
        return rewrite(FLAGS.from_json)
    config = dict(lm.CONFIG, **(json.loads(FLAGS.config) if FLAGS.config else {}))
    timing = harness.Timing(rounds=FLAGS.rounds, warmup=2, round_s=FLAGS.round_s, min_steps=2,
                            max_steps=20)
    name = "lm-generate" if FLAGS.kv and FLAGS.name == "lm-steps" else FLAGS.name
    doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": FLAGS.machine, "config": config, "parameters": count_parameters(config),
           "timing": {"rounds": timing.rounds, "round_s": timing.round_s},
           "command": " ".join(["python -m bench.studies.lm_steps"] + sys.argv[1:]),
           "load_start": cli.load_average()}

    def write(groups=None):
        if groups is not None:
            doc["groups"] = groups
        doc["load_end"] = cli.load_average()
        text = kv_markdown(doc) if FLAGS.kv else steps_markdown(doc)
        cli.write_results(doc, text, name, FLAGS.out_dir)
        return text

    if FLAGS.kv:
        doc["kv"] = run_kv(config, [int(s) for s in FLAGS.kv_seqs], timing, FLAGS.cache_dir)
        print(write())
    else:
        run_steps(config, [int(s) for s in FLAGS.seqs], [int(b) for b in FLAGS.batches],
                  FLAGS.schemes, timing, FLAGS.cache_dir, write)
        print(write())


if __name__ == "__main__":
    define_flags()
    app.run(main)
