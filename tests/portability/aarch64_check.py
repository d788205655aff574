"""Portability proof: tfpock's exported training models on an aarch64 ai-edge-litert, emulated.

Run (as root, on an x86-64 Debian host, from the repository root; not part of pytest):

    python -m tests.portability.aarch64_check [--cache /var/cache/tfpock-aarch64]
        [--cpu cortex-a72] [--models mlp,cnn,mobilenet_v2] [--steps 1]

What it does:

1. Sets up, or reuses, an arm64 Debian bookworm root filesystem in the cache folder (outside
   the repo): ``debootstrap --arch=arm64 --foreign --variant=minbase --include=python3`` from
   the Debian mirror this host's apt uses, then by default unpacks the downloaded .debs with
   ``dpkg-deb -x`` and runs ``ldconfig`` through qemu (no binfmt_misc needed), or with
   ``--setup second-stage`` runs debootstrap's second stage in a chroot (needs binfmt_misc
   with an enabled ``qemu-aarch64`` entry; ~5 min here). numpy + ai-edge-litert (same
   versions as the host's) and tflite-runtime 2.14.0 + numpy<2, PyPI's aarch64 manylinux
   wheels, are installed into two folders of the root filesystem by the host's pip
   (``--platform ..._aarch64 --target``). Times are kept in ``<cache>/setup.json``.
   TensorFlow is never installed there.
2. On the host (TensorFlow), compiles and exports the models of the portability tests with
   their code (``common.py``: from ``tfpock/testing/models.py`` the MLP and the every-layer
   CNN with dropout 0, scheme "full", and MobileNetV2 ``last:2``; SGD 0.05, batch 4) and draws
   the batches.
3. Runs the device protocol of ``device_protocol.py`` (load, infer, ``--steps``
   train steps, weights, save, train on, restore, restore into a fresh Trainer) with the same
   files: in this process on the host's x86-64 ai-edge-litert, and in the arm64 root
   filesystem under qemu-user (``chroot <rootfs> qemu-aarch64-static -cpu <cpu> python3``, in
   a private mount namespace holding /proc and a /proc/cpuinfo + /sys/devices/system/cpu of
   the emulated Raspberry Pi: LiteRT's cpuinfo segfaults on the host's x86 files), where only
   ``tfpock/__init__.py``, ``tfpock/runtime/`` and the protocol script are copied from the
   repo. One thread on both sides. Three device runs (``--variants``):
   ``ai-edge-litert`` as shipped, ``ai-edge-litert+scalar-resize-shim`` (the same wheel with
   the resize of 0-d inputs skipped: the aarch64 wheels crash resizing a 0-d input, found by
   this check when ``learning_rate`` was a scalar; tfpock now shapes it ``[1]``, so the
   as-shipped run trains and the shim is kept only to probe that crash), and
   ``tflite-runtime`` 2.14.0 with numpy<2, unmodified.
4. Compares losses (1e-5 relative), every trained weight (1e-5 absolute) and the inference
   outputs (1e-4 relative + 1e-5 absolute), reports the actual largest differences and
   whether they are bit-identical, and writes ``bench/results/aarch64-portability.json``
   and ``bench/results/aarch64-portability.md``.

Emulated times are printed so a reader knows how long the check takes; they are not speed
figures of any aarch64 device (qemu-user translates every instruction).
Exit status: 0 when every variant runs and matches within tolerance (the case since the
[1]-shaped learning rate), 1 when one does not, 2 when the arm64 environment cannot be set up (the
reason is written to the note as well). A second run reuses the cache (~50 s, most of it exporting).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.portability import common
from tests.portability.common import (ARRAYS, BATCH, LOSS_RTOL, LR, OUTPUT_ATOL, OUTPUT_RTOL,
                                      WEIGHT_ATOL, locked)
from tests.portability.device_protocol import decode, load_inputs, run_protocol

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
DEFAULT_CACHE = os.environ.get("TFPOCK_AARCH64_CACHE", "/var/cache/tfpock-aarch64")
SUITE = "bookworm"        # its python3 is 3.11, the wheels below are cp311
PY_TAG = "3.11"
GLIBC_MAX = 36            # bookworm's glibc 2.36: manylinux_2_17 .. _2_36 wheels run there
# inside the root filesystem: one folder of wheels per device runtime (put on PYTHONPATH)
SITES = {"ai-edge-litert": "/opt/tfpock-device",
         "tflite-runtime": "/opt/tfpock-device-tflite-runtime"}
TFLITE_RUNTIME_SPEC = ["tflite-runtime==2.14.0", "numpy<2"]   # what an older Pi image runs
DEVICE_SRC = "/opt/tfpock-src"
DEVICE_WORK = "/tmp/tfpock-aarch64-run"
QEMU = "/usr/bin/qemu-aarch64-static"
DEVICE_TIMEOUT = 3600


def log(msg: str) -> None:
    print(f"[aarch64 {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class SetupFailed(RuntimeError):
    pass


def run(cmd, timeout=3600, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise SetupFailed(f"`{' '.join(map(str, cmd))}` exited {proc.returncode}:\n{tail}")
    return proc


# ------------------------------------------------------------------ arm64 environment

def apt_mirror() -> str:
    """The Debian mirror (URI of the suite without -updates/-security) this host's apt uses."""
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob(
            "*"))]:
        if path.is_file() and path.suffix in (".list", ".sources", ""):
            texts.append(path.read_text(errors="replace"))
    for text in texts:
        for block in re.split(r"\n\s*\n", text):  # deb822 stanzas
            uris = re.search(r"^URIs:\s*(\S+)", block, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", block, re.M)
            if uris and suites and SUITE in suites.group(1).split() and "/debian" in uris.group(1) \
                    and "security" not in uris.group(1):
                return uris.group(1)
        for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
            if m.group(2) == SUITE and "security" not in m.group(1):
                return m.group(1)
    return "http://deb.debian.org/debian"


def binfmt_aarch64() -> bool:
    entry = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    try:
        return entry.read_text().splitlines()[0].strip() == "enabled"
    except OSError:
        return False


def host_versions() -> dict:
    qemu = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout
    return {"qemu": qemu.splitlines()[0] if qemu else None,
            "ai-edge-litert": importlib.metadata.version("ai-edge-litert"),
            "numpy": importlib.metadata.version("numpy")}


def wheel_platforms() -> list[str]:
    tags = ["--platform", "manylinux2014_aarch64"]
    for minor in range(17, GLIBC_MAX + 1):
        tags += ["--platform", f"manylinux_2_{minor}_aarch64"]
    return tags


# The device qemu-user pretends to be, for the libraries that read /proc/cpuinfo and
# /sys/devices/system/cpu (LiteRT's cpuinfo does, when the interpreter is created). qemu 7.2
# passes the host's x86 files through for aarch64, and LiteRT then dies with SIGSEGV in
# cpuinfo's init (with the host's /proc and /sys, or with none); so each run mounts these,
# matching the -cpu model, in a private mount namespace.
CPUS = {  # qemu -cpu: (device, cores, MHz, /proc/cpuinfo Features, variant, part, revision)
    "cortex-a53": ("Raspberry Pi 3 / Zero 2 W", 4, 1400, "fp asimd evtstrm crc32 cpuid",
                   "0x0", "0xd03", 4),
    "cortex-a72": ("Raspberry Pi 4 Model B", 4, 1800, "fp asimd evtstrm crc32 cpuid",
                   "0x0", "0xd08", 3),
    "cortex-a76": ("Raspberry Pi 5", 4, 2400,
                   "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
                   "asimdrdm lrcpc dcpop asimddp", "0x4", "0xd0b", 1),
}


def device_description(cache: Path, cpu: str) -> Path:
    """Writes <cache>/device-<cpu>/{cpuinfo, cpu/} as an aarch64 kernel shows them."""
    name, cores, mhz, features, variant, part, revision = CPUS[cpu]
    folder = cache / f"device-{cpu}"
    if folder.exists():
        shutil.rmtree(folder)
    sysfs = folder / "cpu"
    text = []
    for i in range(cores):
        text.append(f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\n"
                    f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: {variant}\n"
                    f"CPU part\t: {part}\nCPU revision\t: {revision}\n")
        files = {"topology/physical_package_id": "0", "topology/core_id": str(i),
                 "topology/core_siblings_list": f"0-{cores - 1}",
                 "topology/cluster_cpus_list": f"0-{cores - 1}",
                 "topology/thread_siblings_list": str(i),
                 "cpufreq/cpuinfo_max_freq": str(mhz * 1000),
                 "cpufreq/cpuinfo_min_freq": "600000"}
        for rel, value in files.items():
            (sysfs / f"cpu{i}" / rel).parent.mkdir(parents=True, exist_ok=True)
            (sysfs / f"cpu{i}" / rel).write_text(value + "\n")
    for rel in ("possible", "present", "online"):
        (sysfs / rel).write_text(f"0-{cores - 1}\n")
    (sysfs / "kernel_max").write_text(f"{cores - 1}\n")
    (folder / "cpuinfo").write_text("\n".join(text) + f"\nModel\t\t: {name} (qemu-user -cpu "
                                    f"{cpu}, emulated)\n")
    return folder


def device_python(rootfs: Path, cpu: str, code_or_args: list[str], site: str,
                  env: dict | None = None, timeout=600) -> subprocess.CompletedProcess:
    """Runs the root filesystem's python3 under qemu-user inside a chroot, in a private mount
    namespace with /proc and the device's CPU description. qemu is called explicitly, so this
    works with or without binfmt_misc (python3 starts no subprocess)."""
    envs = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
            "PYTHONPATH": f"{SITES[site]}:{DEVICE_SRC}", "PYTHONDONTWRITEBYTECODE": "1",
            **(env or {})}
    desc = device_description(rootfs.parent, cpu)
    (rootfs / "sys/devices/system/cpu").mkdir(parents=True, exist_ok=True)
    (rootfs / "proc").mkdir(exist_ok=True)
    script = (f'mount -t proc proc "{rootfs}/proc" '
              f'&& mount --bind "{desc}/cpuinfo" "{rootfs}/proc/cpuinfo" '
              f'&& mount --bind "{desc}/cpu" "{rootfs}/sys/devices/system/cpu" && exec "$@"')
    # the environment is passed by chroot (a host binary) to qemu, and by qemu to python3
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
           "chroot", str(rootfs), QEMU, "-cpu", cpu, "/usr/bin/python3", "-X", "faulthandler",
           *code_or_args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=envs)


