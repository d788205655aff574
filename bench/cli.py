"""What the bench commands share: where results go and the machine name in their file names.

Every bench command line is absl flags, defined in the script's ``define_flags()``, which
runs under ``if __name__ == "__main__":`` only: tests import several bench modules into one
process, and absl refuses a flag defined twice.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time

from absl import flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")


def machine_name() -> str:
    """``<arch>-<n>core``, the default machine name in result file names."""
    return f"{platform.machine()}-{os.cpu_count()}core"


def define_output_flags() -> None:
    """``--out_dir`` (default ``bench/results``) and ``--machine``. The caller then calls
    ``flags.adopt_module_key_flags(cli)`` so that its ``--help`` lists them."""
    flags.DEFINE_string("out_dir", RESULTS, "Where results go.")
    flags.DEFINE_string("machine", machine_name(), "Machine name in the result file names.")


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages, rounded: what a results file records beside
    its wall times (the machine's 2 cores are often shared)."""
    return [round(v, 2) for v in os.getloadavg()]


def uptime() -> str:
    """``uptime``'s line (time, load averages): what the studies record at their start and end."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def write_results(doc: dict, text: str, name: str, out_dir: str) -> str:
    """Writes ``<out_dir>/<date>-<machine>-<name>.{json,md}`` (``doc["date"]`` and
    ``doc["machine"]`` name it); returns the stem, for a plot beside them."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"{doc['date'][:10]}-{doc['machine']}-{name}")
    with open(stem + ".json", "w") as f:
        json.dump(doc, f, indent=1, default=str)
    with open(stem + ".md", "w") as f:
        f.write(text)
    logging.info("wrote %s.json and .md", stem)
    return stem


def median_ms(fn, reps: int = 50, warm: int = 5) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``reps`` calls after ``warm``."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)
