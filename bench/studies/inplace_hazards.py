"""Does a TFLite runtime's memory plan let an operator overwrite a tensor that is still read?

TFLite's arena planner (2.14 and ai-edge-litert 2.3 alike) lets some operators write their
output into an input's buffer (in-place), and a RESHAPE's output share its input's buffer; a
wrong plan makes an operator overwrite a tensor a later operator still reads
(``tfpock/tflite/inplace.py`` has the rule and the fix). This study looks at the plan itself,
on each runtime, with no delegate (XNNPACK plans its partitions itself and hides it):

* :func:`run_device` (a script for any runtime's environment: numpy, the interpreter and
  ``tfpock.runtime``) records the buffer address and size of every tensor of the ``train``
  subgraph after allocation, then the losses of a few ``Trainer`` steps and the weights;
* :func:`hazards` reads them with the file's operator order: an operator whose output overlaps
  a tensor written earlier and read later is a hazard (a RESHAPE-like operator that leaves its
  input's bytes where they are is not);
* ``check`` exports the plain decoder, KerasHub's tiny Llama, Gemma and BERT (the tests'
  models) and the tests' CNNs, and per file and runtime lists the hazards, the losses and how
  far losses and weights are from ai-edge-litert's with XNNPACK, written to ``--out``::

    python -m bench.studies.inplace_hazards check \\
        --out bench/results/2026-12-07-x86_64-2core-tflite-runtime-214-fix.md

* ``cost`` exports the decoder and MobileNetV2 (96 px) with the inplace pass on and off and
  compares what a user of ai-edge-litert pays: timeline peak, the arena the plan spans, the
  first step's resident growth, step times in interleaved rounds::

    taskset -c 1 python -m bench.studies.inplace_hazards cost \\
        --out bench/results/2026-12-07-x86_64-2core-inplace-cost.md

``tflite-runtime 2.14`` runs in its own environment (``--python``, default
``/work/venv-tfl214/bin/python``: ``python -m venv``, ``pip install tflite-runtime==2.14.0
"numpy<2"``); the repository goes on its path, its runtime side needs numpy only. The same
check on the decoder runs in the suite (``tests/test_language_models.py``, in the venv that
``tests/portability`` builds).
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
from tfpock.runtime import Trainer
model, batch, runtime, module, delegate, out, steps, lr = sys.argv[1:9]
m = importlib.import_module(module)
kind = getattr(m.OpResolverType, "BUILTIN" if delegate == "xnnpack" else
               "BUILTIN_WITHOUT_DEFAULT_DELEGATES")
it = m.Interpreter(model_path=model, experimental_op_resolver_type=kind)
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
feeds = dict(np.load(batch))
y, weights = feeds.pop("y"), feeds.pop("sample_weight", None)
x = feeds["x"] if list(feeds) == ["x"] else feeds
trainer = Trainer(model, runtime=runtime, experimental_op_resolver_type=kind)
losses = [float(trainer.train(x, y, sample_weight=weights, learning_rate=float(lr))["loss"])
          for _ in range(int(steps))]
np.savez(out + ".npz", **trainer.weights())
json.dump({"tensors": found, "losses": losses}, open(out, "w"))
"""


