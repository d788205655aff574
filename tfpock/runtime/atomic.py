"""Atomic file writes: readers see the old file or the whole new one, never a part.

A temporary file in the target's folder is written, flushed and fsynced, then renamed over
the target (``os.replace`` is atomic on one file system); on any error it is removed. Used
for exported models and checkpoints alike; numpy-free and TF-free.
"""
from __future__ import annotations

import os
import tempfile
from typing import BinaryIO, Callable


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> str:
    """Calls ``write(file)`` on a temporary file, then renames it to ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tfpock-", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