def check_env(rootfs: Path, site: str, cpu: str = "cortex-a72") -> dict:
    module = {"ai-edge-litert": "ai_edge_litert", "tflite-runtime": "tflite_runtime"}[site]
    code = (f"import json, platform, sys, numpy, importlib.metadata as m, "
            f"{module}.interpreter; print(json.dumps({{'machine': platform.machine(), "
            f"'python': sys.version.split()[0], 'numpy': numpy.__version__, "
            f"'runtime': '{site}', 'runtime_version': m.version('{site}'), "
            f"'debian': open('/etc/debian_version').read().strip()}}))")
    proc = device_python(rootfs, cpu, ["-c", code], site, timeout=300)
    if proc.returncode != 0:
        raise SetupFailed(f"the arm64 python cannot import numpy + {site}:\n"
                          f"{proc.stderr[-2000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    if info["machine"] != "aarch64":
        raise SetupFailed(f"the device python reports machine {info['machine']!r}")
    return info


def setup(cache: Path, method: str, rebuild: bool) -> dict:
    """Creates (or reuses) the arm64 root filesystem with numpy + ai-edge-litert."""
    if os.geteuid() != 0:
        raise SetupFailed("needs root (debootstrap and chroot)")
    for tool in ("debootstrap", QEMU, "chroot", "unshare", "dpkg-deb"):
        if not shutil.which(tool):
            raise SetupFailed(f"{tool} not found: apt-get install qemu-user-static debootstrap")
    rootfs, stamp = cache / "rootfs", cache / "setup.json"
    versions = host_versions()
    with locked(cache.parent / (cache.name + ".lock")):
        if stamp.exists() and not rebuild:
            record = json.loads(stamp.read_text())
            if record.get("wheels") == [versions["ai-edge-litert"], versions["numpy"]]:
                try:
                    record["check"] = {site: check_env(rootfs, site) for site in SITES}
                    record["reused"] = True
                    log(f"reusing {rootfs} (set up {record['created']})")
                    return record
                except SetupFailed as exc:
                    log(f"cached environment unusable, rebuilding: {exc}")
        stamp.unlink(missing_ok=True)
        if rootfs.exists():
            shutil.rmtree(rootfs)
        cache.mkdir(parents=True, exist_ok=True)
        timings, mirror = {}, apt_mirror()
        if method == "auto":
            method = "second-stage" if binfmt_aarch64() else "extract"
        log(f"debootstrap --foreign {SUITE} arm64 from {mirror} (method: {method})")
        t = time.perf_counter()
        run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase",
             "--include=python3", SUITE, str(rootfs), mirror])
        timings["debootstrap_first_stage_s"] = time.perf_counter() - t
        shutil.copy2(QEMU, rootfs / QEMU.lstrip("/"))
        t = time.perf_counter()
        if method == "second-stage":
            if not binfmt_aarch64():
                raise SetupFailed("binfmt_misc has no enabled qemu-aarch64 entry; mount "
                                  "binfmt_misc and `update-binfmts --enable qemu-aarch64`, "
                                  "or use --setup extract")
            log("debootstrap --second-stage in the chroot (binfmt_misc + qemu; ~5 min)")
            run(["chroot", str(rootfs), "/debootstrap/debootstrap", "--second-stage"])
        else:
            debs = sorted((rootfs / "var/cache/apt/archives").glob("*.deb"))
            log(f"unpacking {len(debs)} .debs with dpkg-deb -x (no binfmt_misc needed)")
            for deb in debs:
                run(["dpkg-deb", "-x", str(deb), str(rootfs)])
            run(["chroot", str(rootfs), QEMU, "/sbin/ldconfig"])
        timings[f"rootfs_{method.replace('-', '_')}_s"] = time.perf_counter() - t
        specs = {"ai-edge-litert": [f"ai-edge-litert=={versions['ai-edge-litert']}",
                                    f"numpy=={versions['numpy']}"],
                 "tflite-runtime": TFLITE_RUNTIME_SPEC}
        common = [*wheel_platforms(), "--implementation", "cp", "--python-version", PY_TAG,
                  "--abi", f"cp{PY_TAG.replace('.', '')}", "--only-binary=:all:"]
        timings["pip_download_s"] = timings["pip_install_s"] = 0.0
        for site, spec in specs.items():
            wheels = cache / "wheels" / site
            log(f"pip: aarch64 wheels {' '.join(spec)} into {SITES[site]}")
            t = time.perf_counter()
            run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-d",
                 str(wheels), *common, *spec], timeout=900)
            timings["pip_download_s"] += time.perf_counter() - t
            t = time.perf_counter()
            run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
                 "--no-index", "--find-links", str(wheels), "--target",
                 str(rootfs / SITES[site].lstrip("/")), *common, *spec], timeout=900)
            timings["pip_install_s"] += time.perf_counter() - t
        t = time.perf_counter()
        info = {site: check_env(rootfs, site) for site in SITES}
        timings["first_import_check_s"] = time.perf_counter() - t
        record = {"created": _dt.datetime.now().isoformat(timespec="seconds"),
                  "method": method, "mirror": mirror, "suite": SUITE, "timings": timings,
                  "setup_total_s": sum(timings.values()),
                  "wheels": [versions["ai-edge-litert"], versions["numpy"]],
                  "wheel_files": sorted(p.name for p in (cache / "wheels").glob("*/*.whl")),
                  "rootfs_size_mb": _du_mb(rootfs), "check": info}
        stamp.write_text(json.dumps(record, indent=1))
        record["reused"] = False
        log(f"set up in {record['setup_total_s']:.0f} s: {timings}")
        return record


