"""What the bench commands share: where results go and the machine name in their file names.

Every bench command line is absl flags, defined in the script's ``define_flags()``, which
runs under ``if __name__ == "__main__":`` only: tests import several bench modules into one
process, and absl refuses a flag defined twice.
"""
from __future__ import annotations

import os
import platform

from absl import flags

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
