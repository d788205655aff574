"""Generation with and without the key/value-cache ``decode`` signature (issue 13): tokens per
second of ``Trainer.generate`` on the 15M-parameter Llama of ``bench/lm.py``, and what the
signature costs the export.

Each case is (window, prompt, new tokens), the prompt and the new tokens within the window
(so that the cache serves every token: past it, both forms slide infer's window): the file is
compiled with ``input_shapes`` of the window and ``kv_cache=True`` (the cache holds
``window`` positions), batch 1, scheme
``norms`` (as ``lm_steps --kv``; the scheme does not change ``infer`` or ``decode``). The two
forms run on the same file, in one process pinned to one core, ai-edge-litert with one
thread, interleaved: each round runs both (their order alternates), so the shared machine's
load falls on both alike; the ratio is the median of the rounds' ratios. Greedy tokens of
both forms must be equal (the results say whether they were). Beside them, per round: the
prefill (the prompt fed one token at a time through ``decode``), one ``decode`` step, and one
``infer`` of the window (what the windowed path pays per token); ``infer`` of the prompt's
length from a file of that window stands for a prefill signature with a longer window.

The export cost: wall time (loaded) and file size of the smallest window's file with and
without the decode signature, exported by this study (``lm_steps.export``, which records the
time) unless ``--cache_dir`` has them.

    python -m bench.studies.lm_kvcache          # bench/results/<date>-<machine>-lm-kvcache.md
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time

import numpy as np
from absl import app, flags, logging

from bench import cli, lm
from bench.studies import lm_steps

FLAGS = flags.FLAGS
SCHEME = "norms"


def define_flags() -> None:
    """The command line (run as a script only: ``bench/cli.py`` says why)."""
    flags.DEFINE_list("cases", ["80:16:64", "256:16:240"], "WINDOW:PROMPT:NEW_TOKENS.")
    flags.DEFINE_integer("export_window", 64, "The window of the export-cost files.")
    flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
    flags.DEFINE_string("config", None, "JSON overriding bench.lm.CONFIG (a smaller model).")
    flags.DEFINE_string("cache_dir", "/tmp/tfpock-lm-kvcache", "Exported files (reused).")
    flags.DEFINE_string("name", "lm-kvcache", "Result file name: <date>-<machine>-<name>.")
    cli.define_output_flags()
    flags.adopt_module_key_flags(cli)


def parse_case(text: str) -> tuple[int, int, int]:
    window, prompt, new = (int(v) for v in text.split(":"))
    if prompt + new - 1 > window or prompt < 1:
        raise app.UsageError(f"case {text}: the prompt and the new tokens but the last (which "
                             f"is never fed) must fit the window, so that the cache serves "
                             f"every token")
    return window, prompt, new


# A tiny Llama exported once before the timed exports: the first export in a process also
# pays KerasHub's import and the converter's start, which would fall on whichever came first.
WARM_UP = {"vocabulary_size": 128, "num_layers": 1, "num_query_heads": 2,
           "num_key_value_heads": 1, "hidden_dim": 32, "intermediate_dim": 64}


def export_cost(config: dict, window: int, cache_dir: str) -> list[dict]:
    """Export wall time and file size of the ``window`` file without and with decode (in that
    order, after a warm-up export when they are not cached)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        lm_steps.export(WARM_UP, SCHEME, 1, 8, tmp, kv_cache=True)
    rows = []
    for kv in (False, True):
        path = lm_steps.export(config, SCHEME, 1, window, cache_dir, kv_cache=kv)
        with open(path + ".json") as f:
            record = json.load(f)
        rows.append({"kv_cache": kv, "file": os.path.basename(path),
                     "mb": os.path.getsize(path) / 2**20, **record})
    return rows


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return 1e3 * (time.perf_counter() - start), out


def prefill(trainer, prompt: np.ndarray) -> np.ndarray:
    """The prompt's keys and values, one decode call per token; returns the cache."""
    cache = np.zeros(trainer.kv_cache["inputs"][1]["shape"], np.float32)
    for i, token in enumerate(prompt):
        _, cache = trainer.decode(np.array([[token]], np.int32), cache, i)
    return cache


