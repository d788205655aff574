"""Hostile files and inputs for the device side, counted: every case must end in a clear
tfpock exception naming the problem (or be accepted where accepting is right), never a crash,
a hang, a partial file or a changed state.

    python -m tests.runtime.hostile --cases 300 [--seed 15] [--jobs 2] [--keep DIR] [--write]

``--write`` also writes the summary to ``bench/results/<date>-<arch>-<n>core-hostile.md``.

Models are exported on the host (TensorFlow); each case then runs in its own subprocess,
``tests/runtime/device.py case``, with TensorFlow blocked and a timeout, so a segfault or a
hang is caught and counted. Kinds (cycled in this order, the random parts seeded):

* ``random_bytes``: random bytes as the model file (some with the TFLite identifier);
* ``truncated_model``: the ``mlp`` model cut at a random offset;
* ``bitflip_model``: 1, 2 or 4 random bits of ``mlp`` flipped; may be accepted (a flip in a weight
  or in padding changes nothing any check can see), then it must train, save and restore;
* ``foreign_tflite``: a valid TFLite file that is not tfpock's (as is, or with a flipped bit);
* ``bad_metadata``: ``mlp`` with its metadata JSON patched in the flatbuffer (same length):
  not JSON, not UTF-8, not an object, another format, fields missing or of the wrong type,
  specs that disagree with the signatures;
* ``bad_inputs``: train/infer with x or y of a wrong dtype, shape or kind, learning rates
  that are NaN, inf or negative; NaN/inf in x and float64 x are accepted (the model's
  non-finite guard handles the step); labels outside the classes are refused;
* ``hostile_checkpoint``: restore from random bytes, truncations and bit flips of a real
  checkpoint, another model's, right names with wrong shapes or dtypes, NaN, format 1, a
  pickled array, a header claiming a huge array, a broken ``__tfpock__`` entry, a folder;
  the Trainer's state must be unchanged after a refusal, and equal to the checkpoint's after
  an acceptance.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

DEVICE = Path(__file__).resolve().parent / "device.py"
KINDS = ("random_bytes", "truncated_model", "bitflip_model", "foreign_tflite", "bad_metadata",
         "bad_inputs", "hostile_checkpoint")
CLEAN_TYPES = {"ModelFileError", "CheckpointError", "InputError"}
TIMEOUT = 30
OUTCOMES = ("clean error", "accepted correctly", "WRONGLY ACCEPTED", "WRONGLY REFUSED",
            "UNCLEAR ERROR", "CRASH", "HANG", "PARTIAL FILE", "STATE CHANGED")
BAD = set(OUTCOMES[2:])


# ---- cases --------------------------------------------------------------------------------
def _write(folder: Path, name: str, content: bytes) -> str:
    path = folder / name
    path.write_bytes(content)
    return str(path)


def _flip(content: bytes, rng: random.Random, flips: int) -> bytes:
    out = bytearray(content)
    for _ in range(flips):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _metadata_span(model: bytes) -> tuple[int, int, dict]:
    start = model.index(b'{"format": "tfpock-training-model/')
    text = model[start:].decode("utf-8", errors="replace")
    metadata, end = json.JSONDecoder().raw_decode(text)
    return start, start + len(text[:end].encode("utf-8")), metadata


def _patch_metadata(model: bytes, replacement: bytes) -> bytes:
    start, end, _ = _metadata_span(model)
    if len(replacement) > end - start:
        raise ValueError("the patched metadata must not be longer than the original")
    return model[:start] + replacement.ljust(end - start, b" ") + model[end:]


def _metadata_variants(model: bytes):
    _, _, meta = _metadata_span(model)

    def edit(**changes):
        m = json.loads(json.dumps(meta))
        for key, value in changes.items():
            if value is _DROP:
                del m[key]
            else:
                m[key] = value
        return json.dumps(m, sort_keys=True).encode()

    first, second = meta["variables"][:2]
    wrong_var = dict(first, shape=[first["shape"][0] + 1] + first["shape"][1:])
    return [
        ("not JSON", b"{not json: " + b"x" * 20),
        ("not UTF-8", b'{"format": "\xff\xfe"}'),
        ("a list", b"[1, 2, 3]"),
        ("blank", b""),
        ("format 2", edit(format="tfpock-training-model/2")),
        ("no variables", edit(variables=_DROP)),
        ("variables not a list", edit(variables="w000")),
        ("x spec missing", edit(x=_DROP)),
        ("x shape off", edit(x={"shape": [4, 21], "dtype": "float32"})),
        ("x dtype unknown", edit(x={"shape": [4, 20], "dtype": "float99"})),
        ("variable shape off", edit(variables=[wrong_var] + meta["variables"][1:])),
        ("variable names repeat", edit(variables=[second, second] + meta["variables"][2:])),
        ("learning_rate a string", edit(learning_rate="0.1")),
    ]


_DROP = object()


def _checkpoint_variants(files: dict, rng: random.Random, folder: Path):
    """(name, path, expect) of hostile checkpoints for the ``mlp`` model."""
    from tfpock.runtime import checkpoint

    good = Path(files["ckpt"]).read_bytes()
    fp, state = files["fingerprint"], files["state"]
    variant = rng.randrange(15)
    path = folder / "hostile.npz"
    if variant == 0:
        path.write_bytes(rng.randbytes(rng.randrange(1, 4096)))
        return "random bytes", str(path), "refuse"
    if variant == 1:
        path.write_bytes(b"PK\x03\x04" + rng.randbytes(rng.randrange(0, 2048)))
        return "random bytes after a zip signature", str(path), "refuse"
    if variant in (2, 3):
        cut = rng.randrange(len(good))
        path.write_bytes(good[:cut])
        return f"truncated at {cut} of {len(good)}", str(path), "refuse"
    if variant in (4, 5):
        path.write_bytes(_flip(good, rng, rng.randint(1, 3)))
        return "bit flips", str(path), "either"
    if variant == 6:
        return "another model's", files["other_ckpt"], "refuse"
    if variant == 7:
        key = rng.choice(sorted(state))
        shape = tuple(d + 1 for d in state[key].shape)
        checkpoint.save(path, dict(state, **{key: np.zeros(shape, np.float32)}), fp, "mlp")
        return "right names, wrong shape", str(path), "refuse"
    if variant == 8:
        key = rng.choice(sorted(state))
        checkpoint.save(path, dict(state, **{key: state[key].astype(np.float64)}), fp, "mlp")
        return "right names, wrong dtype", str(path), "refuse"
    if variant == 9:
        key = rng.choice(sorted(state))
        value = state[key].copy()
        value.flat[rng.randrange(value.size)] = rng.choice([np.nan, np.inf, -np.inf])
        checkpoint.save(path, dict(state, **{key: value}), fp, "mlp")
        return "NaN or inf", str(path), "refuse"
    if variant == 10:
        np.savez(path, **state)
        return "format 1", str(path), "refuse"
    if variant == 11:
        key = rng.choice(sorted(state))
        arrays = dict(state, **{key: np.array([{"a": 1}], dtype=object)})
        np.savez(path, **arrays, __tfpock__=np.frombuffer(b"{}", np.uint8))
        return "a pickled array", str(path), "refuse"
    if variant == 12:
        key = rng.choice(sorted(state))
        _save_with_raw_member(path, state, key, fp)
        return "a header claiming a huge array", str(path), "refuse"
    if variant == 13:
        entry = rng.choice([b"{not json", b"\xff\xfe", b"null", b'{"format": 2}'])
        np.savez(path, **state, __tfpock__=np.frombuffer(entry, np.uint8))
        return "broken __tfpock__ entry", str(path), "refuse"
    os.makedirs(folder / "a_folder.npz", exist_ok=True)
    return "a folder", str(folder / "a_folder.npz"), "refuse"


def _save_with_raw_member(path: Path, state: dict, key: str, fp: str) -> None:
    """A valid format-2 checkpoint whose member ``key`` has an .npy header claiming
    10^12 x 10^12 floats (and 16 bytes of data)."""
    import zipfile

    from tfpock.runtime import checkpoint

    checkpoint.save(path, state, fp, "mlp")
    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 1000000000000), }"
    header = header.ljust(118) + "\n"
    members[f"{key}.npy"] = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + \
        header.encode("latin1") + b"\x00" * 16
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)


_INPUTS = [  # (name, action, x recipe, y recipe, learning_rate, expect)
    ("x int32", "train", {"dtype": "int32", "shape": [4, 20]}, None, None, "refuse"),
    ("x bool", "train", {"dtype": "bool", "shape": [4, 20]}, None, None, "refuse"),
    ("x complex64", "train", {"dtype": "complex64", "shape": [4, 20]}, None, None, "refuse"),
    ("x object", "train", {"dtype": "object", "shape": [4, 20]}, None, None, "refuse"),
    ("x a string", "train", {"python": "hello"}, None, None, "refuse"),
    ("x None", "train", {"python": None}, None, None, "refuse"),
    ("x ragged list", "infer", {"python": [[1.0, 2.0], [3.0]]}, None, None, "refuse"),
    ("x shape (3, 20)", "train", {"dtype": "float32", "shape": [3, 20]}, None, None, "refuse"),
    ("x shape (4, 21)", "infer", {"dtype": "float32", "shape": [4, 21]}, None, None, "refuse"),
    ("x shape (4, 20, 1)", "train", {"dtype": "float32", "shape": [4, 20, 1]}, None, None,
     "refuse"),
    ("x shape ()", "infer", {"dtype": "float32", "shape": []}, None, None, "refuse"),
    ("x shape (0, 20)", "train", {"dtype": "float32", "shape": [0, 20]}, None, None, "refuse"),
    ("y float32", "train", None, {"dtype": "float32", "shape": [4]}, None, "refuse"),
    ("y shape (4, 1)", "train", None, {"dtype": "int32", "shape": [4, 1]}, None, "refuse"),
    ("y int64 beyond int32", "train", None,
     {"dtype": "int64", "shape": [4], "fill": "0", "set": [[0, 2 ** 40]]}, None, "refuse"),
    ("learning rate NaN", "train", None, None, "nan", "refuse"),
    ("learning rate inf", "train", None, None, "inf", "refuse"),
    ("learning rate negative", "train", None, None, "-0.5", "refuse"),
    ("x NaN (train)", "train", {"dtype": "float32", "shape": [4, 20], "fill": "nan"}, None,
     None, "accept"),
    ("x inf (infer)", "infer", {"dtype": "float32", "shape": [4, 20], "fill": "inf"}, None,
     None, "accept"),
    ("x float64", "train", {"dtype": "float64", "shape": [4, 20]}, None, None, "accept"),
    ("x float16", "infer", {"dtype": "float16", "shape": [4, 20]}, None, None, "accept"),
    ("x list of floats", "infer", {"python": [[0.5] * 20] * 4}, None, None, "accept"),
    ("y uint8", "train", None, {"dtype": "uint8", "shape": [4], "fill": "1"}, None, "accept"),
    ("y labels outside the classes", "train", None,
     {"dtype": "int32", "shape": [4], "fill": "0", "set": [[0, 7], [1, -1]]}, None, "refuse"),
]


def generate(count: int, seed: int, files: dict, root: Path) -> list[dict]:
    """``count`` cases, each with its own folder under ``root``."""
    rng = random.Random(seed)
    model = Path(files["mlp"]).read_bytes()
    foreign = Path(files["foreign"]).read_bytes()
    metadata_variants = _metadata_variants(model)
    counters = collections.Counter()
    cases = []
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        n = counters[kind]
        counters[kind] += 1
        folder = root / f"{i:04d}-{kind}"
        folder.mkdir(parents=True)
        case = {"id": i, "kind": kind, "folder": str(folder), "action": "model",
                "model": files["mlp"], "expect": "refuse"}
        if kind == "random_bytes":
            size = rng.randrange(0, 4096)
            content = rng.randbytes(size)
            if n % 3 == 1 and size >= 8:
                content = content[:4] + b"TFL3" + content[8:]
            case["what"] = f"{size} random bytes" + (" with TFL3" if b"TFL3" in content[:8]
                                                     else "")
            case["model"] = _write(folder, "model.tflite", content)
        elif kind == "truncated_model":
            cut = rng.randrange(len(model))
            case["what"] = f"mlp cut at {cut} of {len(model)}"
            case["model"] = _write(folder, "model.tflite", model[:cut])
        elif kind == "bitflip_model":
            flips = rng.choice([1, 1, 1, 2, 4])
            case.update(what=f"{flips} bits flipped", expect="either",
                        model=_write(folder, "model.tflite", _flip(model, rng, flips)))
        elif kind == "foreign_tflite":
            content = foreign if n % 2 == 0 else _flip(foreign, rng, 1)
            case["what"] = "converted tf.function" + (" with a flipped bit" if n % 2 else "")
            case["model"] = _write(folder, "model.tflite", content)
        elif kind == "bad_metadata":
            what, replacement = metadata_variants[n * 5 % len(metadata_variants)]
            case["what"] = f"metadata {what}"
            case["model"] = _write(folder, "model.tflite", _patch_metadata(model, replacement))
        elif kind == "bad_inputs":
            what, action, x, y, lr, expect = _INPUTS[n * 7 % len(_INPUTS)]  # spread a slice
            case.update(what=what, action=action, expect=expect, learning_rate=lr,
                        x=x or {"dtype": "float32", "shape": [4, 20]},
                        y=y or {"dtype": "int32", "shape": [4], "fill": "1"},
                        words=[what.split()[0]] if what.split()[0] in ("x", "y")
                        else ["learning_rate"])
        else:
            what, path, expect = _checkpoint_variants(files, rng, folder)
            case.update(what=f"checkpoint: {what}", action="restore", checkpoint=path,
                        expect=expect, same_as=files["ckpt"])
        if case["action"] in ("model", "restore"):
            case.setdefault("words", [case.get("checkpoint", case["model"])])
        cases.append(case)
    return cases


def host_files(folder: Path) -> dict:
    """The model files (host, TensorFlow) and a good and another model's checkpoint."""
    from tests.runtime.models import export_models

    folder.mkdir(parents=True, exist_ok=True)
    return prepare(export_models(folder), folder)


