"""Per-operator time profile of one signature of a .tflite file (default: a tfpock ``train``).

Why: the TFLite Python runtimes have no profiler API, so where a training step spends its time
is not visible from Python.

Method: for each operator of the signature's subgraph, a tiny model holding only that operator
is built with the flatbuffer object API (``schema.ModelT``): its tensors are the operator's
inputs and outputs (re-indexed), constant inputs keep their buffers (only those copied; buffer
0 stays the empty sentinel), non-constant inputs become the subgraph's inputs, its outputs the
subgraph's outputs, the same operator code, no signatures. Each is run in
``ai_edge_litert.interpreter.Interpreter(model_content=..., num_threads=1)`` with random
inputs (floats uniform in [0.1, 1), bools random, integers zero: safe for indices) and the
median of ``--reps`` ``invoke()`` after warm-up is its time. Resource-variable ops
(VAR_HANDLE, READ_VARIABLE, ASSIGN_VARIABLE, CALL_ONCE) are not timed; their count and the
bytes READ/ASSIGN copy per step are reported. The sum of the medians is printed next to the
measured time of the whole signature (``tfpock.runtime.Trainer.train`` for ``train``).

Limits: an isolated op runs with warm caches and its own arena (no eviction by its
neighbours), and under XNNPACK each op is its own partition (no fusion, but also one
delegate dispatch per op), so the sum differs from the whole step; ops that fail to prepare
or invoke on made-up inputs (e.g. a non-constant shape input fed zeros) are listed as
"skipped: <reason>" and count nothing.

Run: ``python bench/op_profile.py MODEL.tflite [--signature train] [--reps 30] [--no_xnnpack]
[--top 15] [--json out.json]``.

Measured (x86-64 host, 1 thread, XNNPACK, defaults), MobileNetV2 0.35 @128, full scheme,
batch 8: ``bench/results/2026-12-03-x86_64-2core-op-profile-mobilenet_v2-full-b8.json``
(``--json``). DEPTHWISE_CONV_2D 28%, CONV_2D 21%, BATCH_MATMUL 17%, PAD 11%, RESHAPE 7%; the
sum of the isolated medians, 53.0 ms, is 19% under the whole step, 65.7 ms, which also pays
the variable copies (3.0 MiB per step) and cache misses between ops, while each isolated time
carries one Python ``invoke()`` call (it matters for the many tiny RESHAPE/MUL ops).

The ResNet-18-style model (half width @96), full scheme, batch 8:
``bench/results/2026-12-03-x86_64-2core-op-profile-resnet18_half_96-full-b8.json``. CONV_2D
57% (the trained convolutions run on runtime kernels), BATCH_MATMUL 17%, STRIDED_SLICE 8%,
TRANSPOSE_CONV 4%, the max-pool gradient's LOGICAL_AND/NOT/OR 6%; 148 ms isolated against a
162 ms step, 21.3 MiB of variable copies per step.
"""
from __future__ import annotations

import collections
import copy
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from absl import app, flags  # noqa: E402
from ai_edge_litert import schema_py_generated as schema  # noqa: E402
from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: E402

from tfpock.tflite.flatbuffer import builtin, constant_value, pack  # noqa: E402
from tfpock.tflite import work  # noqa: E402
from bench import cli  # noqa: E402

