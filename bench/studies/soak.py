"""Soak (issue 15): many device-side steps of a small CNN, checkpointing as it goes; does the
loss stay finite, does resident memory grow, do file descriptors leak?

The host compiles ``every_layer_cnn(dropout=0.0)`` (``tfpock.testing.models``; SGD 0.2,
scheme ``full``, batch 8) once and exports it. The device side then runs in a fresh process
with TensorFlow blocked (``tests/portability/device_protocol.py``'s meta-path blocker, loaded
by file path so the ``tests`` package is not imported), so the memory measured is the
runtime's (numpy, ai-edge-litert, ``tfpock.runtime``), not TensorFlow's ~700 MB. There it
trains ``tfpock.runtime.Trainer`` (1 thread) one step at a time on a fixed, seeded dataset
of ``--samples`` images, batches in a fixed cycle. The rule is learnable: noise with 1.0
added to one quadrant, the class is the quadrant with the brightest mean; the loss falls
from ln 4 to near 0 within ~1,000 steps. Every ``--checkpoint_every`` steps it saves a
checkpoint (one file, overwritten atomically); every ``--restore_every``-th checkpoint it
restores it and checks the state came back bit-equal. Every ``--sample_every`` steps it
reads its resident set (``/proc/self/statm``) and counts its open file descriptors
(``/proc/self/fd``). What the device records is preallocated and touched before the loop
(a growing list of 20,000 losses alone would add ~32 bytes a step to the slope measured).

Reported: steps, wall time, steps/s; the losses (first, last, min, max, means of the first
and last 100 steps, all finite?); RSS at step 0, after the warm-up (``--warmup`` steps) and
at the end, the peak (sampled, and ``VmHWM``), the least-squares slope of RSS over the steps
after the warm-up in bytes/step and its total over the run, the residual around that line,
and the growth split into sample intervals with a checkpoint and without; fds at the start
and end; checkpoints written and restored. The pass/fail criteria (:func:`criteria`): no
exception, every loss finite, as many fds at the end as at the start, the RSS slope after
warm-up below ``RSS_SLOPE_BOUND`` bytes/step, restores bit-equal, no TensorFlow module loaded
on the device.

Run from the repository root: ``python -m bench.studies.soak [--steps 20000]
[--checkpoint_every 1000] [--cpu 1]`` (about a minute here). Writes
``bench/results/<date>-<machine>-soak.{json,md}`` and ``...-soak.png`` (RSS and loss over
the steps; when matplotlib is installed). ``tests/runtime/test_soak.py`` runs 1,000 steps of
it in CI.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench import cli

DEVICE_PROTOCOL = os.path.join(cli.REPO, "tests", "portability", "device_protocol.py")

# Bound on the RSS slope after the warm-up, bytes per step (20,000 steps: < 1.3 MB). RSS
# grows in steps of 4 KB pages, most of them at checkpoints: in 2026-12-03-x86_64-2core-soak
# 244 KB in all after the warm-up, 48 KB at the first save, 120 KB at the first restore,
# 16 KB over the 20,000 steps between checkpoints; fitted slope 10.7 bytes/step, residual
# 36 KB. The bound is six times that: a leak of one Python float a step (32 bytes with its
# list slot) would hide under it, one small numpy array a step (>= 112 bytes) or anything
# the size of a batch would not.
RSS_SLOPE_BOUND = 64.0
BATCH, LEARNING_RATE, OFFSET = 8, 0.2, 1.0

# The device process: block TensorFlow before anything else is imported, then run the loop.
_DEVICE_MAIN = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("device_protocol", sys.argv[1])
protocol = importlib.util.module_from_spec(spec)
spec.loader.exec_module(protocol)
protocol._block_tensorflow()
from bench.studies import soak
sys.exit(soak.device_main(sys.argv[2]))
"""


