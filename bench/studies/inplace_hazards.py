"""Does a TFLite runtime's memory plan let an operator overwrite a tensor that is still read?

TFLite's arena planner (2.14 and ai-edge-litert 2.3 alike) lets some operators write their
output into an input's buffer (in-place), and a RESHAPE's output share its input's buffer; a
wrong plan makes an operator overwrite a tensor a later operator still reads
(``tfpock/tflite/inplace.py`` has the rule and the fix). This study looks at the plan itself,
on each runtime, with no delegate (XNNPACK plans its partitions itself and hides it):

* ``addresses`` (runs in any runtime's environment: numpy and the interpreter only) writes the
  buffer address and size of every tensor of the ``train`` subgraph after allocation;
* :func:`hazards` reads them with the file's operator order: an operator whose output overlaps
  a tensor written earlier and read later is a hazard (a RESHAPE-like operator that leaves its
  input's bytes where they are is not);
* ``check`` exports the plain decoder, KerasHub's tiny Llama, Gemma and BERT (the tests'
  models) and the tests' CNNs, and per file and runtime lists the hazards and the losses of a
  few train steps, written to ``--out``::

    python -m bench.studies.inplace_hazards check \\
        --out bench/results/2026-12-07-x86_64-2core-tflite-runtime-214-fix.md
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np

MODULES = {"ai-edge-litert": "ai_edge_litert.interpreter",
           "tflite-runtime": "tflite_runtime.interpreter"}
# operators whose output may share its input's buffer with the bytes left as they are
DATA_UNMODIFIED = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "BITCAST"}
STEPS = 3

DEVICE_SCRIPT = """
import json, sys, importlib, numpy as np
model, batch, module, delegate, out = sys.argv[1:6]
m = importlib.import_module(module)
kind = "BUILTIN" if delegate == "xnnpack" else "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
it = m.Interpreter(model_path=model,
                   experimental_op_resolver_type=getattr(m.OpResolverType, kind))
runner = it.get_signature_runner("train")
sg, w = runner._subgraph_index, it._interpreter
w.AllocateTensors(sg)
found, i = {}, 0
while True:
    try:
        d = it._get_tensor_details(i, sg)
    except (ValueError, RuntimeError):
        break
    if np.dtype(d["dtype"]).kind in "fiub":
        try:
            a = w.tensor(w, i, sg)
            found[i] = [int(a.ctypes.data), int(a.nbytes)]
        except Exception:
            pass
    i += 1
