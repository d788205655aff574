"""The ``tfpock`` command: one subcommand per module of this package.

    tfpock optimize MODEL.keras -o OUT.tflite ...   compile (host, TensorFlow)
    tfpock inspect FILE.tflite [--json]             what is inside any .tflite (device)
    tfpock train FILE.tflite --data train.npz ...   train on the device (no TensorFlow)
    tfpock memory FILE.tflite ...                   memory per signature (also tfpock-memory)
    tfpock bench ...                                the benchmark suite (from a checkout)

A subcommand is a module ``tfpock/cli/<name>.py`` (names without a leading underscore): its
docstring is its ``--help`` (first line: the summary listed here), ``define_flags()`` defines
its absl flags (called only when it runs, so subcommands never clash), ``main(args) -> int``
takes the positional arguments; ``PASS_THROUGH = True`` hands it every argument unparsed.
Adding ``tfpock/cli/search.py`` adds ``tfpock search``, nothing else to edit. Modules import
TensorFlow inside ``main`` only, if at all: ``inspect``, ``train`` and ``memory`` never do.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys

from tfpock.cli._common import EXIT_OK, EXIT_USAGE, run


def commands() -> dict[str, str]:
    """{name: module path} of every subcommand, in name order."""
    return {m.name: f"{__name__}.{m.name}" for m in sorted(pkgutil.iter_modules(__path__),
                                                            key=lambda m: m.name)
            if not m.name.startswith("_")}


def overview() -> str:
    lines = ["usage: tfpock COMMAND [ARGS] [-v] [--help]", "", "commands:"]
    for name, module in commands().items():
        summary = (importlib.import_module(module).__doc__ or "").strip().splitlines()
        lines.append(f"  {name:<10} {summary[0] if summary else ''}")
    lines += ["", "tfpock COMMAND --help explains one, with examples."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tfpock`` console script; returns the exit code."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        (sys.stdout if len(argv) >= 2 else sys.stderr).write(overview())
        return EXIT_OK if len(argv) >= 2 else EXIT_USAGE
    name, available = argv[1], commands()
    if name not in available:
        sys.stderr.write(f"tfpock: unknown command {name!r}; commands: "
                         f"{', '.join(available)} (tfpock --help)\n")
        return EXIT_USAGE
    return run(name, importlib.import_module(available[name]), argv[2:])


def entry() -> None:
    sys.exit(main())