def _du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True).stdout
    return float(out.split()[0]) if out else float("nan")


# ------------------------------------------------------------------ host: models and batches

def export_models(names: list[str], folder: Path, steps: int) -> dict:
    """Exports ``names`` as the portability tests do (``common.export``), with ``steps + 1``
    batches each, into ``folder``."""
    out = {}
    for name in names:
        t = time.perf_counter()
        path = folder / f"{name}.tflite"
        scheme = common.export(name, path, folder / f"{name}-inputs.npz", steps + 1)
        out[name] = {"scheme": scheme, "file_bytes": path.stat().st_size,
                     "export_s": round(time.perf_counter() - t, 1)}
        log(f"exported {name} ({scheme}, batch {BATCH}): {path.stat().st_size} bytes")
    return out


# ------------------------------------------------------------------ comparison

def compare(device: dict, host: dict) -> dict:
    def rel(a, b):
        return abs(a - b) / max(abs(b), 1e-30)

    losses_d = device["losses"] + [device["loss_after_save"]]
    losses_h = host["losses"] + [host["loss_after_save"]]
    loss_rel = max(rel(a, b) for a, b in zip(losses_d, losses_h))
    weights = {}
    for path in host["weights"]:
        d, h = decode(device["weights"][path]), decode(host["weights"][path])
        weights[path] = {"shape": list(h.shape), "max_abs_diff": float(np.max(np.abs(d - h)))
                         if h.size else 0.0, "bit_identical": d.tobytes() == h.tobytes()}
    outputs = {}
    for key in ARRAYS:
        d, h = decode(device[key]), decode(host[key])
        diff = np.abs(d.astype(np.float64) - h.astype(np.float64))
        outputs[key] = {"max_abs_diff": float(diff.max()),
                        "max_rel_diff": float((diff / np.maximum(np.abs(h), 1e-30)).max()),
                        "within_tol": bool(np.allclose(d, h, rtol=OUTPUT_RTOL,
                                                       atol=OUTPUT_ATOL)),
                        "bit_identical": d.tobytes() == h.tobytes()}
    max_w = max((w["max_abs_diff"] for w in weights.values()), default=0.0)
    # training moved the weights: the step is not vacuous
    before, after = decode(host["infer_before"]), decode(host["infer_after"])
    checks = {
        "same_weight_names": sorted(device["weights"]) == sorted(host["weights"]),
        "losses_finite": bool(np.all(np.isfinite(losses_d))),
        "loss_within_1e-5_rel": loss_rel <= LOSS_RTOL,
        "weights_within_1e-5_abs": max_w <= WEIGHT_ATOL,
        "outputs_within_tol": all(o["within_tol"] for o in outputs.values()),
        "device_checkpoint_restore_exact": bool(
            device["restored_equal"] and device["fresh_restored_equal"]
            and device["loss_after_restore"] == device["loss_after_save"]),
        "training_changed_output": before.tobytes() != after.tobytes(),
    }
    return {
        "ok": all(checks.values()), "checks": checks,
        "losses_x86": losses_h, "losses_aarch64": losses_d,
        "loss_max_rel_diff": loss_rel,
        "loss_bit_identical": losses_d == losses_h,
        "weights_max_abs_diff": max_w,
        "weights_bit_identical": all(w["bit_identical"] for w in weights.values()),
        "weights_compared": len(weights),
        "weight_values_compared": int(sum(np.prod(w["shape"]) for w in weights.values())),
        "outputs": outputs, "weights": weights,
    }


