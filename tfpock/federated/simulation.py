"""One command, one process tree: a Flower simulation on Ray, quiet and tidy.

:func:`run` starts Ray itself (so it decides the workers' environment: telemetry off,
TensorFlow blocked by :func:`tfpock.federated.quiet.block_tensorflow` as their setup hook,
``PYTHONPATH`` as this process sees it), runs Flower's simulation runtime
(``flwr.simulation.run_simulation``: deprecated in favour of ``flwr run``, which needs an app
project on disk and leaves a SuperLink running; this one ends with the call) and shuts Ray
down whatever happens, so no raylet, GCS or worker outlives the call: every Ray process
carries the session folder on its command line or in its environment, and the call waits
for all of them to be gone, ending any that outstay 10 s (``tests/federated`` checks).
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from tfpock.federated import quiet

MARK = "TFPOCK_RAY_SESSION"


def run(server_app, client_app, num_clients: int, *, workers: int = 2,
        verbose: bool = False) -> dict:
    """Runs ``server_app`` with ``num_clients`` virtual clients of ``client_app`` on
    ``workers`` Ray worker processes (one CPU each); returns ``server_app.history``."""
    import ray
    from flwr.simulation import run_simulation

    if not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"num_clients must be an int >= 1, got {num_clients!r}")
    quiet.apply_environment()
    session = tempfile.mkdtemp(prefix="tfpock-ray-", dir="/tmp")   # short: Ray's sockets
    env = {k: os.environ[k] for k in quiet.ENVIRONMENT}
    env["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] +
                                        [os.environ.get("PYTHONPATH", "")])
    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this process; tfpock starts and "
                           "stops its own (to block TensorFlow in the workers)")
    run.last_session = session
    env[MARK] = session
    try:
        os.environ[MARK] = session    # inherited by Ray's daemons, which start its workers
        try:
            _start_ray(ray, workers, verbose, session, env)
        finally:
            del os.environ[MARK]
        with quiet.short_logs(verbose):
            run_simulation(server_app=server_app, client_app=client_app,
                           num_supernodes=num_clients,
                           backend_config={"client_resources": {"num_cpus": 1,
                                                                "num_gpus": 0.0}})
    finally:
        ray.shutdown()
        run.stopped, run.leftovers = stop_stragglers([session])
        shutil.rmtree(session, ignore_errors=True)
    return server_app.history


def _start_ray(ray, workers, verbose, session, env):
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=verbose,
             logging_level=logging.INFO if verbose else logging.ERROR,
             _temp_dir=session,
             runtime_env={"env_vars": env,
                          "worker_process_setup_hook":
                              "tfpock.federated.quiet.block_tensorflow"})


run.last_session = None   # the session folder of the last run: every Ray process names it
run.stopped = []          # processes still naming it 10 s after Ray's shutdown, then killed
run.leftovers = []        # processes naming it after that (logged; should be none)


def processes_naming(marks: list[str]) -> list[str]:
    """``"pid: command line"`` of every live (not zombie) process but this one whose command
    line or initial environment holds one of ``marks``: how tfpock finds what a run started.
    Ray's workers rename themselves (``ray::IDLE``), so :func:`run` puts its session folder
    in their environment (``TFPOCK_RAY_SESSION``); Flower's processes name their loopback
    addresses on their command lines."""
    found, me = [], str(os.getpid())
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        text = cmdline.decode(errors="replace")
        if state != "Z" and any(m in text or m.encode() in environ for m in marks):
            found.append(f"{pid}: {text.strip()}")
    return found


def stop_stragglers(marks: list[str], grace: float = 10.0) -> tuple[list[str], list[str]]:
    """Waits ``grace`` s for the processes naming ``marks`` to exit, then ends those that did
    not (SIGTERM, SIGKILL 5 s later): a Ray actor can outlive ``ray.shutdown()`` by more than
    10 s on a loaded machine (seen at load 18 in ``bench.studies.federated``), and a run must
    not leave one behind. Returns (the processes it had to end, those still there after: none
    unless a process cannot be killed)."""
    stragglers = wait_gone(marks, grace)
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        for line in processes_naming(marks):
            try:
                os.kill(int(line.split(":", 1)[0]), sig)
            except (ProcessLookupError, PermissionError, ValueError):
                pass
        if not wait_gone(marks, wait, log=False):
            break
    return stragglers, wait_gone(marks, 0.0)


def wait_gone(marks: list[str], grace: float = 10.0, log: bool = True) -> list[str]:
    """Waits up to ``grace`` s for the processes naming ``marks`` to exit; returns (and logs)
    those that did not."""
    deadline = time.monotonic() + grace
    while (left := processes_naming(marks)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for line in left if log else ():
        logging.getLogger(__name__).warning("still running after the run: %s", line[:200])
    return left