def run_case(path: str, prompt_path: str | None, window: int, prompt_len: int, new: int,
             rounds: int) -> dict:
    from tfpock.runtime import Trainer
    trainer = Trainer(path, num_threads=1)
    vocab = trainer.metadata["output"]["shape"][-1]
    prompt = np.random.default_rng(0).integers(1, vocab, prompt_len).astype(np.int32)
    x = {"token_ids": np.zeros((1, window), np.int32), "padding_mask": np.ones((1, window),
                                                                                np.int32)}
    short = Trainer(prompt_path, num_threads=1) if prompt_path else None
    xs = {"token_ids": prompt[None], "padding_mask": np.ones((1, prompt_len), np.int32)}
    trainer.generate(prompt, 2)   # warm both paths
    trainer.generate(prompt, 2, kv_cache=False)
    rows = []
    for r in range(rounds):
        forms = (True, False) if r % 2 == 0 else (False, True)
        row = {}
        for kv in forms:
            ms, out = timed(lambda kv=kv: trainer.generate(prompt, new, kv_cache=kv))
            row["cached" if kv else "windowed"] = {"ms": ms, "tokens": out.tolist()}
        cache = prefill(trainer, prompt)
        row["prefill_ms"] = cli.median_ms(lambda: prefill(trainer, prompt), 3, warm=0)
        step = np.array([[int(prompt[-1])]], np.int32)
        row["decode_ms"] = cli.median_ms(lambda: trainer.decode(step, cache, prompt_len), 10,
                                         warm=1)
        row["infer_ms"] = cli.median_ms(lambda: trainer.infer(x), 5, warm=1)
        if short is not None:
            row["infer_prompt_ms"] = cli.median_ms(lambda: short.infer(xs), 5, warm=1)
        rows.append(row)
        logging.info("window %d round %d: cached %.0f ms, windowed %.0f ms", window, r,
                     row["cached"]["ms"], row["windowed"]["ms"])

    def median(key, sub=None):
        values = [row[key][sub] if sub else row[key] for row in rows if key in row]
        return float(np.median(values)) if values else None
    ratios = [row["windowed"]["ms"] / row["cached"]["ms"] for row in rows]
    return {"window": window, "prompt": prompt_len, "new": new,
            "equal_tokens": all(row["cached"]["tokens"] == row["windowed"]["tokens"]
                                for row in rows),
            "cached_tokens_per_s": new / median("cached", "ms") * 1e3,
            "windowed_tokens_per_s": new / median("windowed", "ms") * 1e3,
            "speedup": float(np.median(ratios)), "speedups": ratios,
            "cached_ms": median("cached", "ms"), "windowed_ms": median("windowed", "ms"),
            "prefill_ms": median("prefill_ms"), "decode_ms": median("decode_ms"),
            "infer_ms": median("infer_ms"), "infer_prompt_ms": median("infer_prompt_ms"),
            "cache_mb": float(np.prod(trainer.kv_cache["inputs"][1]["shape"])) * 4 / 2**20}


def markdown(doc: dict) -> str:
    lines = [f"# Generation with the key/value cache, {doc['date']} ({doc['machine']})", "",
             f"`{doc['command']}`. Model: KerasHub LlamaCausalLM {json.dumps(doc['config'])}, "
             f"{doc['parameters'] / 1e6:.1f}M parameters, scheme `{SCHEME}`, batch 1, "
             f"ai-edge-litert with one thread, the process pinned to CPU {doc['cpu']}; "
             f"{doc['rounds']} rounds, each running `Trainer.generate` greedy with the "
             "decode signature (cached) and without it (windowed: infer's whole window per "
             "token) on the same file, in alternating order. Load average "
             f"{doc['load_start']} at the start, {doc['load_end']} at the end (2 cores shared "
             "with other jobs: absolute times are loaded; the ratio is the median of the "
             "rounds' ratios).", "",
             "| window | prompt | new tokens | cached tokens/s | windowed tokens/s | cached / "
             "windowed speed | greedy tokens equal |", "|---|---|---|---|---|---|---|"]
    for c in doc["cases"]:
        lines.append(f"| {c['window']} | {c['prompt']} | {c['new']} | "
                     f"{c['cached_tokens_per_s']:.1f} | {c['windowed_tokens_per_s']:.1f} | "
                     f"{c['speedup']:.2f}x (rounds {', '.join(f'{v:.2f}' for v in c['speedups'])})"
                     f" | {'yes' if c['equal_tokens'] else 'NO'} |")
    lines += ["", "Per call (medians over the rounds): the prefill feeds the prompt one token "
              "at a time through decode; `infer(prompt)` is one infer of a file whose window is "
              "the prompt's length, a lower bound for a prefill signature with that window.", "",
              "| window | cache MB | decode step ms | infer(window) ms | prefill ms "
              "(one at a time) | infer(prompt) ms |", "|---|---|---|---|---|---|"]
    for c in doc["cases"]:
        ip = "" if c["infer_prompt_ms"] is None else f"{c['infer_prompt_ms']:.1f}"
        lines.append(f"| {c['window']} | {c['cache_mb']:.2f} | {c['decode_ms']:.2f} | "
                     f"{c['infer_ms']:.1f} | {c['prefill_ms']:.1f} | {ip} |")
    lines += ["", f"Export cost (window {doc['export_window']}, wall time on the loaded "
              "machine, load average before and after):", "",
              "| decode signature | export s | file MB | load |", "|---|---|---|---|"]
    for e in doc["export"]:
        lines.append(f"| {'yes' if e['kv_cache'] else 'no'} | {e['export_s']:.0f} | "
                     f"{e['mb']:.1f} | {e['load']} |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    config = dict(lm.CONFIG, **(json.loads(FLAGS.config) if FLAGS.config else {}))
    cases = [parse_case(c) for c in FLAGS.cases]
    doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": FLAGS.machine, "config": config,
           "parameters": lm_steps.count_parameters(config), "rounds": FLAGS.rounds,
           "export_window": FLAGS.export_window,
           "command": " ".join(["python -m bench.studies.lm_kvcache"] + sys.argv[1:])}
    doc["export"] = export_cost(config, FLAGS.export_window, FLAGS.cache_dir)
    files = {c: (lm_steps.export(config, SCHEME, 1, c[0], FLAGS.cache_dir, kv_cache=True),
                 lm_steps.export(config, SCHEME, 1, c[1], FLAGS.cache_dir)) for c in cases}
    cpu = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    doc.update(cpu=cpu, load_start=cli.load_average())
    doc["cases"] = [run_case(*files[c], *c, FLAGS.rounds) for c in cases]
    doc["load_end"] = cli.load_average()
    text = markdown(doc)
    cli.write_results(doc, text, FLAGS.name, FLAGS.out_dir)
    print(text)


if __name__ == "__main__":
    define_flags()
    app.run(main)