# ------------------------------------------------------------------ main

def host_machine() -> dict:
    cpu = ""
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1) if m else ""
    debian = ""
    with contextlib.suppress(OSError):
        debian = Path("/etc/debian_version").read_text().strip()
    return {"hostname": platform.node(), "machine": platform.machine(), "cpu": cpu,
            "cores": os.cpu_count(), "kernel": platform.release(), "debian": debian,
            "python": platform.python_version()}


# The device runs. ai-edge-litert's aarch64 wheels (1.4.0 to 2.3.0, all tried) end the process
# with SIGSEGV in InterpreterWrapper::ResizeInputTensor when a signature input is 0-d, which
# tfpock's `learning_rate` is: their compiled code zeroes a std::vector<int> of n dims as
# "store element 0, then memset(data + 4, 0, 4 * n - 4)", so n = 0 gives memset(-4) (the x86-64
# build does memset(data, 0, 4 * n)). That is the instruction stream, not an emulation effect.
# So the check runs ai-edge-litert as shipped (expected to crash: recorded), then with
# SHIM, which only skips that resize for 0-d inputs (the tensor already has shape ()), and
# tflite-runtime 2.14 unmodified.
SHIM = '''"""Device launcher: ai-edge-litert with the 0-d ResizeInputTensor call skipped, then the
unmodified protocol script. Written by tests/portability/aarch64_check.py."""
import sys

import ai_edge_litert.interpreter as _li


class _SkipScalarResize:
    def __init__(self, wrapper):
        self._wrapper = wrapper

    def __getattr__(self, name):
        return getattr(self._wrapper, name)

    def ResizeInputTensor(self, index, dims, strict, subgraph):
        if len(dims) == 0:  # a 0-d input keeps the shape () it was compiled with
            return None
        return self._wrapper.ResizeInputTensor(index, dims, strict, subgraph)


_init = _li.SignatureRunner.__init__


def _patched_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self._interpreter_wrapper = _SkipScalarResize(self._interpreter_wrapper)


_li.SignatureRunner.__init__ = _patched_init
sys.path.insert(0, "/opt/tfpock-src")
import device_protocol  # noqa: E402

sys.exit(device_protocol.main(sys.argv[1:]))
'''
VARIANTS = {  # name -> (site, launcher in DEVICE_SRC, runtime for Trainer, what it is)
    "ai-edge-litert": ("ai-edge-litert", "device_protocol.py", "ai-edge-litert",
                       "ai-edge-litert aarch64 wheel as shipped, tfpock Trainer unmodified"),
    "ai-edge-litert+scalar-resize-shim": (
        "ai-edge-litert", "_aarch64_shim.py", "ai-edge-litert",
        "ai-edge-litert aarch64 wheel, SignatureRunner's ResizeInputTensor skipped for 0-d "
        "inputs (works around the wheel's crash; kernels and Trainer unmodified)"),
    "tflite-runtime": ("tflite-runtime", "device_protocol.py", "tflite-runtime",
                       "tflite-runtime 2.14.0 aarch64 wheel with numpy<2, unmodified"),
}


