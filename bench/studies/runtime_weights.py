"""What a trained weight costs on ai-edge-litert beyond the arithmetic (issue 11, part 2).

A trained layer runs with its weights as runtime tensors (variable reads), where a frozen one
has constants that XNNPACK packs once. Three questions, one part each:

1. **What the XNNPACK delegate takes with runtime weights.** Each form a trained layer can be
   written in, traced alone at MobileNetV2/ResNet head shapes and converted with builtins only,
   is run three ways: TFLite's builtin kernels (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``), the
   default XNNPACK delegate, and XNNPACK with ``experimental_default_delegate_latest_features``
   (the delegate's flag-protected features). Reported: the operators, whether the delegate took
   any of them (a ``DELEGATE`` node in the execution plan: for TRANSPOSE + CONV_2D it may be the
   TRANSPOSE alone) and the median time.
2. **What the variable copies cost.** TFLite's READ_VARIABLE copies the variable into a new
   dynamic tensor and ASSIGN_VARIABLE copies the new value back: an SGD update of a variable of
   n floats (read, ``v - lr * g``, assign, sum) against the same arithmetic on an input.
3. **What the non-finite guard costs on whole steps** (``optimize(nonfinite="skip")``, one
   SELECT_V2 per written value, which XNNPACK does not take, against ``"apply"``), for
   MobileNetV2 0.35 @128 and the ResNet-18-style model, ``last:4`` (``--guard_schemes``), BN
   frozen, batch 1.

Run pinned to one core from the repository root:
``taskset -c 1 python -m bench.studies.runtime_weights [--parts 1,2,3]``. Writes
``bench/results/<date>-<machine>-runtime-weights.{json,md}``.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags, logging

from bench import cli

FLAGS = flags.FLAGS
REPS, WARM = 200, 20

# name, function of (x, w), shapes of x and w
M, K, N = 16, 112, 1280   # MobileNetV2 0.35 @128's Conv_1 at batch 1: 4x4 positions, 112->1280
CONSTANT_KERNEL = np.random.default_rng(0).uniform(-0.1, 0.1, (1, 1, K, N)).astype(np.float32)


def forms():
    import tensorflow as tf
    return [
        ("matmul x @ w, w [K, N]", lambda x, w: tf.matmul(x, w), [(M, K), (K, N)]),
        ("matmul x @ w^T, w [N, K]", lambda x, w: tf.matmul(x, w, transpose_b=True),
         [(M, K), (N, K)]),
        ("batch matmul, 1x1 kernel as is", lambda x, w: tf.matmul(x, w),
         [(1, 1, M, K), (1, 1, K, N)]),
        ("batch matmul per offset, 3x3 kernel as is",
         lambda x, w: tf.reduce_sum(tf.matmul(x, w), axis=[0, 1]),
         [(3, 3, 9, 256), (3, 3, 256, 256)]),
        ("conv 1x1, runtime kernel", lambda x, w: tf.nn.conv2d(x, w, 1, "SAME"),
         [(1, 4, 4, K), (1, 1, K, N)]),
        ("conv 1x1, constant kernel (a frozen layer's, the floor's)",
         lambda x: tf.nn.conv2d(x, tf.constant(CONSTANT_KERNEL), 1, "SAME"), [(1, 4, 4, K)]),
        ("conv 3x3, runtime kernel", lambda x, w: tf.nn.conv2d(x, w, 1, "SAME"),
         [(1, 3, 3, 256), (3, 3, 256, 256)]),
        ("depthwise 3x3, runtime kernel",
         lambda x, w: tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME"),
         [(1, 4, 4, 336), (3, 3, 336, 1)]),
    ]


def runtimes():
    from ai_edge_litert.interpreter import OpResolverType
    return [("builtin", {"experimental_op_resolver_type":
                         OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}),
            ("xnnpack", {}),
            ("xnnpack_latest", {"experimental_default_delegate_latest_features": True})]


def define_flags() -> None:
    """The command line (run as a script only: ``bench/cli.py`` says why)."""
    flags.DEFINE_list("parts", ["1", "2", "3"], "Which parts to run.")
    flags.DEFINE_list("guard_schemes", ["last:4"], "Part 3: the schemes timed.")
    flags.DEFINE_string("name", "runtime-weights", "Results file name after the date and "
                        "machine.")
    flags.DEFINE_integer("rounds", 9, "Part 3: interleaved rounds of 30 steps per file.")
    flags.DEFINE_list("time_files", [], "Internal (part 3): time these files' train steps "
                      "and print the medians as JSON.")
    cli.define_output_flags()
    flags.adopt_module_key_flags(cli)


def time_content(content: bytes, options: dict) -> tuple[float, bool]:
    """Median ms of ``invoke`` and whether a delegate took any op."""
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_content=content, num_threads=1, **options)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"],
                               rng.uniform(0.1, 1, detail["shape"]).astype(np.float32))
    delegated = any("DELEGATE" in op["op_name"].upper()
                    for op in interpreter._get_ops_details())
    return cli.median_ms(interpreter.invoke, REPS, WARM), delegated


def operator_names(content: bytes) -> list[str]:
    from ai_edge_litert import schema_py_generated as schema
    from tfpock.tflite.flatbuffer import builtin
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.ModelT.InitFromPackedBuf(content, 0)
    return [names[builtin(model, op)] for op in model.subgraphs[0].operators]


def part_forms() -> list[dict]:
    import tensorflow as tf
    from tfpock.testing.litert import convert_builtins_only
    rows = []
    for name, fn, shapes in forms():
        content = convert_builtins_only(tf.function(fn), [tf.TensorSpec(s) for s in shapes])
        row = {"form": name, "shapes": shapes, "operators": operator_names(content)}
        for runtime, options in runtimes():
            ms, delegated = time_content(content, options)
            row[runtime] = {"ms": ms, "delegated": delegated}
        logging.info("%s", row)
        rows.append(row)
    return rows


def update_model(n: int, variable: bool) -> bytes:
    """``sum(v - lr * g)`` with ``v`` a resource variable that the step assigns, or an input."""
    import tensorflow as tf
    module = tf.Module()
    module.v = tf.Variable(tf.ones([n]))
    if variable:
        @tf.function(input_signature=[tf.TensorSpec([n]), tf.TensorSpec([1])])
        def step(g, lr):
            new = module.v - lr * g
            module.v.assign(new)
            return {"s": tf.reduce_sum(new)}
    else:
        @tf.function(input_signature=[tf.TensorSpec([n]), tf.TensorSpec([n]),
                                      tf.TensorSpec([1])])
        def step(w, g, lr):
            return {"s": tf.reduce_sum(w - lr * g)}
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [step.get_concrete_function()], module)
    converter.experimental_enable_resource_variables = True
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def part_variables() -> list[dict]:
    rows = []
    # MobileNetV2's Conv_1 kernel, a ResNet layer4 3x3 256->256 kernel, four of them
    for n in (112 * 1280, 3 * 3 * 256 * 256, 4 * 3 * 3 * 256 * 256):
        times = {kind: [time_content(update_model(n, kind == "variable"), {})[0]
                        for _ in range(3)] for kind in ("variable", "input")}
        medians = {k: float(np.median(v)) for k, v in times.items()}
        rows.append({"floats": n, "bytes": 4 * n, **{f"{k}_ms": v for k, v in medians.items()},
                     "copies_ms": medians["variable"] - medians["input"]})
        logging.info("%s", rows[-1])
    return rows


def time_files(paths: list[str], rounds: int) -> list[float]:
    """Median over ``rounds`` interleaved rounds of each file's median ``train`` step; run in
    a process of its own (``--time_files``): after tracing and converting in this one,
    TensorFlow's thread pools share the pinned core with the runtime."""
    from tfpock.runtime import Trainer
    steps = []
    for path in paths:
        trainer = Trainer(path, num_threads=1)
        x = np.random.default_rng(0).random(trainer.metadata["x"]["shape"], np.float32)
        y = np.zeros(trainer.metadata["y"]["shape"], trainer.metadata["y"]["dtype"])
        steps.append(lambda t=trainer, x=x, y=y: t.train(x, y, learning_rate=1e-4))
    times = [[] for _ in paths]
    for _ in range(rounds):
        for step, spent in zip(steps, times):
            spent.append(cli.median_ms(step, 30, warm=3))
    return [float(np.median(t)) for t in times]


