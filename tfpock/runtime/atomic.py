"""Atomic file writes: readers see the old file or the whole new one, never a part.

A temporary file ``.tfpock-*.part`` in the target's folder is written, flushed and fsynced,
then renamed over the target (``os.replace`` is atomic on one file system), and on POSIX the
folder is fsynced so the rename itself survives a power loss. On any error the temporary file
is removed. Used for exported models and checkpoints alike; numpy-free and TF-free.

A writer killed outright (``kill -9``, power loss) cannot remove its temporary file. The next
write into the same folder removes such leftovers: while a writer works it holds an exclusive
``flock`` on its temporary file (until after the rename), and the lock dies with its process,
so a ``.tfpock-*.part`` whose lock can be taken, and which is older than
:data:`STALE_AFTER_SECONDS` (covering the instant between creating and locking it), belongs to
no live writer. Where ``fcntl`` is missing (Windows) leftovers are kept: they are harmless,
never under the target's name, only disk space.
"""
from __future__ import annotations

import glob
import logging
import os
import tempfile
import time
from typing import BinaryIO, Callable

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

logger = logging.getLogger(__name__)

PREFIX, SUFFIX = ".tfpock-", ".part"
STALE_AFTER_SECONDS = 2.0


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> str:
    """Calls ``write(file)`` on a temporary file, then renames it to ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    remove_stale_parts(folder)
    fd, tmp = tempfile.mkstemp(prefix=PREFIX, suffix=SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)   # held until after the rename
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
        _fsync_folder(folder)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def remove_stale_parts(folder: str) -> list[str]:
    """Removes the temporary files of writers that died in ``folder``; returns their paths."""
    if fcntl is None:
        return []
    removed = []
    now = time.time()
    for part in glob.glob(os.path.join(glob.escape(folder), PREFIX + "*" + SUFFIX)):
        try:
            fd = os.open(part, os.O_RDONLY)
        except OSError:
            continue   # renamed or removed meanwhile
        try:
            info = os.fstat(fd)
            if now - info.st_mtime < STALE_AFTER_SECONDS:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue   # a live writer holds it
            if os.stat(part).st_ino == info.st_ino:
                os.unlink(part)
                removed.append(part)
        except OSError:
            continue
        finally:
            os.close(fd)
    if removed:
        logger.info("removed %d temporary file(s) of interrupted writes in %s", len(removed),
                    folder)
    return removed


def _fsync_folder(folder: str) -> None:
    """Makes the rename durable (POSIX: a directory entry is data of the folder)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