def write_note(result: dict, md: Path) -> None:
    lines = ["# Portability: aarch64 TFLite runtimes under qemu-user emulation", "",
             f"Run {result['date']} by `python -m tests.portability.aarch64_check` "
             f"(full data: `{Path(str(md)).with_suffix('.json').name}`).", ""]
    if "setup_error" in result:
        lines += ["**Not done: the arm64 environment could not be set up.**", "",
                  "```", result["setup_error"], "```", ""]
        md.write_text("\n".join(lines))
        return
    h, s = result["host"], result["setup"]
    dev = next(iter(s["check"].values()))
    lines += [
        f"- Host (x86-64 reference): {h['machine']['cpu']} ({h['machine']['cores']} cores), "
        f"Linux {h['machine']['kernel']}, Debian {h['machine']['debian']}, Python "
        f"{h['machine']['python']}, ai-edge-litert {h['ai-edge-litert']}, numpy {h['numpy']}; "
        f"TensorFlow {h['tensorflow']} exports the models.",
        f"- Device: Debian {dev['debian']} arm64 root filesystem (debootstrap, {s['method']}, "
        f"{s['mirror']}), Python {dev['python']} ({dev['machine']}), no TensorFlow; "
        f"{h['qemu']}, `-cpu {result['cpu']}` with a matching /proc/cpuinfo "
        f"({result['cpu_description']}). Runtimes: "
        + "; ".join(f"{c['runtime']} {c['runtime_version']} + numpy {c['numpy']}"
                    for c in s["check"].values())
        + f" (PyPI aarch64 wheels). Repo files copied there: "
          f"{', '.join(result['copied_to_device'])}.",
        "- Protocol (`tests/portability/device_protocol.py`): load, infer, "
        f"{result['steps']} train step(s), weights, save, one more step, restore, restore into "
        f"a fresh Trainer; batch {BATCH}, SGD {LR}, one thread, the same .tflite files and "
        "batches on both sides; the x86-64 side runs it in process on ai-edge-litert.",
        f"- Tolerances: loss {LOSS_RTOL:g} relative, weights {WEIGHT_ATOL:g} absolute, "
        f"inference outputs {OUTPUT_RTOL:g} relative + {OUTPUT_ATOL:g} absolute.", ""]
    for vname, v in result["variants"].items():
        lines += [f"## {vname}", "", v["what"], ""]
        if "error" in v:
            lines += [f"**Did not run to the end**: {v['error']}", "", "```",
                      v.get("stderr_tail", "").strip(), "```", ""]
            continue
        lines += ["| model | scheme | weights (values) | loss x86 | loss aarch64 | max loss rel "
                  "diff | max weight abs diff | max output abs diff | bit-identical | result |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in v["models"].items():
            if "error" in r:
                lines.append(f"| {name} | {r.get('scheme', '')} | | | | | | | | **error**: "
                             f"{r['error'].splitlines()[0][:200]} |")
                continue
            out = max(o["max_abs_diff"] for o in r["outputs"].values())
            bits = "loss+weights" if r["loss_bit_identical"] and r["weights_bit_identical"] \
                else ("weights" if r["weights_bit_identical"] else "no")
            failed = [k for k, val in r["checks"].items() if not val]
            lines.append(
                f"| {name} | {r['scheme']} | {r['weights_compared']} "
                f"({r['weight_values_compared']}) | {r['losses_x86'][0]:.7g} | "
                f"{r['losses_aarch64'][0]:.7g} | {r['loss_max_rel_diff']:.2g} | "
                f"{r['weights_max_abs_diff']:.2g} | {out:.2g} | {bits} | "
                f"{'match' if r['ok'] else 'FAIL: ' + ', '.join(failed)} |")
        lines += ["", f"Emulated run of all models: {v['device_run_s']:.0f} s.", ""]
    t = s.get("timings", {})
    lines += ["## Setup and times", "",
              f"Environment {'reused from the cache' if s.get('reused') else 'built by this run'}"
              f"; built {s['created']} in {s['setup_total_s']:.0f} s: "
              + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {val:.0f} s"
                          for k, val in t.items())
              + f"; root filesystem {s.get('rootfs_size_mb', float('nan')):.0f} MB.", "",
              "**Emulated times are not speed figures**: qemu-user translates every aarch64 "
              "instruction on an x86-64 core, so they say nothing about a Raspberry Pi or any "
              "other aarch64 device.", ""]
    md.write_text("\n".join(lines))


