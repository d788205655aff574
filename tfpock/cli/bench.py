"""The benchmark suite (bench/run.py), from a checkout of the tfpock repository.

    tfpock bench [--quick] [--models ...] [--batches 1,8] [--threads 1,2] [...]

Runs ``python bench/run.py`` with the same arguments, in the checkout tfpock is installed
from (``pip install -e ".[bench]"``): the suite's contenders, models and studies live in
``bench/``, which a wheel does not ship. ``tfpock bench --helpfull`` lists run.py's flags;
``bench/README.md`` explains the contenders and the Raspberry Pi procedure.

Examples:
    tfpock bench --quick
    tfpock bench --models mobilenet_v2 --batches 1 --threads 1
"""
from __future__ import annotations

import os
import subprocess
import sys

from tfpock.cli._common import UsageError

PASS_THROUGH = True


def script(package_dir: str | None = None) -> str:
    """bench/run.py of the checkout holding the tfpock package; a UsageError elsewhere."""
    package_dir = package_dir or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(os.path.dirname(package_dir), "bench", "run.py")
    if not os.path.isfile(path):
        raise UsageError(f"tfpock bench needs a checkout of the tfpock repository (bench/run.py "
                         f"next to the tfpock package); {path!r} does not exist: this tfpock "
                         f"was installed from a wheel. Clone the repository and pip install "
                         f"-e '.[bench]'")
    return path


def main(args: list[str]) -> int:
    if args in (["-h"], ["--help"]):
        sys.stdout.write(f"tfpock bench: {__doc__.strip()}\n")
        return 0
    path = script()
    return subprocess.call([sys.executable, path, *args], cwd=os.path.dirname(
        os.path.dirname(path)))