def prepare(models: dict, folder: Path) -> dict:
    from tfpock.runtime import Trainer

    files = dict(models)
    trainer = Trainer(models["mlp"], num_threads=1)
    files["ckpt"] = trainer.save(folder / "good.npz")
    files["state"], files["fingerprint"] = trainer.state(), trainer.fingerprint
    files["other_ckpt"] = Trainer(models["mlp_last1"]).save(folder / "other.npz")
    return files


# ---- running ------------------------------------------------------------------------------
def run(case: dict) -> dict:
    """Runs one case in a subprocess; returns the case with ``outcome`` and ``detail``."""
    path = Path(case["folder"]) / "case.json"
    path.write_text(json.dumps(case))
    before = set(os.listdir(case["folder"]))
    try:
        proc = subprocess.run([sys.executable, str(DEVICE), "case", str(path)],
                              capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return dict(case, outcome="HANG", detail=f"no answer in {TIMEOUT} s")
    if proc.returncode < 0:
        return dict(case, outcome="CRASH", detail=f"signal {-proc.returncode}")
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return dict(case, outcome="CRASH",
                    detail=f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    left = sorted(n for n in set(os.listdir(case["folder"])) - before
                  if n != "ckpt.npz" or case["action"] != "model")
    return dict(case, outcome=classify(case, result, left), detail=result)


def classify(case: dict, result: dict, left: list[str]) -> str:
    if left:
        return "PARTIAL FILE"
    if result.get("tf_loaded"):
        return "UNCLEAR ERROR"   # the device imported TensorFlow: the case proves nothing
    if result["outcome"] == "ok":
        if result.get("state_matches") is False:
            return "STATE CHANGED"
        return "WRONGLY ACCEPTED" if case["expect"] == "refuse" else "accepted correctly"
    if result.get("state_unchanged") is False:
        return "STATE CHANGED"
    if result["type"] not in CLEAN_TYPES or not all(w in result["message"]
                                                     for w in case["words"]):
        return "UNCLEAR ERROR"
    return "WRONGLY REFUSED" if case["expect"] == "accept" else "clean error"


def run_all(cases: list[dict], jobs: int = 2) -> list[dict]:
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(run, cases))


def summary(results: list[dict]) -> str:
    table = collections.defaultdict(collections.Counter)
    for r in results:
        table[r["kind"]][r["outcome"]] += 1
    used = [o for o in OUTCOMES if any(table[k][o] for k in table)]
    lines = [f"{'kind':<20}{'cases':>6}  " + "  ".join(f"{o:>18}" for o in used)]
    for kind in KINDS:
        if kind in table:
            lines.append(f"{kind:<20}{sum(table[kind].values()):>6}  " +
                         "  ".join(f"{table[kind][o]:>18}" for o in used))
    total = collections.Counter(r["outcome"] for r in results)
    lines.append(f"{'total':<20}{len(results):>6}  " + "  ".join(f"{total[o]:>18}" for o in used))
    for r in results:
        if r["outcome"] in BAD:
            lines.append(f"  {r['outcome']}: case {r['id']} {r['kind']} ({r['what']}): "
                         f"{json.dumps(r['detail'])[:300]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep", help="a folder to keep the cases in (default: a temp one)")
    parser.add_argument("--write", action="store_true",
                        help="also write the summary to bench/results/")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tfpock-hostile-") as tmp:
        root = Path(args.keep or tmp)
        files = host_files(root / "models")
        results = run_all(generate(args.cases, args.seed, files, root / "cases"), args.jobs)
    text = summary(results)
    print(text)
    if args.write:
        _write_result(args, text)
    return 1 if any(r["outcome"] in BAD for r in results) else 0


def _write_result(args, text: str) -> str:
    import datetime
    import platform

    import tfpock.runtime.interpreter as interpreter

    runtime, _ = interpreter.load_interpreter_class()
    now = datetime.datetime.now(datetime.timezone.utc)
    machine = f"{platform.machine()}-{os.cpu_count()}core"
    path = Path(__file__).resolve().parents[2] / "bench" / "results" / \
        f"{now:%Y-%m-%d}-{machine}-hostile.md"
    path.write_text(
        f"# Hostile input for the device side, counted\n\n"
        f"`python -m tests.runtime.hostile --cases {args.cases} --seed {args.seed}` on "
        f"{now:%Y-%m-%d %H:%M} UTC, {machine}, runtime {runtime}, numpy {np.__version__}. "
        f"Each case ran in its own subprocess with TensorFlow blocked and a {TIMEOUT} s "
        f"timeout; kinds and outcomes are described in `tests/runtime/hostile.py`.\n\n"
        f"```\n{text}\n```\n")
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