PROBE = """
import json, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
i = Interpreter(model_path=sys.argv[1], num_threads=1)
train = i.get_signature_runner("train")
index = train._inputs["learning_rate"]
print(json.dumps({"step": "infer", "ok": bool(np.all(np.isfinite(
    i.get_signature_runner("infer")(x=np.load(sys.argv[2])["x0"])["output"])))}), flush=True)
print(json.dumps({"step": "resize 0-d learning_rate"}), flush=True)
train._interpreter_wrapper.ResizeInputTensor(index, np.array((), np.int32), False,
                                             train._subgraph_index)
print(json.dumps({"step": "survived"}), flush=True)
"""


def probe_scalar_resize(rootfs: Path, cpu: str, name: str) -> dict:
    """The smallest reproduction of the crash: infer, then ResizeInputTensor(index, []) on
    the train signature's 0-d learning_rate input, nothing else."""
    proc = device_python(rootfs, cpu, ["-c", PROBE, f"{DEVICE_WORK}/{name}.tflite",
                                       f"{DEVICE_WORK}/{name}-inputs.npz"], "ai-edge-litert")
    steps = [json.loads(line)["step"] for line in proc.stdout.splitlines()
             if line.startswith("{")]
    survived = "survived" in steps if "resize 0-d learning_rate" in steps else None
    log(f"  probe (infer, then ResizeInputTensor of a 0-d input): exit {proc.returncode}, "
        f"reached {steps}")
    return {"model": name, "returncode": proc.returncode, "reached": steps,
            "survived": survived}