feeds, lr = dict(np.load(batch)), np.array([float(sys.argv[7])], np.float32)
losses = [float(runner(**feeds, learning_rate=lr)["loss"]) for _ in range(int(sys.argv[6]))]
json.dump({"tensors": found, "losses": losses}, open(out, "w"))
"""


def run_device(python: str, runtime: str, model: str, batch: str, out: str,
               delegate: str = "none", learning_rate: float = 0.05) -> dict:
    """Addresses of the ``train`` subgraph's tensors and ``STEPS`` losses, from ``python``
    (an environment with ``runtime``; ``delegate`` "none" or "xnnpack", the default one)."""
    subprocess.run([python, "-c", DEVICE_SCRIPT, model, batch, MODULES[runtime], delegate,
                    out, str(STEPS), str(learning_rate)], check=True, capture_output=True)
    with open(out, encoding="utf-8") as f:
        found = json.load(f)
    found["tensors"] = {int(k): tuple(v) for k, v in found["tensors"].items()}
    return found


def hazards(model: str, addresses: dict[int, tuple[int, int]]) -> list[str]:
    """Each operator (in the file's order) that writes a tensor whose buffer overlaps a
    tensor written earlier and read after it."""
    from tfpock.tflite import model_file
    with open(model, "rb") as f:
        train = model_file.read(f.read()).subgraph("train")
    last_read = {}
    for k, op in enumerate(train.operators):
        for i in op.inputs:
            last_read[i] = k
    for o in train.outputs:
        last_read[o] = len(train.operators)
    written: dict[int, int] = {}
    found = []
    for k, op in enumerate(train.operators):
        for o in op.outputs:
            if o not in addresses or addresses[o][1] == 0:
                continue
            start, size = addresses[o]
            if op.name in DATA_UNMODIFIED and addresses.get(op.inputs[0], (None,))[0] == start:
                written[o] = k
                continue
            for t, by in written.items():
                other, other_size = addresses.get(t, (0, 0))
                if other < start + size and start < other + other_size and last_read.get(
                        t, -1) > k:
                    found.append(f"op {k} {op.name} writes t{o} over t{t} (written by op {by} "
                                 f"{train.operators[by].name}, read until op {last_read[t]}): "
                                 f"{train.tensors[t].name[:80]}")
            written[o] = k
    return found


def static_hazards(model: str) -> int:
    """How many hazards :func:`tfpock.tflite.inplace.hazards` predicts in the file."""
    from ai_edge_litert import schema_py_generated as schema

    from tfpock.tflite import inplace
    with open(model, "rb") as f:
        parsed = schema.ModelT.InitFromPackedBuf(f.read(), 0)
    return sum(len(inplace.hazards(parsed, sg)) for sg in parsed.subgraphs)


def export_cases(work: str):
    """(name, file, batch, learning rate): the tests' language models (full scheme, batch 2
    x 8; the GELU + LayerNormalization decoder also with the inplace pass off) and CNNs
    (full scheme, batch 4; a small learning rate, so that three steps of MobileNetV2 stay
    where float rounding does not grow into a different loss)."""
    import keras

    import tfpock
    from tests import test_keras_hub, test_keras_hub_models as hub
    from tests.test_language_models import LR, SEQ, VOCAB, batch, loss_fn
    from tfpock.testing import models
    lms = [(f"decoder-{mlp}-{norm}", lambda mlp=mlp, norm=norm: models.decoder(
        mlp=mlp, norm=norm, vocab=VOCAB, seq=SEQ), batch(), None)
        for mlp, norm in (("gelu", "layer"), ("swiglu", "rms"))]
    lms.append(("llama", test_keras_hub.tiny_llama, test_keras_hub.batch(),
                test_keras_hub.SHAPES))
    lms += [(name, hub.MODELS[name][0], hub.batch(name),
             {k: (hub.SEQ,) for k in hub.MODELS[name][1]}) for name in ("gemma", "bert")]
    for name, build, (x, y, w), shapes in lms:
        for inplace in ([True, False] if name == "decoder-gelu-layer" else [True]):
            program = tfpock.optimize(build(), loss=loss_fn(), optimizer=keras.optimizers.SGD(LR),
                                      batch_size=2, sample_weight=w is not None,
                                      input_shapes=shapes, passes={"inplace": inplace})
            label = name if inplace else f"{name} (inplace pass off)"
            path = f"{work}/{name}{'' if inplace else '-off'}.tflite"
            feeds = f"{work}/{name}-batch.npz"
            program.export(path)
            np.savez(feeds, **x, y=y, **({} if w is None else {"sample_weight": w}))
            yield label, path, feeds, LR
    rng = np.random.default_rng(0)
    cnns = [("mlp", models.mlp, (20,)),
            ("every_layer_cnn", lambda: models.every_layer_cnn(dropout=0.0), (16, 16, 3)),
            ("bn_cnn", models.bn_cnn, (12, 12, 3)), ("deep_head_cnn", models.deep_head_cnn,
                                                      (6, 6, 4)),
            ("mobilenet_v2 (32 px)", lambda: models.mobilenet_v2(size=32), (32, 32, 3))]
    for name, build, shape in cnns:
        model = build()
        program = tfpock.optimize(
            model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            optimizer=keras.optimizers.SGD(0.005), batch_size=4)
        path, feeds = f"{work}/{name.split()[0]}.tflite", f"{work}/{name.split()[0]}-batch.npz"
        program.export(path)
        np.savez(feeds, x=rng.normal(size=(4, *shape)).astype(np.float32),
                 y=rng.integers(0, model.output_shape[-1], 4).astype(np.int32))
        yield name, path, feeds, 0.005


RUNS = [("tflite-runtime 2.14", "tflite-runtime", "none"),
        ("ai-edge-litert, no delegate", "ai-edge-litert", "none"),
        ("ai-edge-litert, XNNPACK", "ai-edge-litert", "xnnpack")]


def check(python: str, work: str) -> tuple[list[str], bool]:
    """The table of :func:`export_cases` on each of :data:`RUNS` (``python``: tflite-runtime
    2.14's environment): hazards the runtime's plan shows, the static count, the losses of
    ``STEPS`` steps and their largest relative difference to ai-edge-litert with XNNPACK.
    Returns the lines and whether every file with the pass on agrees within 1e-6."""
    rows = ["| file | static hazards | " + " | ".join(
        f"{label}: hazards, losses" for label, _, _ in RUNS) + " | largest relative "
        "difference to XNNPACK |", "|---|---|" + "---|" * len(RUNS) + "---|"]
    ok, details = True, []
    for name, path, feeds, lr in export_cases(work):
        cells, losses = [], {}
        for label, runtime, delegate in RUNS:
            found = run_device(python if runtime == "tflite-runtime" else sys.executable,
                               runtime, path, feeds, f"{work}/plan.json", delegate, lr)
            seen = hazards(path, found["tensors"]) if delegate == "none" else []
            details += [f"- {name}, {label}: {h}" for h in seen]
            losses[label] = found["losses"]
            cells.append(f"{len(seen) if delegate == 'none' else '-'}, "
                         f"{', '.join(f'{v:.7f}' for v in found['losses'])}")
        reference = np.array(losses[RUNS[-1][0]])
        worst = max(float(np.max(np.abs(np.array(v) - reference) / np.abs(reference)))
                    for v in losses.values())
        if "off" not in name:
            ok = ok and worst <= 1e-6
        rows.append(f"| {name} | {static_hazards(path)} | " + " | ".join(cells) +
                    f" | {worst:.1e} |")
        print(rows[-1], flush=True)
    return rows + ["", "Hazards the runtimes' plans show (operator order of the file):", "",
                   *(details or ["- none"])], ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="export the tests' models, check every runtime's plan")
    c.add_argument("--python", default="/work/venv-tfl214/bin/python",
                   help="a Python with tflite-runtime 2.14 and numpy<2")
    c.add_argument("--work", default="/tmp/tfpock-inplace")
    c.add_argument("--out", help="write the table to this markdown file")
    args = parser.parse_args()
    import os
    os.makedirs(args.work, exist_ok=True)
    rows, ok = check(args.python, args.work)
    if args.out:
        load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        lines = [
            "# In-place buffer sharing on tflite-runtime 2.14 and ai-edge-litert, after the "
            "inplace pass", "",
            f"Command: `python -m bench.studies.inplace_hazards check --out {args.out}`",
            f"Machine load: `{load}`", "",
            f"Each file: {STEPS} train steps from the same weights and batch on each runtime; "
            "hazards: operators that write over a tensor still read, from the buffer "
            "addresses of the runtime's plan (no delegate); static: what "
            "`tfpock.tflite.inplace.hazards` predicts.", "", *rows, "",
            f"Every file with the inplace pass on within 1e-6 relative: {ok}", ""]
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
    print("all equal within 1e-6" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
