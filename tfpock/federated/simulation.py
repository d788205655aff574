"""One command, one process tree: a Flower simulation on Ray, quiet and tidy.

:func:`run` starts Ray itself (so it decides the workers' environment: telemetry off,
TensorFlow blocked by :func:`tfpock.federated.quiet.block_tensorflow` as their setup hook,
``PYTHONPATH`` as this process sees it), runs Flower's simulation runtime
(``flwr.simulation.run_simulation``: deprecated in favour of ``flwr run``, which needs an app
project on disk and leaves a SuperLink running; this one ends with the call) and shuts Ray
down whatever happens, so no raylet, GCS or worker outlives the call (``tests/federated``
checks by the session folder every Ray process names on its command line).
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile

from tfpock.federated import quiet


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
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=verbose,
             logging_level=logging.INFO if verbose else logging.ERROR,
             _temp_dir=session,
             runtime_env={"env_vars": env,
                          "worker_process_setup_hook":
                              "tfpock.federated.quiet.block_tensorflow"})
    try:
        with quiet.short_logs(verbose):
            run_simulation(server_app=server_app, client_app=client_app,
                           num_supernodes=num_clients,
                           backend_config={"client_resources": {"num_cpus": 1,
                                                                "num_gpus": 0.0}})
    finally:
        ray.shutdown()
        shutil.rmtree(session, ignore_errors=True)
    run.last_session = session
    return server_app.history


run.last_session = None
