"""Runs contenders in their own pinned processes, alternating rounds, and summarises them.

No TensorFlow here: ``bench/device.py`` uses this module on a device too.

Method: all contenders of one (model, batch, threads) group are started together, set up and
warmed up (unpinned, so set-up uses every core), then each is pinned with ``taskset -a -p``
(all its threads; 1 thread: core 0, 2 threads: cores 0,1); then
``rounds`` rounds run one contender at a time (the others wait on a pipe, idle), the order
rotated every round so that no contender always runs first or last. The number of steps per
round comes from the warm-up time (about ``round_s`` seconds, between ``min_steps`` and
``max_steps``). Reported: the median over all timed steps, quartiles, min and max, each
round's median, and the process's peak RSS read after its last round (``VmHWM``, see
``worker.peak_rss_kb``; ``ru_maxrss`` is recorded beside it).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")


@dataclasses.dataclass
class Contender:
    """One row of a group. ``spec`` goes to the worker; ``python`` runs it."""
    id: str
    scheme: str
    spec: dict
    python: str = sys.executable


@dataclasses.dataclass(frozen=True)
class Timing:
    rounds: int = 3
    warmup: int = 3
    round_s: float = 1.0
    min_steps: int = 5
    max_steps: int = 20

    def steps_for(self, warmup_ms: list[float]) -> int:
        # the last warm-up steps: the first one traces or allocates
        typical = float(np.median(warmup_ms[1:] or warmup_ms))
        return int(min(self.max_steps, max(self.min_steps,
                                           math.ceil(self.round_s * 1e3 / max(typical, 1e-3)))))


def cpus_for(threads: int) -> str:
    """The first ``threads`` cores this process may run on (a container's cpuset may not
    include core 0)."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        list(range(os.cpu_count() or 1))
    return ",".join(str(c) for c in allowed[:max(1, threads)])


def pin(pid: int, threads: int) -> bool:
    """Pins every thread of ``pid`` to the first ``threads`` cores; False without taskset."""
    if not shutil.which("taskset"):
        return False
    subprocess.run(["taskset", "-a", "-p", "-c", cpus_for(threads), str(pid)], check=True,
                   stdout=subprocess.DEVNULL)
    return True


def summarize(ms: list[float]) -> dict:
    a = np.asarray(ms, dtype=np.float64)
    q1, median, q3 = np.percentile(a, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3), "min": float(a.min()),
            "max": float(a.max()), "n": int(a.size)}


class _Worker:
    def __init__(self, contender: Contender, timing: Timing, log_dir: str):
        spec = dict(contender.spec, warmup=timing.warmup)
        self.contender = contender
        self.log_path = os.path.join(log_dir, f"{contender.id}-{contender.scheme}.log")
        self._log = open(self.log_path, "w")
        self.threads = spec["threads"]
        cmd = [contender.python, WORKER, json.dumps(spec)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, bufsize=1)

    def receive(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self._log.flush()
            with open(self.log_path) as f:
                tail = f.read()[-600:]
            return {"event": "error", "stage": "crash",
                    "error": f"worker exited with {self.proc.returncode}: {tail}"}
        return json.loads(line)

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self._log.close()


def run_group(contenders: list[Contender], timing: Timing, progress=None) -> list[dict]:
    """Measures ``contenders`` together; returns one result dict per contender, in order:
    ``{"id", "scheme", "status": "ok"|"failed", "step_ms", "round_medians_ms",
    "peak_rss_mb", "steps_per_round", "error"}``."""
    results = [{"id": c.id, "scheme": c.scheme, "status": "ok", "error": ""} for c in contenders]
    with tempfile.TemporaryDirectory(prefix="tfpock-bench-") as log_dir:
        workers = [_Worker(c, timing, log_dir) for c in contenders]
        live, steps, times = [], {}, {}
        try:
            for i, w in enumerate(workers):
                event = w.receive()
                if event["event"] != "ready":
                    results[i].update(status="failed", error=event.get("error", str(event)))
                    w.close()
                    continue
                pin(w.proc.pid, w.threads)
                live.append(i)
                steps[i] = timing.steps_for(event["warmup_ms"])
                times[i] = []
            for r in range(timing.rounds):
                order = live[r % len(live):] + live[:r % len(live)] if live else []
                for i in order:
                    workers[i].send(f"run {steps[i]}")
                    event = workers[i].receive()
                    if event["event"] != "round":
                        results[i].update(status="failed", error=event.get("error", str(event)))
                        live.remove(i)
                        continue
                    times[i].append(event["ms"])
                    if progress:
                        progress(contenders[i], r)
            for i in live:
                workers[i].send("exit")
                event = workers[i].receive()
                results[i].update(
                    step_ms=summarize([t for rnd in times[i] for t in rnd]),
                    round_medians_ms=[float(np.median(rnd)) for rnd in times[i]],
                    steps_per_round=steps[i], peak_rss_mb=event["peak_rss_kb"] / 1024,
                    ru_maxrss_mb=event["ru_maxrss_kb"] / 1024)
        finally:
            for w in workers:
                if w.proc.poll() is None:
                    w.proc.kill()
                w.close()
    return results
