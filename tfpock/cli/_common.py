"""What the subcommands share: running one (flags, exit codes, logging), files, progress.

Exit codes: 0 done; 2 a bad argument or input (a missing or wrong file, data of the wrong
shape, an unsupported layer, a checkpoint of another model: every ``ValueError`` the library
raises names what is at fault), written as one line ``tfpock CMD: message`` without a
traceback; 1 anything else (``-v`` adds the traceback). The library never prints; the commands
write results on stdout and messages on stderr.
"""
from __future__ import annotations

import logging
import os
import sys
import traceback

from absl import flags

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(ValueError):
    """A bad argument: reported as one line, exit code 2."""


def split_verbosity(args: list[str]) -> tuple[int, list[str]]:
    """Removes ``-v``/``-vv``/``--verbose`` from ``args``; returns (count, the rest). Done
    before absl parses the flags: absl's own ``-v`` takes a number."""
    level, rest = 0, []
    for i, arg in enumerate(args):
        if arg == "--":
            rest += args[i:]
            break
        if arg == "--verbose" or (arg.startswith("-v") and set(arg[1:]) == {"v"}):
            level += 1 if arg == "--verbose" else len(arg) - 1
        else:
            rest.append(arg)
    return level, rest


def import_keras_quietly():
    """Imports Keras (and TensorFlow under it) with the process's native stderr pointed at
    /dev/null, and returns the module. TensorFlow 2.21 logs through absl before absl is
    initialised, which ``TF_CPP_MIN_LOG_LEVEL`` does not reach: on a machine where oneDNN is
    on (AVX-512) every import printed "oneDNN custom operations are on" twice, so a
    command's one-line error came with TensorFlow's lines. A Python exception of the import
    still propagates (and prints once stderr is back)."""
    if "keras" in sys.modules:
        return sys.modules["keras"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                import keras
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
    return keras


def configure_logging(level: int) -> None:
    """The command is the application: it may set up logging (the library never does)."""
    logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s",
                        level=logging.WARNING if level == 0 else
                        logging.INFO if level == 1 else logging.DEBUG)


def help_text(name: str, module) -> str:
    text = f"tfpock {name}: {module.__doc__.strip()}\n"
    flags_help = flags.FLAGS.module_help(module.__name__)
    if flags_help:
        text += "\nflags:\n" + flags_help + "\n"
    return text + "\ncommon: -v / -vv logs at INFO / DEBUG on stderr; -h, --help this text.\n"


def run(name: str, module, args: list[str]) -> int:
    """Parses ``args`` for subcommand ``module`` and runs its ``main``; maps errors to exit
    codes (module docstring)."""
    level, args = split_verbosity(args)
    configure_logging(level)
    if getattr(module, "PASS_THROUGH", False):
        return _guarded(name, module.main, args, level)
    module.define_flags()
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in args):
        sys.stdout.write(help_text(name, module))
        return EXIT_OK
    try:
        positional = flags.FLAGS([f"tfpock {name}", *args])[1:]
    except flags.Error as exc:
        return fail(name, f"{exc} (tfpock {name} --help lists the flags)")
    return _guarded(name, module.main, positional, level)


def _guarded(name, main, args, level) -> int:
    try:
        return main(args) or EXIT_OK
    except (ValueError, OSError) as exc:
        if level >= 2:
            traceback.print_exc()
        return fail(name, _one_line(exc))
    except KeyboardInterrupt:
        return fail(name, "interrupted", 130)
    except Exception as exc:   # noqa: BLE001 - the command's last word on a bug
        if level:
            traceback.print_exc()
        return fail(name, f"failed: {type(exc).__name__}: {_one_line(exc)} (-v shows the "
                          f"traceback)", EXIT_FAILED)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename!r}: {exc.strerror}"
    return " ".join(str(exc).split())


def fail(name: str, message: str, code: int = EXIT_USAGE) -> int:
    sys.stderr.write(f"tfpock {name}: {message}\n")
    return code


def positional(args: list[str], names: str, count: int = 1) -> list[str]:
    """Exactly ``count`` positional arguments (``names`` says which, for the message)."""
    if len(args) != count:
        raise UsageError(f"expected {names}, got {len(args)} argument(s): {' '.join(args)}")
    return args


def read_input(path: str, what: str) -> bytes:
    """A file's bytes; a missing or unreadable file is a :class:`UsageError` naming it."""
    if not os.path.exists(path):
        raise UsageError(f"{what} {path!r} does not exist")
    if not os.path.isfile(path):
        raise UsageError(f"{what} {path!r} is not a file")
    with open(path, "rb") as f:
        return f.read()


def output_path(path: str, flag: str, suffixes: tuple[str, ...]) -> str:
    """An output file's path, checked before any work: its folder exists, its suffix fits."""
    if not path.endswith(suffixes):
        raise UsageError(f"{flag} {path!r} must end with {' or '.join(suffixes)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{flag} {path!r}: its folder {folder!r} does not exist")
    return path


class Progress:
    """A progress bar on a terminal (tqdm), one line per stage elsewhere (a log file, CI):
    never a stream of carriage-return redraws in a file."""

    def __init__(self, total: int, desc: str, stream=None):
        self.stream = stream or sys.stderr
        self.bar = None
        if self.stream.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=desc, file=self.stream, leave=False)

    def update(self, n: int = 1, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v
                                      for k, v in postfix.items()}, refresh=False)

    def stage(self, line: str) -> None:
        """A line that stays (an epoch's summary): above the bar on a terminal."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