FLAGS = flags.FLAGS
VARIABLE_OPS = {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"}
OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _options(no_xnnpack: bool) -> dict:
    return ({"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
            if no_xnnpack else {})


def _interpreter(content: bytes, no_xnnpack: bool) -> Interpreter:
    return Interpreter(model_content=content, num_threads=1, **_options(no_xnnpack))


def single_op_model(model: schema.ModelT, sg: schema.SubGraphT, op: schema.OperatorT) -> bytes:
    """The bytes of a model holding only ``op`` of subgraph ``sg``."""
    out = schema.ModelT()
    out.version, out.description = model.version, b"op_profile"
    out.buffers = [schema.BufferT()]
    out.operatorCodes = [model.operatorCodes[op.opcodeIndex]]
    new_sg = schema.SubGraphT()
    new_sg.tensors, new_sg.inputs, new_sg.outputs = [], [], []
    index = {-1: -1}
    for position, old in enumerate(list(op.inputs) + list(op.outputs)):
        if old in index:
            continue
        index[old] = len(new_sg.tensors)
        tensor = sg.tensors[old]
        new = schema.TensorT()
        new.shape, new.type, new.name = tensor.shape, tensor.type, tensor.name
        new.quantization, new.buffer = tensor.quantization, 0
        if constant_value(model, tensor) is not None:
            out.buffers.append(model.buffers[tensor.buffer])
            new.buffer = len(out.buffers) - 1
        elif position < len(op.inputs):
            new_sg.inputs.append(index[old])
        new_sg.tensors.append(new)
    new_sg.outputs = [index[o] for o in op.outputs]
    new_op = copy.copy(op)   # options kept; indices and intermediates replaced
    new_op.opcodeIndex, new_op.intermediates = 0, None
    new_op.inputs = [index[i] for i in op.inputs]
    new_op.outputs = [index[o] for o in op.outputs]
    new_sg.operators, new_sg.name, out.subgraphs = [new_op], b"op", [new_sg]
    return pack(out)


def _random_input(detail: dict, rng: np.random.Generator) -> np.ndarray:
    shape, dtype = tuple(detail["shape"]), np.dtype(detail["dtype"])
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.floating):
        return rng.uniform(0.1, 1.0, shape).astype(dtype)
    return np.zeros(shape, dtype)


def time_op(content: bytes, reps: int, no_xnnpack: bool, rng: np.random.Generator) -> float:
    interpreter = _interpreter(content, no_xnnpack)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], _random_input(detail, rng))
    return cli.median_ms(interpreter.invoke, reps, warm=3)


def signature_ms(path: str, signature: str, reps: int, no_xnnpack: bool) -> float:
    """The median time of one call of the whole signature."""
    if signature == "train":
        from tfpock.runtime import Trainer
        trainer = Trainer(path, num_threads=1, **_options(no_xnnpack))
        x = {k: np.zeros(shape, dtype) for k, (shape, dtype) in trainer.input_specs.items()}
        x = x["x"] if list(x) == ["x"] else x   # a dict for a model with several inputs
        y = np.zeros(trainer.metadata["y"]["shape"], trainer.metadata["y"]["dtype"])
        return cli.median_ms(lambda: trainer.train(x, y), reps, warm=3)
    with open(path, "rb") as f:
        runner = _interpreter(f.read(), no_xnnpack).get_signature_runner(signature)
    rng = np.random.default_rng(0)
    inputs = {k: _random_input(d, rng) for k, d in runner.get_input_details().items()}
    return cli.median_ms(lambda: runner(**inputs), reps, warm=3)


