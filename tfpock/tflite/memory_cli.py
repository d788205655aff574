"""Memory report of any .tflite file: graph timeline peak per signature, measured arena.

    python -m tfpock.tflite.memory_cli MODEL.tflite [--signature train ...] [--measure]
        [--runtime auto|ai-edge-litert|tflite-runtime] [--threads 1] [--timeline] [--top N]
        [--json PATH]
    (installed as ``tfpock-memory``)

For each signature (default: all of the file's) it prints the operator count, the peak of
the graph's live-bytes timeline and the operator at that peak; ``--measure`` adds the arena
the runtime really allocated (RSS growth of the first call, in a fresh process);
``--timeline`` the live bytes at every operator; ``--top N`` the N largest tensors alive at
the peak. ``--json`` writes all of it (the whole timeline and every tensor alive at the peak)
atomically. MB are 10^6 bytes. A bad MODEL or signature exits with status 2 and one line.

Device-side like ``tfpock.runtime``: numpy, a TFLite interpreter and absl-py, no TensorFlow.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

from absl import app, flags

from tfpock.tflite import memory, model_file
from tfpock.runtime.atomic import write_atomically
from tfpock.runtime.interpreter import RUNTIMES

_SIGNATURE = flags.DEFINE_multi_string("signature", None,
                                       "Signature to analyse (repeatable); default: all.")
_MEASURE = flags.DEFINE_bool("measure", False,
                             "Also measure the arena the runtime allocates (fresh process).")
_RUNTIME = flags.DEFINE_string("runtime", "auto",
                               "auto, " + ", ".join(RUNTIMES) + " ('_' works for '-').")
_THREADS = flags.DEFINE_integer("threads", 1, "Interpreter threads for --measure.",
                                lower_bound=1)
_TIMELINE = flags.DEFINE_bool("timeline", False, "Print the live bytes at every operator.")
_TOP = flags.DEFINE_integer("top", 0, "Print the N largest tensors alive at the peak.",
                            lower_bound=0)
_JSON = flags.DEFINE_string("json", None, "Write the full analysis to this JSON file.")
flags.register_validator("runtime", lambda v: _runtime_name(v) in ("auto", *RUNTIMES),
                         message="--runtime must be auto, " + " or ".join(RUNTIMES))

_EXIT_USAGE = 2   # a bad argument, as argparse and most Unix tools report it


class _UsageError(Exception):
    """A bad MODEL or --signature: reported as one line, without a traceback."""


def _runtime_name(value: str) -> str:
    """Accepts the module spelling (ai_edge_litert) for the package name (ai-edge-litert)."""
    return value.replace("_", "-")


def _read(path: str) -> model_file.ModelFile:
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as exc:
        raise _UsageError(f"MODEL {path!r}: cannot read it ({exc.strerror})") from None
    try:
        return model_file.read(content)
    except Exception as exc:  # a corrupt flatbuffer can fail anywhere inside the reader
        raise _UsageError(f"MODEL {path!r} is not a TFLite file ({exc})") from None


def _signatures(parsed: model_file.ModelFile, path: str, requested) -> list[str]:
    available = ", ".join(parsed.signatures) or "none"
    if not parsed.signatures:
        raise _UsageError(f"MODEL {path!r} has no signatures; the analysis is per signature")
    unknown = [s for s in requested or () if s not in parsed.signatures]
    if unknown:
        raise _UsageError(f"--signature {unknown[0]!r} is not in {path!r}; "
                          f"available: {available}")
    return list(dict.fromkeys(requested)) if requested else list(parsed.signatures)


def analyse(path: str, signatures=None, measure: bool = False, runtime: str = "auto",
            threads: int = 1) -> dict:
    """The report as a JSON-ready dict; raises _UsageError for a bad path or signature."""
    parsed = _read(path)
    result = {"model": path, "runtime": runtime, "threads": threads, "signatures": {}}
    for name in _signatures(parsed, path, signatures):
        t = memory.timeline(parsed, name)
        peak = t.peak_op
        result["signatures"][name] = {
            "operators": len(t.ops),
            "peak_bytes": t.peak_bytes,
            "peak_op": dataclasses.asdict(peak) if peak else None,
            "measured_arena_bytes": (memory.measured_arena(path, name, runtime, threads)
                                     if measure else None),
            "timeline": [dataclasses.asdict(o) for o in t.ops],
            "peak_tensors": ([dataclasses.asdict(x) for x in
                              memory.live_tensors(parsed, name, peak.index)] if peak else []),
        }
    return result


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def format_report(result: dict, timeline: bool = False, top: int = 0) -> str:
    """Human-readable text of :func:`analyse`'s result."""
    lines = [f"{result['model']}"]
    for name, sig in result["signatures"].items():
        peak = sig["peak_op"]
        at = f" at op {peak['index']} {peak['op']}" if peak else ""
        lines += [f"signature {name}: {sig['operators']} operators",
                  f"  graph peak: {_mb(sig['peak_bytes'])} ({sig['peak_bytes']} bytes){at}"]
        if sig["measured_arena_bytes"] is not None:
            arena = sig["measured_arena_bytes"]
            lines.append(f"  measured arena: {_mb(arena)} ({arena} bytes; runtime "
                         f"{result['runtime']}, {result['threads']} thread(s))")
        if timeline:
            lines += ["  timeline:", f"    {'index':>6}  {'op':<30} {'live MB':>10}"]
            lines += [f"    {o['index']:>6}  {o['op']:<30} {o['live_bytes'] / 1e6:>10.3f}"
                      for o in sig["timeline"]]
        if top and sig["peak_tensors"]:
            lines += [f"  largest tensors alive at op {peak['index']}:",
                      f"    {'bytes':>12}  {'dtype':<8} {'shape':<18} name"]
            lines += [f"    {x['bytes']:>12}  {x['dtype']:<8} "
                      f"{'x'.join(map(str, x['shape'])) or 'scalar':<18} {x['name']}"
                      for x in sig["peak_tensors"][:top]]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    prog = argv[0] if argv[0].startswith("tfpock ") else "tfpock-memory"   # or `tfpock memory`
    if len(argv) != 2:
        sys.stderr.write(f"{prog}: expected one MODEL.tflite argument, got "
                         f"{len(argv) - 1}: {' '.join(argv[1:])}\n")
        return _EXIT_USAGE
    if _JSON.value and not os.path.isdir(os.path.dirname(os.path.abspath(_JSON.value))):
        sys.stderr.write(f"{prog}: --json {_JSON.value!r}: its folder does not exist\n")
        return _EXIT_USAGE
    try:
        result = analyse(argv[1], _SIGNATURE.value, _MEASURE.value,
                         _runtime_name(_RUNTIME.value), _THREADS.value)
    except _UsageError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return _EXIT_USAGE
    except RuntimeError as exc:  # --measure: the runtime failed on this model
        sys.stderr.write(f"{prog}: {exc}\n")
        return 1
    sys.stdout.write(format_report(result, _TIMELINE.value, _TOP.value))
    if _JSON.value:
        write_atomically(_JSON.value, lambda f: f.write(
            json.dumps(result, indent=1).encode()))
        sys.stdout.write(f"wrote {os.path.abspath(_JSON.value)}\n")
    return 0


def run() -> None:
    """Entry point of the ``tfpock-memory`` console script.

    absl's ``--help`` shows the docstring and flags of ``__main__``, which for a console
    script is pip's generated wrapper: it is lent this module's, so the help is not empty.
    """
    sys.modules["__main__"].__doc__ = __doc__
    for holder in (_SIGNATURE, _MEASURE, _RUNTIME, _THREADS, _TIMELINE, _TOP, _JSON):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[holder.name])
    app.run(main)


if __name__ == "__main__":
    run()