def export_model(path: str | os.PathLike, seed: int = 0) -> dict:
    """Host side (TensorFlow): compiles ``every_layer_cnn(dropout=0.0)`` with scheme ``full``,
    SGD ``LEARNING_RATE``, batch ``BATCH``, and exports it to ``path``. Returns what the
    device needs to build its data and what the report says of the model."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    import tfpock
    from tfpock.testing import models
    model = models.every_layer_cnn(seed=seed, dropout=0.0)
    start = time.perf_counter()
    program = tfpock.optimize(
        model, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=keras.optimizers.SGD(LEARNING_RATE), scheme="full", batch_size=BATCH)
    program.export(path)
    return {"model": model.name, "scheme": "full", "batch": BATCH,
            "learning_rate": LEARNING_RATE, "input_shape": list(model.inputs[0].shape[1:]),
            "classes": int(model.outputs[0].shape[-1]),
            "trained_parameters": int(sum(v.size for v in program.weights().values())),
            "compile_export_s": time.perf_counter() - start,
            "file_bytes": os.path.getsize(path)}


def dataset(input_shape, classes: int, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` images, uniform noise in [-1, 1] with ``OFFSET`` added to one of four
    quadrants; the label is the quadrant with the largest mean (so ``classes`` must be 4)."""
    if classes != 4:
        raise ValueError(f"the quadrant rule needs 4 classes, the model has {classes}")
    rng = np.random.default_rng(seed)
    h, w = input_shape[0] // 2, input_shape[1] // 2
    x = rng.uniform(-1, 1, (samples, *input_shape)).astype(np.float32)
    for i, q in enumerate(rng.integers(0, 4, samples)):
        x[i, (q // 2) * h:(q // 2 + 1) * h, (q % 2) * w:(q % 2 + 1) * w] += OFFSET
    quadrants = [x[:, r * h:(r + 1) * h, c * w:(c + 1) * w].mean(axis=(1, 2, 3))
                 for r in (0, 1) for c in (0, 1)]
    return x, np.argmax(np.stack(quadrants, axis=1), axis=1).astype(np.int32)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _vm_hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return -1


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def device_loop(request: dict) -> dict:
    """The device's soak (numpy and a TFLite runtime only): see the module docstring."""
    from tfpock.runtime import Trainer

    steps, every, warmup = request["steps"], request["sample_every"], request["warmup"]
    if warmup % every or steps % every or warmup >= steps:
        raise ValueError(f"warmup {warmup} and steps {steps} must be multiples of "
                         f"sample_every {every}, and warmup below steps")
    if request.get("cpu") is not None:
        os.sched_setaffinity(0, {request["cpu"]})
    x, y = dataset(request["input_shape"], request["classes"], request["samples"],
                   request["seed"])
    batch = request["batch"]
    batches = [(np.ascontiguousarray(x[i:i + batch]), np.ascontiguousarray(y[i:i + batch]))
               for i in range(0, len(x) - batch + 1, batch)]
    ckpt = os.path.join(request["workdir"], "ckpt.npz")
    os.makedirs(request["workdir"], exist_ok=True)
    trainer = Trainer(request["model_path"], runtime="ai-edge-litert", num_threads=1)

    # everything recorded is allocated and touched now, not page by page during the loop
    losses = np.full(steps, np.nan)
    n_samples = steps // every + 1
    sample_step, rss, fds = (np.full(n_samples, -1, np.int64) for _ in range(3))
    fds_first = _open_fds()
    checkpoints = restores = restore_mismatches = not_applied = 0
    start = time.perf_counter()
    k = 0
    for step in range(steps + 1):
        if step % every == 0:
            sample_step[k], rss[k], fds[k] = step, _rss_bytes(), _open_fds()
            k += 1
        if step == steps:
            break
        out = trainer.train(*batches[step % len(batches)])
        losses[step] = out["loss"]
        not_applied += not out.get("applied", True)   # the non-finite guard, where it exists
        if (step + 1) % request["checkpoint_every"] == 0:
            trainer.save(ckpt)
            checkpoints += 1
            if checkpoints % request["restore_every"] == 0:
                saved = trainer.state()
                trainer.restore(ckpt)
                restores += 1
                restored = trainer.state()
                restore_mismatches += any(saved[n].tobytes() != restored[n].tobytes()
                                          for n in saved)
                del saved, restored
    wall = time.perf_counter() - start
    return {"steps": steps, "wall_s": wall, "steps_per_s": steps / wall,
            "losses": losses.tolist(), "not_applied": not_applied,
            "sample_step": sample_step.tolist(), "rss_bytes": rss.tolist(),
            "fds": fds.tolist(), "fds_before_loop": fds_first, "vm_hwm_bytes": _vm_hwm_bytes(),
            "checkpoint_every": request["checkpoint_every"],
            "checkpoints": checkpoints, "restores": restores,
            "restore_mismatches": restore_mismatches, "runtime": trainer.runtime,
            "tf_modules_loaded": sorted(m for m in sys.modules
                                        if m.split(".")[0] in ("tensorflow", "keras"))}


def device_main(request_path: str) -> int:
    """Entry of the device process: reads the request, runs :func:`device_loop`, writes its
    result (or the error) to the request's ``result_path``."""
    import traceback
    with open(request_path) as f:
        request = json.load(f)
    try:
        result = device_loop(request)
    except Exception as exc:  # reported, so the host can say what failed
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    with open(request["result_path"], "w") as f:
        json.dump(result, f)
    return 0


def run_device(model_path: str | os.PathLike, model_info: dict, *, steps: int,
               checkpoint_every: int, restore_every: int = 5, sample_every: int = 20,
               warmup: int = 200, samples: int = 256, seed: int = 7, cpu: int | None = None,
               workdir: str | os.PathLike | None = None) -> dict:
    """Runs the soak in a fresh process with TensorFlow blocked; returns :func:`summarize` of
    what it recorded (or ``{"error": ...}``)."""
    workdir = os.fspath(workdir) if workdir else tempfile.mkdtemp(prefix="tfpock-soak-")
    request = {"model_path": os.fspath(model_path), "steps": steps,
               "checkpoint_every": checkpoint_every, "restore_every": restore_every,
               "sample_every": sample_every, "warmup": warmup, "samples": samples,
               "seed": seed, "cpu": cpu, "batch": model_info["batch"],
               "input_shape": model_info["input_shape"], "classes": model_info["classes"],
               "workdir": os.path.join(workdir, "device"),
               "result_path": os.path.join(workdir, "result.json")}
    request_path = os.path.join(workdir, "request.json")
    with open(request_path, "w") as f:
        json.dump(request, f)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _DEVICE_MAIN, DEVICE_PROTOCOL, request_path],
                          cwd=cli.REPO, capture_output=True, text=True)
    process_s = time.perf_counter() - start
    if proc.returncode or not os.path.exists(request["result_path"]):
        return {"error": f"device process exited {proc.returncode}: {proc.stderr[-2000:]}"}
    with open(request["result_path"]) as f:
        raw = json.load(f)
    if "error" in raw:
        return raw
    return dict(summarize(raw, warmup), request={k: v for k, v in request.items()
                                                 if not k.endswith("path")},
                process_s=process_s)