def run_variant(rootfs: Path, cpu: str, vname: str, names: list[str], steps: int,
                host: dict, exports: dict) -> dict:
    site, launcher, runtime, what = VARIANTS[vname]
    request = {"runtime": runtime, "num_threads": 1, "steps": steps,
               "workdir": f"{DEVICE_WORK}/device-{vname}",
               "models": {n: {"path": f"{DEVICE_WORK}/{n}.tflite",
                              "inputs": f"{DEVICE_WORK}/{n}-inputs.npz"} for n in names}}
    (rootfs / DEVICE_WORK.lstrip("/") / f"request-{vname}.json").write_text(json.dumps(request))
    log(f"aarch64 [{vname}] (qemu -cpu {cpu}): protocol, emulated (slow)")
    t = time.perf_counter()
    proc = device_python(rootfs, cpu, [f"{DEVICE_SRC}/{launcher}",
                                       f"{DEVICE_WORK}/request-{vname}.json"], site,
                         timeout=DEVICE_TIMEOUT)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        sig = f" (signal {-proc.returncode})" if proc.returncode < 0 else ""
        log(f"  [{vname}] device process exited {proc.returncode}{sig} after {elapsed:.0f} s")
        error = f"the device process exited {proc.returncode}{sig}"
        probe = None
        if site == "ai-edge-litert" and names:
            probe = probe_scalar_resize(rootfs, cpu, names[0])
            if probe["survived"] is False:
                error += ("; a probe confirms the cause: the process dies in the wrapper's "
                          "ResizeInputTensor of the 0-d learning_rate input, after infer "
                          "worked (see SHIM in tests/portability/aarch64_check.py)")
        return {"what": what, "ok": False, "device_run_s": elapsed, "error": error,
                "probe": probe,
                "stderr_tail": "\n".join(proc.stderr.strip().splitlines()[-14:])}
    report = json.loads(proc.stdout)
    models = {}
    for name in names:
        dev = report["results"][name]
        if "error" in dev:
            models[name] = {"scheme": exports[name]["scheme"], "ok": False,
                            "error": dev["error"], "traceback": dev.get("traceback")}
        else:
            models[name] = {**exports[name], **compare(dev, host[name])}
        r = models[name]
        log(f"  [{vname}] {name}: " + (
            f"ERROR {r['error']}" if "error" in r else
            f"loss rel diff {r['loss_max_rel_diff']:.2g}, weight abs diff "
            f"{r['weights_max_abs_diff']:.2g}, {'match' if r['ok'] else 'MISMATCH'}"))
    log(f"  [{vname}] emulated run: {elapsed:.0f} s (not a speed figure)")
    return {"what": what, "ok": all(m["ok"] for m in models.values()),
            "device_run_s": elapsed, "runtime_version": report["runtime_version"],
            "numpy": report["numpy"], "python": report["python"],
            "tfpock_runtime_file": report["tfpock_runtime_file"],
            "tensorflow_import_error": report["tensorflow_import_error"],
            "tf_modules_loaded": report["tf_modules_loaded"], "models": models}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=DEFAULT_CACHE,
                    help="folder of the arm64 root filesystem and wheels (default %(default)s, "
                         "or $TFPOCK_AARCH64_CACHE)")
    ap.add_argument("--setup", choices=("auto", "second-stage", "extract"), default="extract",
                    help="how to finish the root filesystem: dpkg-deb -x + ldconfig (default: "
                         "~40 s, no binfmt_misc needed), debootstrap's second stage (~5 min, "
                         "needs binfmt_misc), or auto (second stage when binfmt_misc is on)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached environment")
    ap.add_argument("--setup-only", action="store_true")
    ap.add_argument("--cpu", default="cortex-a72", choices=sorted(CPUS),
                    help="qemu CPU model and the matching /proc/cpuinfo (default %(default)s, "
                         "the Raspberry Pi 4's core; cortex-a76: Pi 5; cortex-a53: Pi 3)")
    ap.add_argument("--models", default="mlp,cnn,mobilenet_v2")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="device runs, from: " + ", ".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=1, help="train steps before the comparison")
    ap.add_argument("--out", default=str(RESULTS / "aarch64-portability"),
                    help="output path without suffix (.json and .md are written)")
    args = ap.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    out_json, out_md = Path(args.out + ".json"), Path(args.out + ".md")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    date = _dt.datetime.now().isoformat(timespec="seconds")

    cache = Path(args.cache)
    try:
        setup_record = setup(cache, args.setup, args.rebuild)
    except (SetupFailed, subprocess.TimeoutExpired, OSError) as exc:
        msg = f"{type(exc).__name__}: {exc}"
        log("SETUP FAILED: " + msg)
        result = {"date": date, "setup_error": msg, "host": {"machine": host_machine()}}
        out_json.write_text(json.dumps(result, indent=1))
        write_note(result, out_md)
        return 2
    if args.setup_only:
        return 0
    with locked(cache / "run.lock"):  # one run at a time per cache: they share the rootfs
        return run_check(args, cache / "rootfs", names, variants, setup_record, date,
                         out_json, out_md)