def run_device(python: str, runtime: str, model: str, batch: str, out: str,
               delegate: str = "none", learning_rate: float = 0.05) -> dict:
    """Addresses of the ``train`` subgraph's tensors (a plain Interpreter), then ``STEPS``
    steps of ``tfpock.runtime.Trainer``: their losses, and the weights after them (``weights``),
    from ``python`` (an environment with ``runtime``; ``delegate`` "none" or "xnnpack", the
    default one). The repository goes on its path: the runtime side needs numpy only."""
    import os
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([python, "-c", DEVICE_SCRIPT, model, batch, runtime, MODULES[runtime],
                    delegate, out, str(STEPS), str(learning_rate)], check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": repo})
    with open(out, encoding="utf-8") as f:
        found = json.load(f)
    found["tensors"] = {int(k): tuple(v) for k, v in found["tensors"].items()}
    found["weights"] = dict(np.load(out + ".npz"))
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


def export_cases(work: str, only: list[str] | None = None):
    """(name, file, batch, learning rate): the tests' language models (full scheme, batch 2
    x 8; the GELU + LayerNormalization decoder also with the inplace pass off) and CNNs
    (full scheme, batch 4, images uniform in [-1, 1] and learning rate 0.05 as
    ``tests/test_equivalence.py``; MobileNetV2 0.001)."""
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
        if only and name not in only:
            continue
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
        lr = 0.001 if name in CHAOTIC else 0.05   # 0.05: its loss goes 6.7, 4.4, 290
        if only and name.split()[0] not in only:
            continue
        model = build()
        program = tfpock.optimize(
            model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            optimizer=keras.optimizers.SGD(lr), batch_size=4)
        path, feeds = f"{work}/{name.split()[0]}.tflite", f"{work}/{name.split()[0]}-batch.npz"
        program.export(path)
        np.savez(feeds, x=rng.uniform(-1, 1, (4, *shape)).astype(np.float32),
                 y=rng.integers(0, model.output_shape[-1], 4).astype(np.int32))
        yield name, path, feeds, lr


RUNS = [("tflite-runtime 2.14", "tflite-runtime", "none"),
        ("ai-edge-litert, no delegate", "ai-edge-litert", "none"),
        ("ai-edge-litert, XNNPACK", "ai-edge-litert", "xnnpack")]
LOSS_RTOL, WEIGHT_ATOL = 1e-6, 1e-5
# a deep ReLU6 network's gradients are chaotic in float32 (tests/test_equivalence.py): two
# kernels' rounding moves units across the kinks, so after the first step its runs part ways
# by rounding, whatever the plan; its first loss is what is checked, and the plan's hazards
CHAOTIC = {"mobilenet_v2 (32 px)"}


def _relative(a: dict, b: dict) -> tuple[float, float]:
    """Largest relative loss difference and largest absolute weight difference of run ``a``
    against run ``b`` (absolute: a bias the BatchNorm after it makes ~1e-10 would make any
    relative figure rounding noise; the weights are of order 0.1 to 1)."""
    la, lb = np.array(a["losses"]), np.array(b["losses"])
    loss = float(np.max(np.abs(la - lb) / np.abs(lb)))
    weight = max((float(np.max(np.abs(a["weights"][k] - v)))
                  for k, v in b["weights"].items() if v.size), default=0.0)
    return loss, weight


def check(python: str, work: str, only: list[str] | None = None) -> tuple[list[str], bool]:
    """The table of :func:`export_cases` on each of :data:`RUNS` (``python``: tflite-runtime
    2.14's environment): hazards each runtime's plan shows and the static count, the losses
    of ``STEPS`` steps, and each run's largest loss and weight differences to ai-edge-litert
    with XNNPACK. Returns the lines and whether tflite-runtime 2.14 agrees with it on every
    file with the pass on (losses within ``LOSS_RTOL`` relative, weights ``WEIGHT_ATOL``)."""
    rows = ["| file | static hazards | " + " | ".join(
        f"{label}: plan hazards; losses" for label, _, _ in RUNS[:2]) + " | XNNPACK: losses | "
        + " | ".join(f"{label} vs XNNPACK: loss, weights" for label, _, _ in RUNS[:2]) + " |",
        "|---|---|" + "---|" * (2 * len(RUNS) - 1)]
    ok, details = True, []
    for name, path, feeds, lr in export_cases(work, only):
        runs = {}
        for label, runtime, delegate in RUNS:
            runs[label] = run_device(python if runtime == "tflite-runtime" else sys.executable,
                                     runtime, path, feeds, f"{work}/plan.json", delegate, lr)
            runs[label]["hazards"] = (hazards(path, runs[label]["tensors"])
                                      if delegate == "none" else [])
            details += [f"- {name}, {label}: {h}" for h in runs[label]["hazards"]]
        reference = runs[RUNS[-1][0]]
        cells = [f"{len(r['hazards'])}; {', '.join(f'{v:.7f}' for v in r['losses'])}"
                 for r in list(runs.values())[:2]]
        cells.append(", ".join(f"{v:.7f}" for v in reference["losses"]))
        diffs = [_relative(runs[label], reference) for label, _, _ in RUNS[:2]]
        cells += [f"{loss:.1e}, {weight:.1e}" for loss, weight in diffs]
        if name in CHAOTIC:
            first = abs(runs[RUNS[0][0]]["losses"][0] / reference["losses"][0] - 1)
            ok = ok and first <= LOSS_RTOL and not runs[RUNS[0][0]]["hazards"]
            cells[-2] += f" (first loss {first:.1e})"
        elif "off" not in name:
            ok = ok and diffs[0][0] <= LOSS_RTOL and diffs[0][1] <= WEIGHT_ATOL
        rows.append(f"| {name} | {static_hazards(path)} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows + ["", "Hazards the runtimes' plans show (operator order of the file):", "",
                   *(details or ["- none"])], ok


def export_pair(work: str, name: str) -> tuple[str, str, dict]:
    """``name`` ("decoder-gelu-layer" or "mobilenet_v2", 96 px as the tests) exported with
    the inplace pass on and off; returns both files and the batch (x, y, sample_weight)."""
    import keras

    import tfpock
    from tests.test_language_models import LR, SEQ, VOCAB, batch, loss_fn
    from tfpock.testing import models
    if name == "decoder-gelu-layer":
        def build():
            return models.decoder(mlp="gelu", norm="layer", vocab=VOCAB, seq=SEQ)
        x, y, w = batch()
        args = dict(loss=loss_fn(), batch_size=2, sample_weight=True)
    else:
        build, w = models.mobilenet_v2, None
        rng = np.random.default_rng(0)
        x = rng.uniform(-1, 1, (4, 96, 96, 3)).astype(np.float32)
        y = rng.integers(0, 10, 4).astype(np.int32)
        args = dict(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    batch_size=4)
    paths = []
    for on in (True, False):
        program = tfpock.optimize(build(), optimizer=keras.optimizers.SGD(LR),
                                  passes={"inplace": on}, **args)
        paths.append(program.export(f"{work}/{name}-inplace-{'on' if on else 'off'}.tflite"))
    return paths[0], paths[1], {"x": x, "y": y, "sample_weight": w}


def cost(work: str, names: list[str], rounds: int, steps: int) -> list[str]:
    """What the pass costs on ai-edge-litert: per model, the files with the pass on and off,
    their timeline peak (``tfpock.tflite.memory.timeline``), the arena the runtime's plan
    spans without a delegate (from the tensors' addresses), the resident growth of a first
    step with XNNPACK (``measured_arena``), and the step time in interleaved rounds (one
    thread; median over rounds of each round's median of ``steps`` steps), with XNNPACK and
    without a delegate."""
    from ai_edge_litert.interpreter import OpResolverType

    from bench import cli
    from tfpock.runtime import Trainer
    from tfpock.tflite import memory
    lines = ["| model | file | same operators | timeline peak KB | plan span KB (no delegate) | "
             "first-step RSS growth KB (XNNPACK) | step ms XNNPACK | step ms no delegate |",
             "|---|---|---|---|---|---|---|---|"]
    ratios = ["", "Per-round ratio of step times, pass on / off (median [quartiles] over rounds):",
              ""]
    for name in names:
        on, off, b = export_pair(work, name)
        same = _operators(on) == _operators(off)
        trainers = {(p, r): Trainer(p, num_threads=1, experimental_op_resolver_type=r)
                    for p in (on, off) for r in (OpResolverType.BUILTIN,
                                                 OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)}
        times = {k: [] for k in trainers}
        for _ in range(rounds):
            for k, t in trainers.items():
                times[k].append(cli.median_ms(lambda t=t: t.train(
                    b["x"], b["y"], sample_weight=b["sample_weight"], learning_rate=1e-3),
                    steps, warm=3))
        for p in (on, off):
            with open(p, "rb") as f:
                peak = memory.timeline(f.read(), "train").peak_bytes
            found = run_device(sys.executable, "ai-edge-litert", p, _save_batch(work, b),
                               f"{work}/cost.json", "none")
            written = _written(p)
            spans = [found["tensors"][t] for t in written if t in found["tensors"]]
            span = max(a + n for a, n in spans) - min(a for a, _ in spans)
            ms = [float(np.median(times[(p, r)])) for r in (
                OpResolverType.BUILTIN, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)]
            lines.append(f"| {name} | inplace {'on' if p == on else 'off'} | {same} | "
                         f"{peak / 1024:.1f} | {span / 1024:.1f} | "
                         f"{memory.measured_arena(p, 'train') / 1024:.0f} | {ms[0]:.3f} | "
                         f"{ms[1]:.3f} |")
            print(lines[-1], flush=True)
        for r, label in ((OpResolverType.BUILTIN, "XNNPACK"),
                         (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES, "no delegate")):
            q = np.percentile(np.array(times[(on, r)]) / np.array(times[(off, r)]),
                              [25, 50, 75])
            ratios.append(f"- {name}, {label}: {q[1]:.3f} [{q[0]:.3f}, {q[2]:.3f}]")
            print(ratios[-1], flush=True)
    return lines + ratios


def _save_batch(work: str, b: dict) -> str:
    path = f"{work}/cost-batch.npz"
    x = b["x"] if isinstance(b["x"], dict) else {"x": b["x"]}
    np.savez(path, **x, y=b["y"], **({} if b["sample_weight"] is None
                                      else {"sample_weight": b["sample_weight"]}))
    return path


def _operators(model: str) -> list[tuple]:
    """Every subgraph's operators (kind, inputs, outputs): the files' metadata differ anyway
    (it records the passes switched)."""
    from tfpock.tflite import model_file
    with open(model, "rb") as f:
        parsed = model_file.read(f.read())
    return [[(op.name, op.inputs, op.outputs) for op in sg.operators] for sg in parsed.subgraphs]


def _written(model: str) -> set[int]:
    from tfpock.tflite import model_file
    with open(model, "rb") as f:
        train = model_file.read(f.read()).subgraph("train")
    return {o for op in train.operators for o in op.outputs}


BLOCKS = {"decoder-gelu-layer": r"block_\d+", "decoder-swiglu-rms": r"block_\d+",
          "llama": r"transformer_layer_\d+", "gemma": r"decoder_block_\d+",
          "bert": r"transformer_layer_\d+"}


def scan() -> list[str]:
    """Static hazards (:func:`tfpock.tflite.inplace.hazards`, which equals both runtimes'
    plans) of the language models under each scheme issue 13 names: full, LoRA rank 4
    (``Scheme.lora``: KerasHub's query and value targets), the last block, norms and biases;
    exported with the pass off, then what the pass leaves."""
    import keras

    import tfpock
    from tests import test_keras_hub, test_keras_hub_models as hub
    from tests.test_language_models import LR, SEQ, VOCAB, loss_fn, norms_and_biases
    from tfpock.tflite import inplace
    from tfpock.testing import models
    builders = {f"decoder-{m}-{n}": (lambda m=m, n=n: models.decoder(
        mlp=m, norm=n, vocab=VOCAB, seq=SEQ), None) for m, n in (("gelu", "layer"),
                                                                   ("swiglu", "rms"))}
    builders["llama"] = (test_keras_hub.tiny_llama, test_keras_hub.SHAPES)
    builders.update({name: (hub.MODELS[name][0], {k: (hub.SEQ,) for k in hub.MODELS[name][1]})
                     for name in ("gemma", "bert")})
    schemes = {"full": lambda m, name: "full",
               "lora r4": lambda m, name: tfpock.Scheme.lora(m, 4),
               "last block": lambda m, name: tfpock.Scheme.last_blocks(m, 1,
                                                                       pattern=BLOCKS[name]),
               "norms and biases": lambda m, name: norms_and_biases(m)}
    lines = ["| model | " + " | ".join(schemes) + " |", "|---|" + "---|" * len(schemes)]
    for name, (build, shapes) in builders.items():
        cells = []
        for scheme in schemes.values():
            model = build()
            try:
                program = tfpock.optimize(
                    model, loss=loss_fn(), optimizer=keras.optimizers.SGD(LR),
                    scheme=scheme(model, name), batch_size=2, input_shapes=shapes,
                    sample_weight=name != "bert", passes={"inplace": False})
                content = program.to_tflite()
            except Exception as exc:   # a scheme a model does not have: say so
                cells.append(f"n/a ({type(exc).__name__})")
                continue
            _, stats = inplace.inplace(content)
            found = sum(s["hazards"] for s in stats.values())
            left = sum(s["left"] for s in stats.values())
            cells.append(f"{found} -> {left}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    from bench import cli
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="export the tests' models, check every runtime's plan")
    c.add_argument("--python", default="/work/venv-tfl214/bin/python",
                   help="a Python with tflite-runtime 2.14 and numpy<2")
    c.add_argument("--work", default="/tmp/tfpock-inplace")
    c.add_argument("--out", help="write the table to this markdown file")
    c.add_argument("--models", help="comma-separated names (default: all), e.g. "
                   "decoder-gelu-layer,bn_cnn")
    k = sub.add_parser("cost", help="the pass on and off: memory and interleaved step times")
    k.add_argument("--models", default="decoder-gelu-layer,mobilenet_v2")
    k.add_argument("--rounds", type=int, default=9)
    k.add_argument("--steps", type=int, default=20)
    k.add_argument("--work", default="/tmp/tfpock-inplace")
    k.add_argument("--out", help="write the table to this markdown file")
    n = sub.add_parser("scan", help="static hazards of the language models per scheme")
    n.add_argument("--out", help="write the table to this markdown file")
    args = parser.parse_args()
    if args.command == "scan":
        rows = scan()
        if args.out:
            load = cli.uptime()
            with open(args.out, "w", encoding="utf-8") as f:
                f.write("\n".join([
                    "# In-place hazards of the language models per scheme", "",
                    f"Command: `python -m bench.studies.inplace_hazards scan --out {args.out}`",
                    f"Machine load: `{load}`", "", scan.__doc__.replace("\n    ", " "), "",
                    "Each cell: hazards in the exported file (every subgraph) -> left after "
                    "the inplace pass.", "", *rows, ""]))
        return
    if args.command == "cost":
        import os
        os.makedirs(args.work, exist_ok=True)
        rows = cost(args.work, args.models.split(","), args.rounds, args.steps)
        if args.out:
            load = cli.uptime()
            with open(args.out, "w", encoding="utf-8") as f:
                f.write("\n".join([
                    "# What the inplace pass costs on ai-edge-litert", "",
                    f"Command: `taskset -c 1 python -m bench.studies.inplace_hazards cost "
                    f"--models {args.models} --rounds {args.rounds} --steps {args.steps} "
                    f"--out {args.out}`",
                    f"Machine load: `{load}`", "", cost.__doc__.split("\n\n")[0].replace(
                        "\n    ", " "), "", *rows, ""]))
        return
    import os
    os.makedirs(args.work, exist_ok=True)
    rows, ok = check(args.python, args.work,
                     args.models.split(",") if args.models else None)
    if args.out:
        load = cli.uptime()
        lines = [
            "# In-place buffer sharing on tflite-runtime 2.14 and ai-edge-litert, after the "
            "inplace pass", "",
            f"Command: `python -m bench.studies.inplace_hazards check --out {args.out}`",
            f"Machine load: `{load}`", "",
            f"Each file: {STEPS} train steps from the same weights and batch on each runtime; "
            "hazards: operators that write over a tensor still read, from the buffer "
            "addresses of the runtime's plan (no delegate); static: what "
            "`tfpock.tflite.inplace.hazards` predicts.", "", *rows, "",
            "Differences: relative for losses, absolute for weights (largest over every "
            "element of every trained weight after the steps). The builtin kernels and "
            "XNNPACK's round differently, so the no-delegate column differs by rounding where "
            f"plans agree. {', '.join(sorted(CHAOTIC))}: chaotic in float32 (ReLU6 kinks, "
            "`tests/test_equivalence.py`), its first loss and the plan are checked.", "",
            f"tflite-runtime 2.14 equals ai-edge-litert (XNNPACK) on every file with the "
            f"inplace pass on (losses {LOSS_RTOL:g} relative, weights {WEIGHT_ATOL:g}): {ok}", ""]
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
    print("tflite-runtime 2.14 equals ai-edge-litert" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