def summarize(raw: dict, warmup: int) -> dict:
    """The figures of a run: losses, RSS after warm-up, peak, the least-squares slope of RSS
    over the steps after warm-up (bytes/step), fds, checkpoints."""
    losses = np.asarray(raw["losses"])
    step, rss = np.asarray(raw["sample_step"]), np.asarray(raw["rss_bytes"], np.float64)
    after = step >= warmup
    slope, intercept = np.polyfit(step[after], rss[after], 1)
    residual = rss[after] - (slope * step[after] + intercept)
    every = int(step[1] - step[0])
    # RSS changes over sample intervals with no checkpoint in them: the train steps' own share
    ce = raw["checkpoint_every"]
    quiet = [(a, b) for a, b in zip(range(len(step) - 1), range(1, len(step)))
             if step[a] >= warmup and (step[b] // ce) == (step[a] // ce)]
    quiet_growth = float(sum(rss[b] - rss[a] for a, b in quiet))
    window = [float(losses[i:i + every].mean()) for i in step[:-1]]
    return {
        "steps": raw["steps"], "wall_s": raw["wall_s"], "steps_per_s": raw["steps_per_s"],
        "runtime": raw["runtime"], "tf_modules_loaded": raw["tf_modules_loaded"],
        "loss": {"all_finite": bool(np.isfinite(losses).all()),
                 "non_finite": int((~np.isfinite(losses)).sum()),
                 "first": float(losses[0]), "last": float(losses[-1]),
                 "min": float(np.nanmin(losses)), "max": float(np.nanmax(losses)),
                 "first_100_mean": float(losses[:100].mean()),
                 "last_100_mean": float(losses[-100:].mean())},
        "not_applied": raw["not_applied"],
        "rss": {"warmup_steps": warmup,
                "at_start": int(rss[np.argmax(after)]), "at_step_0": int(rss[0]),
                "at_end": int(rss[-1]), "peak_sampled": int(rss.max()),
                "vm_hwm": raw["vm_hwm_bytes"],
                "slope_bytes_per_step": float(slope),
                "slope_total_bytes": float(slope * (step[-1] - warmup)),
                "residual_std_bytes": float(residual.std()),
                "growth_between_checkpoints_bytes": quiet_growth,
                "growth_at_checkpoints_bytes": float(rss[-1] - rss[np.argmax(after)]
                                                     - quiet_growth),
                "distinct_values_after_warmup": int(len(np.unique(rss[after])))},
        "fds": {"before_loop": raw["fds_before_loop"], "at_start": int(raw["fds"][0]),
                "at_end": int(raw["fds"][-1]), "max": int(max(raw["fds"]))},
        "checkpoints": raw["checkpoints"], "restores": raw["restores"],
        "restore_mismatches": raw["restore_mismatches"],
        "curve": {"step": step.tolist(), "rss_bytes": rss.astype(np.int64).tolist(),
                  "fds": raw["fds"], "loss_window_mean": window},
    }


def criteria(summary: dict, slope_bound: float = RSS_SLOPE_BOUND) -> list[tuple[str, bool, str]]:
    """The soak's pass/fail checks: (name, passed, the figure against its bound)."""
    if "error" in summary:
        return [("no exception", False, summary["error"][:500])]
    loss, rss, fds = summary["loss"], summary["rss"], summary["fds"]
    return [
        ("no exception", True, "the device process finished"),
        ("every loss finite", loss["all_finite"],
         f"{loss['non_finite']} non-finite of {summary['steps']}"),
        ("no fd leak", fds["at_end"] == fds["at_start"],
         f"{fds['at_start']} open at the start, {fds['at_end']} at the end"),
        ("RSS slope after warm-up", rss["slope_bytes_per_step"] < slope_bound,
         f"{rss['slope_bytes_per_step']:.2f} bytes/step < {slope_bound:g}"),
        ("checkpoints restore bit-equal", summary["restore_mismatches"] == 0,
         f"{summary['restores']} restores, {summary['restore_mismatches']} differed"),
        ("no TensorFlow on the device", not summary["tf_modules_loaded"],
         f"{len(summary['tf_modules_loaded'])} TF modules loaded"),
    ]


def _mb(value: float) -> str:
    return f"{value / 2**20:.2f} MB"


def markdown(doc: dict) -> str:
    s, m = doc["soak"], doc["model"]
    lines = [f"# Soak, {doc['date']} ({doc['machine']})", "",
             f"{s['steps']:,} device-side steps of `{m['model']}` (scheme `{m['scheme']}`, "
             f"batch {m['batch']}, SGD {m['learning_rate']}, {m['trained_parameters']:,} "
             f"trained parameters) on {s['runtime']}, 1 thread, in a process with TensorFlow "
             f"blocked; a checkpoint every {s['request']['checkpoint_every']:,} steps, every "
             f"{s['request']['restore_every']}th restored; RSS and fds sampled every "
             f"{s['request']['sample_every']} steps. Reproduce: `{doc['command']}`.", "",
             "| criterion | result | figure |", "|---|---|---|"]
    lines += [f"| {name} | {'PASS' if ok else 'FAIL'} | {text} |"
              for name, ok, text in doc["criteria"]]
    if "error" in s:
        return "\n".join(lines) + "\n"
    loss, rss, fds = s["loss"], s["rss"], s["fds"]
    lines += ["", "| figure | value |", "|---|---|",
              f"| wall time (device loop) | {s['wall_s']:.1f} s ({s['steps_per_s']:.0f} "
              "steps/s) |",
              f"| loss first / last / min / max | {loss['first']:.4f} / {loss['last']:.4f} / "
              f"{loss['min']:.4f} / {loss['max']:.4f} |",
              f"| loss mean, first / last 100 steps | {loss['first_100_mean']:.4f} / "
              f"{loss['last_100_mean']:.4f} |",
              f"| RSS at step 0 / after warm-up (step {rss['warmup_steps']}) / end | "
              f"{_mb(rss['at_step_0'])} / {_mb(rss['at_start'])} / {_mb(rss['at_end'])} |",
              f"| peak RSS sampled / VmHWM | {_mb(rss['peak_sampled'])} / "
              f"{_mb(rss['vm_hwm'])} |",
              f"| RSS slope after warm-up | {rss['slope_bytes_per_step']:.3f} bytes/step "
              f"({rss['slope_total_bytes'] / 1024:.1f} KB over the run) |",
              f"| RSS growth after warm-up: over intervals with a checkpoint / without | "
              f"{rss['growth_at_checkpoints_bytes'] / 1024:.0f} KB / "
              f"{rss['growth_between_checkpoints_bytes'] / 1024:.0f} KB |",
              f"| RSS residual std / distinct values after warm-up | "
              f"{rss['residual_std_bytes'] / 1024:.1f} KB / "
              f"{rss['distinct_values_after_warmup']} |",
              f"| fds before the loop / at step 0 / end / max | {fds['before_loop']} / "
              f"{fds['at_start']} / {fds['at_end']} / {fds['max']} |",
              f"| checkpoints written / restored | {s['checkpoints']} / {s['restores']} |",
              f"| steps the runtime did not apply | {s['not_applied']} |",
              f"| host: compile and export | {m['compile_export_s']:.1f} s, "
              f"{m['file_bytes'] / 1024:.0f} KB file |"]
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: str) -> bool:
    """RSS and loss over the steps; False when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = doc["soak"]
    curve, rss = s["curve"], s["rss"]
    step = np.asarray(curve["step"])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(step, np.asarray(curve["rss_bytes"]) / 2**20, linewidth=0.8, label="RSS")
    after = step >= rss["warmup_steps"]
    fit = rss["at_start"] + rss["slope_bytes_per_step"] * (step[after] - rss["warmup_steps"])
    top.plot(step[after], fit / 2**20, "--", linewidth=0.8,
             label=f"fit after warm-up: {rss['slope_bytes_per_step']:.2f} bytes/step")
    top.set(ylabel="RSS (MB)", title=f"Soak: {s['steps']:,} steps, {doc['model']['model']}")
    top.legend(fontsize=8)
    bottom.plot(step[:-1], curve["loss_window_mean"], linewidth=0.8)
    bottom.set(yscale="log", xlabel="step",
               ylabel=f"loss (mean of {s['request']['sample_every']} steps)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def define_flags() -> None:
    """The command line (run as a script only: ``bench/cli.py`` says why)."""
    from absl import flags
    flags.DEFINE_integer("steps", 20000, "Device-side training steps.")
    flags.DEFINE_integer("checkpoint_every", 1000, "Steps between checkpoints.")
    flags.DEFINE_integer("restore_every", 5, "Restore every N-th checkpoint.")
    flags.DEFINE_integer("sample_every", 20, "Steps between RSS and fd samples.")
    flags.DEFINE_integer("warmup", 200, "Steps before the RSS fit starts.")
    flags.DEFINE_integer("samples", 256, "Size of the synthetic dataset.")
    flags.DEFINE_integer("cpu", None, "Pin the device process to this core.")
    cli.define_output_flags()
    flags.adopt_module_key_flags(cli)
    flags.DEFINE_string("work_dir", os.path.join(cli.RESULTS, "tmp-soak"),
                        "The exported model and the device's checkpoints.")


def main(argv):
    from absl import flags, logging
    del argv
    flag = flags.FLAGS
    os.makedirs(flag.work_dir, exist_ok=True)
    model_path = os.path.join(flag.work_dir, "every_layer_cnn-full-b8.tflite")
    model = export_model(model_path)
    logging.info("exported %s in %.1f s; soaking %d steps", model_path,
                 model["compile_export_s"], flag.steps)
    summary = run_device(model_path, model, steps=flag.steps,
                         checkpoint_every=flag.checkpoint_every,
                         restore_every=flag.restore_every, sample_every=flag.sample_every,
                         warmup=flag.warmup, samples=flag.samples, cpu=flag.cpu,
                         workdir=flag.work_dir)
    command = " ".join(["python -m bench.studies.soak", f"--steps {flag.steps}",
                        f"--checkpoint_every {flag.checkpoint_every}"]
                       + ([f"--cpu {flag.cpu}"] if flag.cpu is not None else []))
    doc = {"schema": "tfpock-soak/1",
           "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": flag.machine, "command": command, "model": model, "soak": summary,
           "rss_slope_bound": RSS_SLOPE_BOUND, "criteria": criteria(summary)}
    stem = cli.write_results(doc, markdown(doc), "soak", flag.out_dir)
    if "error" not in summary and plot(doc, stem + ".png"):
        logging.info("and %s.png", stem)
    for name, ok, text in doc["criteria"]:
        logging.info("%s %s: %s", "PASS" if ok else "FAIL", name, text)
    return 0 if all(ok for _, ok, _ in doc["criteria"]) else 1


if __name__ == "__main__":
    from absl import app
    define_flags()
    app.run(main)
