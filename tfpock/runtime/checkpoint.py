"""Checkpoints: an .npz of every model variable keyed by Keras variable path, written atomically.

Format 2 (``tfpock-checkpoint/2``): the arrays, plus one entry ``__tfpock__``, a uint8 array
holding UTF-8 JSON::

    {"format": "tfpock-checkpoint/2",
     "fingerprint": sha256 hex of the model's trainable-state identity (see fingerprint()),
     "model": "mlp (scheme full)",           # for error messages only
     "checksum": sha256 hex over the arrays (see checksum())}

:func:`load` checks, in this order, and loads nothing unless every check passes: the file is a
readable zip of .npy members; the ``__tfpock__`` entry is there and its format known; the
fingerprint equals the model's (the error names both models, both fingerprints and the file);
the names, dtypes and shapes (read from the .npy headers, before any array data is read, so a
hostile header cannot make it allocate much); the checksum (a flipped byte in an array is
refused); every value finite. Every refusal is a :class:`CheckpointError` naming the file.

Format-1 files (tfpock before this format: the arrays only) are **refused** by default: they
carry no checksum, so a damaged one cannot be told from a good one. ``load(...,
accept_v1=True)`` (``Trainer.restore(path, accept_v1=True)``) reads one with the name, shape,
dtype and finiteness checks and a warning; ``Trainer.save`` then re-saves it as format 2.

Atomic (:mod:`tfpock.runtime.atomic`): a crash, even ``kill -9`` in the middle of a save,
leaves the previous checkpoint or the new one under the name, never a torn file
(``tests/runtime/test_kill.py`` kills a saving process many times and checks).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
import zlib

import numpy as np

from tfpock.runtime.atomic import write_atomically

logger = logging.getLogger(__name__)

FORMAT = "tfpock-checkpoint/2"
META_KEY = "__tfpock__"
_MAX_META_BYTES = 1 << 20   # fit progress (a history of epochs) rides in it


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, damaged, or does not fit the model."""


def fingerprint(metadata: dict) -> str:
    """sha256 (hex) of what identifies a model's trainable state, from its ``metadata``.

    Covers the model's name, its scheme (which weights train, and how), and every variable's
    name, kind, shape and dtype in order: what decides whether a state fits. Leaves out what
    does not change the state's meaning: the batch size (x/y specs), the learning rate and
    optimizer hyper-parameters (an optimizer with other state variables differs in the
    variables anyway), the loss, and the variables' signature keys. So two exports of one
    model with one scheme share it (also at another batch size); another model, or the same
    model with another scheme, has another.
    """
    identity = {
        "model": metadata.get("model"),
        "scheme": metadata.get("scheme"),
        "variables": [[v["name"], v["kind"], [int(d) for d in v["shape"]], str(v["dtype"])]
                      for v in metadata["variables"]],
    }
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def describe(metadata: dict) -> str:
    """A short human name of a model's state, for messages: ``mlp (scheme full)``."""
    scheme = metadata.get("scheme") or {}
    default = scheme.get("default", "?") if isinstance(scheme, dict) else scheme
    extra = " with per-layer policies" if isinstance(scheme, dict) and scheme.get("layers") else ""
    return f"{metadata.get('model', '?')} (scheme {default}{extra})"


def checksum(arrays: dict[str, np.ndarray]) -> str:
    """sha256 (hex) over every array in sorted name order: for each, a JSON header
    ``[name, dtype.str, shape, nbytes]`` and a newline, then its C-order bytes."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.asarray(arrays[name], order="C")   # keeps a 0-d array 0-d
        header = json.dumps([name, array.dtype.str, list(array.shape), array.nbytes])
        digest.update(header.encode("utf-8") + b"\n")
        digest.update(array.tobytes())
    return digest.hexdigest()


def save(path: str | os.PathLike, weights: dict[str, np.ndarray], model_fingerprint: str,
         model: str = "", extra: dict | None = None) -> str:
    """Writes ``weights`` as a format-2 checkpoint, atomically. ``model_fingerprint`` is
    :func:`fingerprint` of the model's metadata; ``model`` a name for messages; ``extra``
    JSON kept beside them in the ``__tfpock__`` entry (``fit``'s position, for a resume) and
    read back by :func:`read_extra`."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise CheckpointError(f"checkpoint path {path!r} must end with .npz")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CheckpointError(f"folder {folder!r} of checkpoint {path!r} does not exist")
    if META_KEY in weights:
        raise CheckpointError(f"checkpoint {path!r}: {META_KEY!r} is reserved, not a variable")
    arrays = {k: np.asarray(v, order="C") for k, v in weights.items()}   # 0-d stays 0-d
    meta = {"format": FORMAT, "fingerprint": model_fingerprint, "model": model,
            "checksum": checksum(arrays)}
    if extra is not None:
        meta["extra"] = extra
    entry = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), np.uint8)
    return write_atomically(path, lambda f: np.savez(f, **arrays, **{META_KEY: entry}))