def profile(path: str, signature: str = "train", reps: int = 30,
            no_xnnpack: bool = False) -> dict:
    """Times each op of ``signature`` alone; returns ops (timed, skipped, variable), the
    per-type summary, the sum of medians and the whole signature's measured time."""
    with open(path, "rb") as f:
        content = f.read()
    model = schema.ModelT.InitFromPackedBuf(content, 0)
    keys = {s.signatureKey.decode(): s.subgraphIndex for s in model.signatureDefs}
    if signature not in keys:
        raise ValueError(f"{path} has no signature {signature!r} (has {sorted(keys)})")
    sg = model.subgraphs[keys[signature]]
    rng = np.random.default_rng(0)
    ops, variables = [], collections.Counter()
    for i, op in enumerate(sg.operators):
        kind = OP_NAMES.get(builtin(model, op), str(builtin(model, op)))
        shapes = {side: [[int(d) for d in sg.tensors[t].shape] if t >= 0 else None
                         for t in getattr(op, side)] for side in ("inputs", "outputs")}
        if kind in VARIABLE_OPS:
            variables[kind] += 1
            continue
        row = {"index": i, "type": kind, **shapes}
        try:
            row["ms"] = time_op(single_op_model(model, sg, op), reps, no_xnnpack, rng)
        except Exception as exc:  # noqa: BLE001 - any op failure is reported, not fatal
            first = (str(exc).strip().splitlines() or [""])[0]
            row["skipped"] = f"{type(exc).__name__}: {first[:160]}"
        ops.append(row)
    by_type: dict[str, dict] = {}
    for row in ops:
        entry = by_type.setdefault(row["type"], {"count": 0, "ms": 0.0, "skipped": 0})
        entry["count"] += 1
        entry["ms"] += row.get("ms", 0.0)
        entry["skipped"] += "skipped" in row
    total = sum(e["ms"] for e in by_type.values())
    copied = work.count(content, signature).variable_copy_bytes
    for entry in by_type.values():
        entry["share"] = entry["ms"] / total if total else 0.0
    return {"model": path, "signature": signature, "reps": reps, "xnnpack": not no_xnnpack,
            "ops": ops, "by_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1]["ms"])),
            "variables": {"counts": dict(variables), "bytes_copied": copied},
            "sum_ms": total, "signature_ms": signature_ms(path, signature, reps, no_xnnpack)}


def summary_table(result: dict, limit: int | None = None) -> str:
    lines = [f"{'op type':28s} {'count':>6s} {'total ms':>10s} {'share':>7s}"]
    for kind, e in list(result["by_type"].items())[:limit]:
        skipped = f"  ({e['skipped']} skipped)" if e["skipped"] else ""
        lines.append(f"{kind:28s} {e['count']:6d} {e['ms']:10.3f} {100 * e['share']:6.1f}%"
                     f"{skipped}")
    lines.append(f"sum of per-op medians {result['sum_ms']:.2f} ms; whole signature measured "
                 f"{result['signature_ms']:.2f} ms")
    return "\n".join(lines)


def report(result: dict, top: int = 15) -> str:
    lines = [f"{result['model']} [{result['signature']}], reps {result['reps']}, "
             f"XNNPACK {'on' if result['xnnpack'] else 'off'}", "", summary_table(result), "",
             f"{top} slowest ops:"]
    timed = sorted((r for r in result["ops"] if "ms" in r), key=lambda r: -r["ms"])
    for r in timed[:top]:
        lines.append(f"  #{r['index']:<5d} {r['type']:24s} {r['ms']:8.3f} ms  "
                     f"in {r['inputs']} out {r['outputs']}")
    skipped = [r for r in result["ops"] if "skipped" in r]
    lines.append(f"skipped ({len(skipped)}):")
    lines += [f"  #{r['index']} {r['type']}: skipped: {r['skipped']}" for r in skipped]
    v = result["variables"]
    lines.append(f"variable ops (not timed): {v['counts']}, READ/ASSIGN copy "
                 f"{v['bytes_copied'] / 2**20:.2f} MiB per call")
    return "\n".join(lines)


def define_flags() -> None:
    """The command line (run as a script only: ``bench/cli.py`` says why)."""
    flags.DEFINE_string("signature", "train", "signature to profile")
    flags.DEFINE_integer("reps", 30, "timed invokes per op (median), after 3 warm-up ones")
    flags.DEFINE_bool("no_xnnpack", False, "builtin kernels only, no XNNPACK delegate")
    flags.DEFINE_integer("top", 15, "how many of the slowest single ops to list")
    flags.DEFINE_string("json", None, "write the whole result as JSON here")


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: python bench/op_profile.py MODEL.tflite [flags]")
    result = profile(argv[1], FLAGS.signature, FLAGS.reps, FLAGS.no_xnnpack)
    print(report(result, FLAGS.top))
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
