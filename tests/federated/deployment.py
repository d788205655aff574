"""Real Flower processes on loopback: a SuperLink, SuperNodes and ``flwr run``, then nothing.

:func:`run_deployment` writes a Flower App project (``pyproject.toml`` naming the app's
components, one module that builds tfpock's apps from files in a folder), starts
``flower-superlink`` and one ``flower-supernode`` per client on free loopback ports, each in
its own session, submits the run with ``flwr run`` and waits for the server's history file.
Then it stops every session it started (SIGTERM, then SIGKILL) and returns the history and
the ports, by which :func:`tfpock.federated.simulation.processes_naming` finds any process
that outlived the run: every Flower process tfpock starts names one of them on its command
line.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tfpock.federated.quiet import ENVIRONMENT
from tfpock.federated.simulation import stop_stragglers

APP_TOML = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "tfpockfed"
version = "1.0.0"
description = "tfpock federated test app"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "tfpock"

[tool.flwr.app.components]
serverapp = "fedapp:server"
clientapp = "fedapp:client"

[tool.flwr.app.config]
"""

APP_MODULE = """\
import os

import numpy as np

from tfpock import federated

folder = os.environ["TFPOCK_FED_DIR"]
model = os.path.join(folder, "model.tflite")
with np.load(os.path.join(folder, "eval.npz")) as f:
    evaluation = (f["x"], f["y"])
server = federated.server_app(model, num_rounds={rounds}, eval_data=evaluation,
                              local_steps={steps}, min_clients={clients},
                              history_path=os.path.join(folder, "history.json"),
                              slice_path=os.path.join(folder, "final.npz"))
client = federated.client_app(model, federated.NpzPartitions(os.path.join(folder, "clients.npz")),
                              local_steps={steps})
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def stop(processes: list[subprocess.Popen], marks: list[str], grace: float = 10.0
         ) -> list[str]:
    """SIGTERM to each started session, then SIGKILL to what is left; reaps them. Then waits
    up to ``grace`` seconds for every process naming one of ``marks`` (Flower's app
    processes, started by the SuperLink and SuperNodes in sessions of their own, exit when
    they see their parent gone) and returns those that did not, after ending them
    (``stop_stragglers``, what a simulation run does too)."""
    for p in processes:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in processes:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in processes:
        try:
            os.killpg(p.pid, signal.SIGKILL)   # the session's stragglers (app subprocesses)
        except ProcessLookupError:
            pass
        p.wait()
    stragglers, _ = stop_stragglers(marks, grace)
    return stragglers


def run_deployment(folder: Path, clients: int, rounds: int, steps: int,
                   timeout: float = 120.0) -> tuple[dict, list[str], list[str]]:
    """``folder`` holds model.tflite, clients.npz (NpzPartitions) and eval.npz (x, y).
    Returns (the server's history, the marks of every process started, the processes still
    alive 10 s after the run was stopped: should be none)."""
    folder = Path(folder)
    home, app = folder / "flwr-home", folder / "app"
    home.mkdir(exist_ok=True)
    app.mkdir(exist_ok=True)
    (app / "pyproject.toml").write_text(APP_TOML)
    (app / "fedapp.py").write_text(APP_MODULE.format(rounds=rounds, steps=steps,
                                                     clients=clients))
    link = free_port()
    node_ports = [free_port() for _ in range(clients)]
    (home / "config.toml").write_text(textwrap.dedent(f"""\
        [superlink]
        default = "test"

        [superlink.test]
        address = "127.0.0.1:{link}"
        insecure = true
        """))
    env = dict(os.environ, **ENVIRONMENT, FLWR_HOME=str(home), TFPOCK_FED_DIR=str(folder),
               PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)

    def start(name, args):
        out = open(logs / f"{name}.log", "wb")
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=folder)

    started = []
    marks = [f"127.0.0.1:{link}"] + [f"127.0.0.1:{p}" for p in node_ports] + [str(home)]
    try:
        started.append(start("superlink", [
            "flower-superlink", "--insecure", "--port", str(link),
            "--disable-runtime-dependency-installation"]))
        deadline = time.monotonic() + timeout
        wait_for_port(link, deadline)
        for i, port in enumerate(node_ports):
            started.append(start(f"supernode{i}", [
                "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}",
                "--port", str(port), "--node-config", f"partition-id={i}"]))
        submitted = subprocess.run(["flwr", "run", str(app), "test"], env=env, cwd=folder,
                                   capture_output=True, text=True, timeout=timeout)
        history_file = folder / "history.json"
        while not history_file.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no history after {timeout} s; flwr run said:\n"
                                   f"{submitted.stdout}\n{submitted.stderr}\nlogs in {logs}")
            time.sleep(0.3)
        history = json.loads(history_file.read_text())
    finally:
        stragglers = stop(started, marks)
    return history, marks, stragglers