def load(path: str | os.PathLike, expected: dict[str, tuple[tuple[int, ...], np.dtype]],
         model_fingerprint: str, model: str = "", accept_v1: bool = False
         ) -> dict[str, np.ndarray]:
    """Reads a checkpoint and checks it is whole and holds exactly the ``expected`` weights
    (name -> (shape, dtype)) of the model with ``model_fingerprint``; every problem is named.
    Returns the arrays (without the ``__tfpock__`` entry)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            return _load(path, archive, expected, model_fingerprint, model, accept_v1)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError,
            ValueError, KeyError, NotImplementedError, UnicodeDecodeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint {path!r} is not a readable .npz file (damaged, "
                              f"truncated or not one): {type(exc).__name__}: {exc}") from exc


def read_extra(path: str | os.PathLike) -> dict:
    """The ``extra`` JSON a checkpoint was saved with ({} if none). Checks only the
    ``__tfpock__`` entry: :func:`load` (``Trainer.restore``) checks the rest."""
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as archive:
            member = META_KEY + ".npy"
            if member not in archive.namelist():
                return {}
            return _read_meta(path, archive, member).get("extra") or {}
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint {path!r} is not a readable .npz file: {exc}") from exc


def _load(path, archive: zipfile.ZipFile, expected, model_fingerprint, model, accept_v1):
    members = archive.namelist()
    odd = [m for m in members if not m.endswith(".npy")]
    if odd or len(set(members)) != len(members):
        raise CheckpointError(f"checkpoint {path!r} is not a tfpock .npz: members "
                              f"{sorted(set(odd)) or 'repeated'}")
    names = {m[:-len(".npy")]: m for m in members}
    meta = None
    if META_KEY in names:
        meta = _read_meta(path, archive, names.pop(META_KEY))
    elif not accept_v1:
        raise CheckpointError(
            f"checkpoint {path!r} has no {META_KEY!r} entry: it is a format-1 checkpoint (tfpock "
            f"before {FORMAT}) or not tfpock's, and has no checksum to verify it by. To use it "
            f"anyway: Trainer.restore(path, accept_v1=True), then Trainer.save(path) re-saves it "
            f"as {FORMAT}")
    if meta is not None and meta["fingerprint"] != model_fingerprint:
        raise CheckpointError(
            f"checkpoint {path!r} is of another model: it holds {meta.get('model') or '?'} "
            f"(fingerprint {meta['fingerprint'][:16]}...), this model is {model or '?'} "
            f"(fingerprint {model_fingerprint[:16]}...); nothing was loaded")
    missing = sorted(set(expected) - set(names))
    unexpected = sorted(set(names) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path!r} does not fit the model: missing "
                              f"{missing or 'nothing'}, unexpected {unexpected or 'nothing'}")
    for key, (shape, dtype) in expected.items():  # headers first: no data read yet
        with archive.open(names[key]) as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if major == 1
                           else np.lib.format.read_array_header_2_0)
            file_shape, _, file_dtype = read_header(f)
        if tuple(file_shape) != tuple(shape) or file_dtype != np.dtype(dtype):
            raise CheckpointError(f"checkpoint {path!r}: weight {key!r} is {file_dtype} "
                                  f"{tuple(file_shape)}, the model has {np.dtype(dtype)} "
                                  f"{tuple(shape)}")
    weights = {}
    for key in expected:
        with archive.open(names[key]) as f:
            weights[key] = np.lib.format.read_array(f, allow_pickle=False)
    if meta is not None and checksum(weights) != meta["checksum"]:
        raise CheckpointError(f"checkpoint {path!r} is damaged: its arrays do not match its "
                              f"checksum; nothing was loaded")
    if meta is None:
        logger.warning("checkpoint %r is format 1 (no checksum or fingerprint): loaded with "
                       "name, shape and dtype checks only; save it again to upgrade it", path)
    for key, value in weights.items():
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"checkpoint {path!r}: weight {key!r} holds NaN or inf")
    return weights


def _read_meta(path, archive: zipfile.ZipFile, member: str) -> dict:
    if archive.getinfo(member).file_size > _MAX_META_BYTES:
        raise CheckpointError(f"checkpoint {path!r}: its {META_KEY!r} entry is too large")
    with archive.open(member) as f:
        raw = np.lib.format.read_array(f, allow_pickle=False)
    try:
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError(f"{raw.dtype} {raw.shape}, not a uint8 vector")
        meta = json.loads(raw.tobytes().decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path!r}: its {META_KEY!r} entry is not tfpock's "
                              f"JSON: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path!r} has format {meta.get('format')!r}; this "
                              f"runtime reads {FORMAT!r}")
    for field in ("fingerprint", "checksum"):
        if not isinstance(meta.get(field), str):
            raise CheckpointError(f"checkpoint {path!r}: its {META_KEY!r} entry lacks "
                                  f"{field!r}")
    return meta
