"""Which tensor of a ``train`` signature first differs between two TFLite runtimes.

Both runtimes run the same file, so tensors are compared by index, not by name. ``dump``
runs one step of the ``train`` signature with every tensor preserved and no delegate, and
writes each float/int tensor of the signature's subgraph to an .npz (numpy and the runtime
only: it runs in tflite-runtime 2.14's virtual environment, where there is no TensorFlow);
``compare`` lists the first tensors, in operator order, whose values differ, with the
operator that wrote them.

    python -m bench.studies.runtime_tensor_dump dump model.tflite batch.npz a.npz \
        --runtime ai-edge-litert
    /work/venv-tfl214/bin/python -m bench.studies.runtime_tensor_dump dump model.tflite \
        batch.npz b.npz --runtime tflite-runtime
    python -m bench.studies.runtime_tensor_dump compare model.tflite a.npz b.npz

``batch.npz`` holds the train signature's inputs by name except ``learning_rate``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess

import numpy as np

MODULES = {"ai-edge-litert": "ai_edge_litert.interpreter",
           "tflite-runtime": "tflite_runtime.interpreter"}


def pin(model: str, out: str, only: list[int] | None = None) -> list[int]:
    """A copy of ``model`` whose ``train`` subgraph lists every tensor its operators write
    among its outputs: no runtime then reuses their buffers (tflite-runtime 2.14 reuses some
    even with every tensor preserved, so a dump of the file as it is shows values that were
    overwritten after they were read); ``only``: those of them only. The signatures are
    unchanged. Returns the tensors pinned."""
    from ai_edge_litert import schema_py_generated as schema

    from tfpock.tflite import flatbuffer, model_file
    with open(model, "rb") as f:
        content = f.read()
    index = model_file.read(content).signatures["train"]
    parsed = schema.ModelT.InitFromPackedBuf(content, 0)
    sg = parsed.subgraphs[index]
    written = [int(o) for op in sg.operators for o in op.outputs if o >= 0]
    if only is not None:
        written = [o for o in written if o in set(only)]
    sg.outputs = list(dict.fromkeys([int(o) for o in sg.outputs] + written))
    with open(out, "wb") as f:
        f.write(flatbuffer.pack(parsed))
    return written


def dump(model: str, batch: str, out: str, runtime: str, learning_rate: float = 0.05) -> None:
    module = importlib.import_module(MODULES[runtime])
    interpreter = module.Interpreter(
        model_path=model, experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    runner = interpreter.get_signature_runner("train")
    feeds = dict(np.load(batch))
    runner(**feeds, learning_rate=np.array([learning_rate], np.float32))
    index = runner._subgraph_index
    values, meta = {}, {}
    for d in _details(interpreter, index):
        if d["dtype"] not in (np.float32, np.int32) or "/" not in d["name"]:
            continue   # resource handles (reading them crashes), constants, inputs
        try:
            values[f"t{d['index']}"] = interpreter.get_tensor(d["index"], index)
        except ValueError:
            continue
        meta[f"t{d['index']}"] = d["name"]
    np.savez(out, **values, _meta=json.dumps(meta))


def _details(interpreter, subgraph: int) -> list[dict]:
    """Tensor details of one subgraph (tflite-runtime 2.14's ``get_tensor_details`` takes no
    subgraph: its private per-tensor call does)."""
    try:
        return interpreter.get_tensor_details(subgraph)
    except TypeError:
        found, i = [], 0
        while True:
            try:
                found.append(interpreter._get_tensor_details(i, subgraph))
            except (ValueError, RuntimeError):
                return found
            i += 1


def compare(model: str, a: str, b: str, atol: float = 1e-5, count: int = 12) -> None:
    """Prints the operators where the runtimes part ways: inputs equal, output off, and the
    output read off by a consumer too (tflite-runtime 2.14 reuses some buffers even with every
    tensor preserved: a tensor overwritten after its readers ran looks off without being so,
    and its readers' outputs agree)."""
    first, second = np.load(a), np.load(b)
    names = json.loads(str(first["_meta"]))
    from tfpock.tflite import model_file   # needs ai-edge-litert's schema: not in dump
    with open(model, "rb") as f:
        train = model_file.read(f.read()).subgraph("train")

    def off(i: int) -> float | None:
        key = f"t{i}"
        if key not in first.files or key not in second.files:
            return None
        x, y = first[key].astype(np.float64), second[key].astype(np.float64)
        diff = float(np.max(np.abs(x - y), initial=0.0))
        return diff if diff > atol * max(1.0, float(np.max(np.abs(x), initial=0.0))) else None

    readers: dict[int, list] = {}
    for op in train.operators:
        for i in op.inputs:
            readers.setdefault(i, []).append(op)
    sources = []
    for n, op in enumerate(train.operators):
        for o in op.outputs:
            if off(o) is None or any(off(i) is not None for i in op.inputs if i >= 0):
                continue
            if any(off(r) is not None for reader in readers.get(o, []) for r in reader.outputs):
                sources.append((n, op, o))
    print(f"{len(train.operators)} operators; {len(sources)} where the runtimes part ways:")
    for n, op, o in sources[:count]:
        inputs = [(tuple(train.tensors[i].shape), "const" if train.tensors[i].constant else
                   "") for i in op.inputs if i >= 0]
        print(f"  op {n} {op.name}: output t{o} off by {off(o):.3g}, inputs {inputs}"
              f"  {names.get(f't{o}', '')[:100]}")


LOSS_SCRIPT = """
import sys, numpy as np
from {module} import Interpreter
feeds = dict(np.load(sys.argv[2]))
runner = Interpreter(model_path=sys.argv[1]).get_signature_runner("train")
print(float(runner(**feeds, learning_rate=np.array([0.05], np.float32))["loss"]))
"""


def step_loss(python: str, runtime: str, model: str, batch: str) -> float:
    """The first train step's loss of ``model`` on ``runtime``, run by ``python`` (another
    virtual environment)."""
    out = subprocess.run([python, "-c", LOSS_SCRIPT.format(module=MODULES[runtime]), model,
                          batch], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bisect(model: str, batch: str, python: str, runtime: str, good: float,
           work: str) -> tuple[list[int], list[str]]:
    """Which pinned tensors (:func:`pin`) make ``runtime`` give the ``good`` loss: halves the
    set while one half alone does; returns the last set and the log."""
    log, pinned = [], work + "/pinned.tflite"

    def fixed(only):
        pin(model, pinned, only)
        loss = step_loss(python, runtime, pinned, batch)
        log.append(f"pinned {len(only)} tensors ({only if len(only) <= 4 else '...'}): "
                   f"loss {loss!r}")
        return abs(loss - good) <= 1e-5 * abs(good)

    candidates = pin(model, pinned)
    log.append(f"none pinned: loss {step_loss(python, runtime, model, batch)!r}")
    if not fixed(candidates):
        return candidates, log
    while len(candidates) > 1:
        half = len(candidates) // 2
        if fixed(candidates[:half]):
            candidates = candidates[:half]
        elif fixed(candidates[half:]):
            candidates = candidates[half:]
        else:
            break
    return candidates, log


def export_decoder(work: str) -> tuple[str, str, float]:
    """The plain decoder of ``tests/test_language_models.py`` (GELU MLP, LayerNormalization,
    full scheme, batch 2 of 8 tokens), its batch, and its first loss on ai-edge-litert."""
    import keras

    import tfpock
    from tests.test_language_models import LR, SEQ, VOCAB, batch, loss_fn
    from tfpock.runtime import Trainer
    from tfpock.testing import models
    program = tfpock.optimize(models.decoder(mlp="gelu", norm="layer", vocab=VOCAB, seq=SEQ),
                              loss=loss_fn(), optimizer=keras.optimizers.SGD(LR), batch_size=2,
                              sample_weight=True)
    model, feeds = f"{work}/decoder.tflite", f"{work}/decoder-batch.npz"
    program.export(model)
    x, y, w = batch()
    np.savez(feeds, **x, y=y, sample_weight=w)
    return model, feeds, Trainer(model).train(x, y, sample_weight=w, learning_rate=LR)["loss"]


def export_language_models(work: str):
    """(name, file, batch, first loss on ai-edge-litert) for the plain decoders and KerasHub's
    tiny Llama, Gemma and BERT of the tests, full scheme."""
    import keras

    import tfpock
    from tests import test_keras_hub, test_keras_hub_models as hub
    from tests.test_language_models import LR, SEQ, VOCAB, batch, loss_fn
    from tfpock.runtime import Trainer
    from tfpock.testing import models
    cases = [(f"decoder-{mlp}-{norm}", models.decoder(mlp=mlp, norm=norm, vocab=VOCAB, seq=SEQ),
              batch(), None) for mlp, norm in (("gelu", "layer"), ("swiglu", "rms"))]
    cases.append(("llama", test_keras_hub.tiny_llama(), test_keras_hub.batch(),
                  test_keras_hub.SHAPES))
    cases += [(name, hub.MODELS[name][0](), hub.batch(name),
               {k: (hub.SEQ,) for k in hub.MODELS[name][1]}) for name in ("gemma", "bert")]
    for name, model, (x, y, w), shapes in cases:
        program = tfpock.optimize(model, loss=loss_fn(), optimizer=keras.optimizers.SGD(LR),
                                  batch_size=2, sample_weight=w is not None,
                                  input_shapes=shapes)
        path, feeds = f"{work}/{name}.tflite", f"{work}/{name}-batch.npz"
        program.export(path)
        np.savez(feeds, **x, y=y, **({} if w is None else {"sample_weight": w}))
        loss = Trainer(path).train(x, y, sample_weight=w, learning_rate=LR)["loss"]
        yield name, path, feeds, loss


def write_report(path: str, lines: list[str],
                 title: str = "tflite-runtime 2.14 and a decoder's train step",
                 command: str = "decoder") -> None:
    from bench import cli   # here: the dump command also runs in tflite-runtime 2.14's venv
    load = cli.uptime()
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join([f"# {title}", "",
                           f"Command: `python -m bench.studies.runtime_tensor_dump {command} "
                           f"--out {path}`", f"Machine load: `{load}`", "", *lines, ""]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("model")
    d.add_argument("batch")
    d.add_argument("out")
    d.add_argument("--runtime", choices=list(MODULES), default="ai-edge-litert")
    p = sub.add_parser("pin")
    p.add_argument("model")
    p.add_argument("out")
    b = sub.add_parser("bisect")
    b.add_argument("model")
    b.add_argument("batch")
    b.add_argument("--python", default="/work/venv-tfl214/bin/python")
    b.add_argument("--runtime", choices=list(MODULES), default="tflite-runtime")
    b.add_argument("--good", type=float, required=True, help="the loss the other runtime gives")
    b.add_argument("--work", default="/tmp")
    lms = sub.add_parser("language-models", help="first loss on both runtimes, write --out")
    lms.add_argument("--python", default="/work/venv-tfl214/bin/python")
    lms.add_argument("--work", default="/tmp")
    lms.add_argument("--out", required=True)
    dec = sub.add_parser("decoder", help="export the plain decoder, bisect, write --out")
    dec.add_argument("--python", default="/work/venv-tfl214/bin/python")
    dec.add_argument("--work", default="/tmp")
    dec.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("model")
    c.add_argument("a")
    c.add_argument("b")
    args = parser.parse_args()
    if args.command == "language-models":
        rows = ["| model (full scheme, batch 2 x 8) | ai-edge-litert | tflite-runtime 2.14 |",
                "|---|---|---|"]
        for name, path, feeds, good in export_language_models(args.work):
            rows.append(f"| {name} | {good!r} | "
                        f"{step_loss(args.python, 'tflite-runtime', path, feeds)!r} |")
        write_report(args.out, ["First train-step loss of each model on both runtimes:", "",
                                *rows], title="tflite-runtime 2.14 and the language models",
                     command="language-models")
        print(open(args.out, encoding="utf-8").read())
    elif args.command == "decoder":
        model, feeds, good = export_decoder(args.work)
        bad = step_loss(args.python, "tflite-runtime", model, feeds)
        found, log = bisect(model, feeds, args.python, "tflite-runtime", good, args.work)
        pin(model, f"{args.work}/pinned.tflite", found)
        fixed = step_loss(args.python, "tflite-runtime", f"{args.work}/pinned.tflite", feeds)
        from tfpock.tflite import model_file
        with open(model, "rb") as f:
            train = model_file.read(f.read()).subgraph("train")
        ops = [f"- op {n} {op.name}: {[train.tensors[i].name for i in op.inputs]} -> "
               f"{[train.tensors[o].name for o in op.outputs]}"
               for n, op in enumerate(train.operators) if set(op.outputs) & set(found)
               or set(op.inputs) & set(found)]
        write_report(args.out, [
            f"- first train-step loss on ai-edge-litert: {good!r}",
            f"- on tflite-runtime 2.14: {bad!r}",
            f"- on tflite-runtime 2.14 with tensors {found} pinned as subgraph outputs "
            f"(their buffers then never shared): {fixed!r}", "",
            "The operators that write and read them:", "", *ops, "", "Bisection log:", "",
            *[f"    {line}" for line in log]])
        print(open(args.out, encoding="utf-8").read())
    elif args.command == "bisect":
        found, log = bisect(args.model, args.batch, args.python, args.runtime, args.good,
                            args.work)
        print("\n".join(log))
        print(f"tensors whose pinning is needed: {found}")
    elif args.command == "pin":
        pin(args.model, args.out)
    elif args.command == "dump":
        dump(args.model, args.batch, args.out, args.runtime)
    else:
        compare(args.model, args.a, args.b)


if __name__ == "__main__":
    main()