def part_guard(rounds: int) -> list[dict]:
    import keras
    import tfpock
    from bench import models
    folder = tempfile.mkdtemp(prefix="tfpock-guard-")
    rows = []
    for name, build in (("mobilenet_v2_035_128", models.mobilenet_v2),
                        ("resnet18_half_96", models.resnet18)):
        for scheme in FLAGS.guard_schemes:
            paths = []
            for mode in ("skip", "apply"):
                program = tfpock.optimize(
                    build(), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    optimizer=keras.optimizers.SGD(0.01), scheme=scheme, batch_size=1,
                    nonfinite=mode)
                paths.append(os.path.join(folder, f"{name}-{scheme[5:]}-{mode}.tflite"))
                program.export(paths[-1])
            done = subprocess.run([sys.executable, "-m", "bench.studies.runtime_weights",
                                   "--time_files", ",".join(paths), "--rounds", str(rounds)],
                                  cwd=cli.REPO, check=True, capture_output=True, text=True)
            skip, apply = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append({"model": name, "scheme": scheme, "batch": 1, "skip_ms": skip,
                         "apply_ms": apply, "guard_share": 1 - apply / skip})
            logging.info("%s", rows[-1])
    return rows


def section(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown heading and table."""
    return [f"## {title}", "", "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows), ""]


def markdown(doc: dict) -> str:
    lines = [f"# Runtime weights on ai-edge-litert, {doc['date']} ({doc['machine']})", "",
             f"`{doc['command']}`; ai-edge-litert {doc['ai_edge_litert']}, one thread, median "
             f"of {REPS} invokes after {WARM} (parts 1-2). Load average at the start "
             f"{doc.get('load_average', '?')}, at the end {doc.get('load_average_end', '?')}. "
             "See the study's docstring.", ""]
    if "forms" in doc:
        rows = [[r["form"], " + ".join(r["operators"]), *(
            f"{r[k]['ms'] * 1e3:.0f} us{' (delegated)' if r[k]['delegated'] else ''}"
            for k, _ in runtimes())] for r in doc["forms"]]
        lines += section("1. What XNNPACK takes with runtime weights",
                         ["form", "operators", "builtin", "XNNPACK", "XNNPACK latest features"],
                         rows)
    if "variables" in doc:
        rows = [[f"{r['floats']:,}", f"{r['bytes'] / 2**20:.2f}", f"{r['variable_ms']:.3f}",
                 f"{r['input_ms']:.3f}", f"{r['copies_ms']:.3f}"] for r in doc["variables"]]
        lines += section("2. Variable copies (READ_VARIABLE + ASSIGN_VARIABLE) of an SGD update",
                         ["floats", "MB", "update of a variable ms", "same on an input ms",
                          "copies ms"], rows)
    if "guard" in doc:
        rows = [[r["model"], r.get("scheme", "last:4"), f"{r['skip_ms']:.3f}",
                 f"{r['apply_ms']:.3f}", f"{100 * r['guard_share']:.1f}%"]
                for r in doc["guard"]]
        lines += section("3. The non-finite guard on whole steps (BN frozen, batch 1)",
                         ["model", "scheme", "nonfinite=skip ms", "nonfinite=apply ms",
                          "guard's share"], rows)
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS.time_files:
        print(json.dumps(time_files(FLAGS.time_files, FLAGS.rounds)))
        return
    import ai_edge_litert
    doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": FLAGS.machine, "platform": platform.platform(),
           "ai_edge_litert": getattr(ai_edge_litert, "__version__", "?"),
           "affinity": sorted(os.sched_getaffinity(0)),
           "command": "python -m bench.studies.runtime_weights " + " ".join(sys.argv[1:]),
           "load_average": cli.load_average()}
    if "1" in FLAGS.parts:
        doc["forms"] = part_forms()
    if "2" in FLAGS.parts:
        doc["variables"] = part_variables()
    if "3" in FLAGS.parts:
        doc["guard"] = part_guard(FLAGS.rounds)
    doc["load_average_end"] = cli.load_average()
    cli.write_results(doc, markdown(doc), FLAGS.name, FLAGS.out_dir)


if __name__ == "__main__":
    define_flags()
    app.run(main)
