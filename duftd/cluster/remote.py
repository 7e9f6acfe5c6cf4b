"""One run as a Dask task: on the Dask worker, unpack the task folder and run the worker.

:func:`run_job` is what the daemon submits. It starts the run's worker (the script
worker or the notebook runner of this package, on the Dask worker's own Python) in a
session of its own, waits for it, and returns how it ended and where it ran. Cancel and
timeout reach it through a Dask ``Event`` named in the spec: it then stops the whole tree
(SIGTERM to the group, SIGKILL after the grace, then any process carrying the run's
worker id, which catches a notebook's kernel in its own session).

This module is shipped to Dask workers by value (cloudpickle), so it imports only the
standard library at its top; this package is imported only once :func:`missing_package`
has said it is there. Specs and results are plain dicts for the same reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

# How often a running job looks at its cancel event (a scheduler round trip each time).
CANCEL_POLL_S = 0.2
REQUIRED_PACKAGES = ("dte_tools", "duftd")
WORKER_ARGV = {
    "script": ["-m", "dte_tools.spare"],
    "notebook": ["-m", "duftd.notebook.runner", "--spare"],
}
# What a run's process gets from the Dask worker's environment: nothing secret.
PASS_THROUGH = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")


def missing_package() -> str | None:
    """Why this Python cannot run a duftd worker, or None."""
    for name in REQUIRED_PACKAGES:
        if importlib.util.find_spec(name) is None:
            return (
                f"the Dask worker's Python ({sys.executable} on {socket.gethostname()}) has no "
                f"{name}: install duftd (and the task's own libraries) in the environment the "
                "Dask workers run, the same version as the daemon's"
            )
    return None


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one run's worker here; returns ``worker``, ``host``, ``exit_code``, ``reason``
    (why it could not start) and ``stopped_by`` (SIGTERM or SIGKILL when it was stopped).

    ``spec``: ``run_id``, ``kind`` (script or notebook), ``script`` (its name in the task
    folder), ``args`` (after the script), ``execute_from_root``, ``env`` (the run's DUFT_*
    variables), ``bundle`` and ``digest`` (the task folder), ``cancel`` (the Dask Event
    name), ``grace_s``, and ``data_dir`` (a shared data folder, or None for one per run).
    """
    from distributed import Event, get_worker

    worker = get_worker()
    result: dict[str, Any] = {
        "worker": str(worker.name),
        "host": socket.gethostname(),
        "exit_code": None,
        "reason": missing_package(),
        "stopped_by": None,
    }
    if result["reason"] is not None:
        return result
    from duftd.cluster import bundle

    local = Path(worker.local_directory)
    run_dir = local / "duftd-runs" / f"{spec['run_id']}-{secrets.token_hex(4)}"
    try:
        task_dir = bundle.unpack(spec["digest"], spec["bundle"], local / "duftd-tasks")
        argv, job = _worker_job(spec, task_dir, run_dir)
        process = subprocess.Popen(
            argv,
            cwd=run_dir,
            env=_environment(job["env"]),
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
    except (OSError, bundle.BundleError) as error:
        shutil.rmtree(run_dir, ignore_errors=True)
        result["reason"] = f"the run could not start on {result['host']}: {error}"
        return result
    try:
        assert process.stdin is not None
        process.stdin.write(json.dumps(job).encode() + b"\n")
        process.stdin.close()
    except BrokenPipeError:
        pass  # it died at once: its exit code says so
    worker_id = job["env"]["DUFT_WORKER_ID"]
    code, stopped_by = _wait(process, Event(spec["cancel"]), float(spec["grace_s"]), worker_id)
    shutil.rmtree(run_dir, ignore_errors=True)
    result.update(exit_code=code, stopped_by=stopped_by)
    return result


def _worker_job(
    spec: dict[str, Any], task_dir: Path, run_dir: Path
) -> tuple[list[str], dict[str, Any]]:
    """The worker's command line and the job it reads on stdin, with this machine's paths."""
    from dte_tools import wire
    from duftd.runs.root_layout import prepare_root_copy

    run_dir.mkdir(parents=True)
    data_dir = Path(spec["data_dir"]) if spec.get("data_dir") else run_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **spec["env"],
        wire.ENV_DATA_DIR: str(data_dir),
        wire.ENV_WORKER_ID: secrets.token_hex(8),
    }
    script, cwd = task_dir / spec["script"], task_dir
    if spec["execute_from_root"]:
        script = prepare_root_copy(script, run_dir / "root-copy")
        cwd = script.parent
        env["PYTHONPATH"] = str(task_dir)
    args = list(spec["args"])
    if spec["kind"] == "notebook":
        args = [str(run_dir / script.name)]  # the executed copy, kept on this worker's run
    argv = [sys.executable, *WORKER_ARGV[spec["kind"]]]
    return argv, {"argv": [str(script), *args], "cwd": str(cwd), "env": env}


def _environment(run_env: dict[str, str]) -> dict[str, str]:
    env = {name: os.environ[name] for name in PASS_THROUGH if name in os.environ}
    # The worker id is in every process of the run from its start (how leftovers are found).
    return {**env, "PYTHONUNBUFFERED": "1", "DUFT_WORKER_ID": run_env["DUFT_WORKER_ID"]}


def _wait(
    process: subprocess.Popen[bytes], cancel: Any, grace_s: float, worker_id: str
) -> tuple[int, str | None]:
    """The worker's exit code, stopping its tree when ``cancel`` is set; then no process of
    the run is left."""
    from duftd import spawn

    stopped_by = None
    while True:
        try:
            code = process.wait(CANCEL_POLL_S)
            break
        except subprocess.TimeoutExpired:
            if cancel.is_set():
                stopped_by = "SIGTERM"
                spawn.signal_group(process.pid, signal.SIGTERM)
                try:
                    code = process.wait(grace_s)
                except subprocess.TimeoutExpired:
                    stopped_by = "SIGKILL"
                    spawn.signal_group(process.pid, signal.SIGKILL)
                    code = process.wait()
                break
    spawn.signal_group(process.pid, signal.SIGKILL)
    spawn.kill_marked(f"DUFT_WORKER_ID={worker_id}")
    return code, stopped_by