def run_check(args, rootfs: Path, names: list[str], variants: list[str], setup_record: dict,
              date: str, out_json: Path, out_md: Path) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    # the device's files: only the runtime and the protocol script, fresh from the repo
    src = rootfs / DEVICE_SRC.lstrip("/")
    if src.exists():
        shutil.rmtree(src)
    (src / "tfpock").mkdir(parents=True)
    shutil.copy2(REPO / "tfpock" / "__init__.py", src / "tfpock" / "__init__.py")
    shutil.copytree(REPO / "tfpock" / "runtime", src / "tfpock" / "runtime",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(REPO / "tests" / "portability" / "device_protocol.py",
                 src / "device_protocol.py")
    (src / "_aarch64_shim.py").write_text(SHIM)
    copied = ["tfpock/__init__.py"] + sorted(
        f"tfpock/runtime/{p.name}" for p in (src / "tfpock" / "runtime").glob("*.py")) + \
        ["tests/portability/device_protocol.py"]

    work = rootfs / DEVICE_WORK.lstrip("/")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    exports = export_models(names, work, args.steps)

    log("x86-64: protocol on the host's ai-edge-litert (in process)")
    host = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            host[name] = run_protocol(work / f"{name}.tflite", "ai-edge-litert",
                                      load_inputs(work / f"{name}-inputs.npz"), args.steps,
                                      Path(tmp) / name, num_threads=1)
            log(f"  {name}: losses {host[name]['losses']}")

    results = {v: run_variant(rootfs, args.cpu, v, names, args.steps, host, exports)
               for v in variants}
    cpu = CPUS[args.cpu]
    result = {
        "date": date, "cpu": args.cpu,
        "cpu_description": f"{cpu[0]}: {cpu[1]} cores, part {cpu[5]}",
        "steps": args.steps, "batch": BATCH, "learning_rate": LR, "num_threads": 1,
        "tolerances": {"loss_rel": LOSS_RTOL, "weight_abs": WEIGHT_ATOL,
                       "output_rel": OUTPUT_RTOL, "output_abs": OUTPUT_ATOL},
        "ok": {v: r["ok"] for v, r in results.items()},
        "host": {"machine": host_machine(), **host_versions(), "tensorflow": tf.__version__},
        "setup": setup_record, "copied_to_device": copied,
        "note": "Emulated times (device_run_s, setup timings) are not speed figures of any "
                "aarch64 device: qemu-user translates every instruction.",
        "variants": results,
    }
    out_json.write_text(json.dumps(result, indent=1))
    write_note(result, out_md)
    log(f"wrote {out_json} and {out_md}: " +
        ", ".join(f"{v}: {'match' if ok else 'FAIL'}" for v, ok in result["ok"].items()))
    return 0 if all(result["ok"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
