"""What is inside any .tflite file: signatures, ops, builtin-only check, variables, arena.

    tfpock inspect FILE.tflite [--json]

Reads the file alone (no TensorFlow, no interpreter), so a file the runtime refuses (Flex
ops) is described as well as any. It prints:

* each signature with its inputs and outputs (name, shape, dtype): what a LiteRT signature
  runner takes and returns, in Python (``interpreter.get_signature_runner("train")``) as in
  Kotlin (``interpreter.runSignature(inputs, outputs, "train")``);
* its operator count and arena: the peak of live activation bytes of its operator order
  (``tfpock memory`` measures the runtime's real allocation);
* the op histogram, and whether the file is builtin-only: Flex ops (TensorFlow ops that need
  TF Select linked into the runtime, which the pip runtimes do not have) and custom ops are
  named;
* the variables (count, bytes) and, for a tfpock training model, its metadata: model,
  scheme, optimizer, loss and the trained weights by Keras path.

Examples:
    tfpock inspect model.tflite
    tfpock inspect model.tflite --json > model.json
"""
from __future__ import annotations

import json
import sys

from absl import flags

from tfpock.cli._common import UsageError, positional, read_input


def define_flags() -> None:
    flags.DEFINE_bool("json", False, "Print the description as JSON instead of text.")


def main(args: list[str]) -> int:
    path, = positional(args, "one FILE.tflite")
    from tfpock.tflite.describe import describe
    content = read_input(path, "FILE")
    try:
        info = describe(content)
    except Exception as exc:   # a damaged flatbuffer can fail anywhere inside the reader
        raise UsageError(f"FILE {path!r} is not a TFLite model ({exc})") from None
    info = {"file": path, **info}
    sys.stdout.write(json.dumps(info, indent=1) + "\n" if flags.FLAGS.json else format_text(info))
    return 0


def _spec(t: dict) -> str:
    return f"{t['name']}: {t['dtype']}[{', '.join(map(str, t['shape']))}]"


def format_text(info: dict) -> str:
    lines = [f"{info['file']}: {info['bytes']} bytes, {len(info['signatures'])} signature(s)"]
    for name, sig in info["signatures"].items():
        lines.append(f"signature {name}: {sig['operators']} ops, arena "
                     f"{sig['arena_bytes'] / 1e3:.1f} KB")
        lines.append("  inputs:  " + ("; ".join(map(_spec, sig["inputs"])) or "none"))
        lines.append("  outputs: " + ("; ".join(map(_spec, sig["outputs"])) or "none"))
    ops = info["ops"]
    lines.append(f"ops: {sum(ops.values())} in {len(ops)} kinds: "
                 + ", ".join(f"{k} {v}" for k, v in ops.items()))
    if info["builtin_only"]:
        lines.append("builtin-only: yes (runs on ai-edge-litert and tflite-runtime as they are)")
    else:
        lines.append("builtin-only: NO: "
                     + "; ".join(f"{kind} ops {', '.join(info[key])}" for kind, key in
                                 (("Flex (TF Select)", "flex_ops"), ("custom", "custom_ops"))
                                 if info[key])
                     + " (the pip runtimes cannot run them)")
    v = info["variables"]
    lines.append(f"variables: {v['count']}, {v['bytes']} bytes")
    meta = info["tfpock"]
    if meta:
        lines.append(f"tfpock: model {meta['model']!r} ({meta['format']}), loss {meta['loss']}, "
                     f"optimizer {json.dumps(meta['optimizer'])}")
        lines.append(f"  scheme: {json.dumps(meta['scheme'])}")
        lines.append(f"  trained weights ({len(meta['trained_weights'])}):")
        lines += [f"    {w['name']}  {w['dtype']}[{', '.join(map(str, w['shape']))}]"
                  for w in meta["trained_weights"]]
    return "\n".join(lines) + "\n"
