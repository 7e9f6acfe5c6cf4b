"""Runs placed on a real Dask cluster (``--launcher dask``): a TLS ``dask scheduler`` and
``dask worker`` processes (one thread each, working folders of their own), a daemon under
CURVE whose runs the Dask workers start and whose events their relays bring back."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from dte_tools.wire import State
from tests.dask_cluster import DaskCluster, dask_cluster
from tests.harness import (
    REPO,
    DaemonProcess,
    add_script_task,
    copy_config,
    final_state_event,
    log_messages,
    pid_alive,
    wait_for,
    wait_gone,
)

HELLO = """\
import sys
from dte_tools import find_json_arg, get_data_dir, initialise_data_task

params = find_json_arg(sys.argv)
env = initialise_data_task("Hello", params=params)
env.log_message(f"hello {params.get('name', 'world')}")
env.report_progress(1, 2, "half")
print("to stdout")
print("to stderr", file=sys.stderr)
env.log_message(f"data folder {get_data_dir()}")
"""
FAILS = """\
from dte_tools import initialise_data_task

initialise_data_task("Fails").log_message("about to fail")
raise ValueError("the source table is empty")
"""
# Logs its pid and its child's, then hangs until it is stopped.
HANGS = """\
import os, subprocess, sys, time
from dte_tools import initialise_data_task

child = subprocess.Popen(  # its child hangs too, deliberately
    [sys.executable, "-c", "import time; time.sleep(600)  # wait-ok: hangs until stopped"]
)
initialise_data_task("Hangs").log_message(f"pids {os.getpid()} {child.pid}")
time.sleep(600)  # wait-ok: a task that hangs until it is stopped
"""
FROM_ROOT = """\
import os
from dte_tools import initialise_data_task

env = initialise_data_task("Root")
env.log_message(f"beside duft-server: {os.path.isdir('duft-server')}")
"""


def add_notebook(config: Path, task_id: str, sources: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    add_script_task(config, task_id, nbformat.writes(nb), pythonFile=f"{task_id.lower()}.ipynb")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    yield from dask_cluster(tmp_path_factory.mktemp("dask"))


def dask_args(cluster: DaskCluster, address: str | None = None) -> list[str]:
    """duftd on free tcp ports (always CURVE, keys made at start) placing runs on ``cluster``."""
    tls = cluster.tls
    return [
        "--port", "0", "--launcher", "dask",
        "--dask-scheduler", address or cluster.address, "--dask-tls-ca", str(tls.ca),
        "--dask-tls-cert", str(tls.cert), "--dask-tls-key", str(tls.key),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def daemon(
    cluster: DaskCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProcess]:
    folder = tmp_path_factory.mktemp("daemon")
    config = copy_config(folder / "duft-config")
    add_script_task(config, "HELLO", HELLO, supportedParameters={
        "name": {"defaultValue": "world", "allowOverride": True}})  # fmt: skip
    add_script_task(config, "FAILS", FAILS)
    add_script_task(config, "HANGS", HANGS)
    add_script_task(config, "SLOW", HANGS, timeoutSeconds=2)
    add_script_task(config, "ROOT", FROM_ROOT, executeFromRoot=True)
    add_script_task(config, "BIG", HELLO, resources={"memory_gb": 8})
    add_script_task(config, "BARE", HELLO, resources={"bare": 1})
    add_notebook(config, "NOTEBOOK", [
        "params = {}",
        "from dte_tools import initialise_data_task\n"
        "env = initialise_data_task('nb', params=params)\nenv.log_message('from a cell')",
        "print(6 * 7)",
    ])  # fmt: skip
    daemon = DaemonProcess(config, folder / "state", folder / "data", dask_args(cluster))
    try:
        yield daemon.start()
    finally:
        daemon.stop()


def run_events(daemon: DaemonProcess, run_id: int) -> list[dict[str, Any]]:
    return daemon.events(run_id)


def wait_log(daemon: DaemonProcess, run_id: int, prefix: str) -> str:
    return wait_for(
        lambda: next(
            (m for m in log_messages(daemon.events(run_id)) if m.startswith(prefix)), None
        ),
        60,
        f"run {run_id} to log {prefix!r}",
    )


def states(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["state"] for e in events if e["kind"] == "state"]


def test_a_script_runs_on_a_dask_worker_with_all_its_events(daemon: DaemonProcess) -> None:
    """A script run goes to a Dask worker and succeeds; its log, progress, stdout and
    stderr arrive in order; the record names the Dask worker and host; its data folder is
    a per-run folder on that worker, not the daemon's."""
    submitted = daemon.submit("HELLO", name="cluster")
    run = submitted["run"]
    assert run["params"] == {"name": "cluster"}, submitted
    final = daemon.wait_final(run["id"], 60)
    assert final["state"] == State.SUCCEEDED, final
    assert final["dask_worker"] in {"w1", "w2"} and final["host"] == socket.gethostname()
    events = daemon.events(run["id"])
    assert states(events) == ["queued", "starting", "running", "succeeded"]
    kinds = [e["kind"] for e in events if e["kind"] != "state"]
    assert kinds == ["log", "progress", "stdout", "stderr", "log"]
    messages = log_messages(events)
    assert messages[0] == "hello cluster"
    data_dir = messages[1].removeprefix("data folder ")
    assert "duftd-runs" in data_dir and not data_dir.startswith(str(daemon.data_dir))
    running = next(e for e in events if e["data"].get("state") == "running")
    assert running["data"]["dask_worker"] == final["dask_worker"]


def test_the_task_folder_is_unpacked_once_per_worker(
    daemon: DaemonProcess, cluster: DaskCluster
) -> None:
    """Every run of the system's tasks ships the same content-addressed folder: each Dask
    worker unpacks it once, under the same digest, whichever task runs."""
    for task in ("HELLO", "ROOT", "HELLO"):
        run = daemon.submit(task)["run"]
        assert daemon.wait_final(run["id"], 60)["state"] == State.SUCCEEDED
    cached = [p.name for p in cluster.folder.glob("w*/**/duftd-tasks/*") if p.is_dir()]
    assert cached and len(set(cached)) == 1
    assert len(cached) <= 2  # at most once on each of the two workers


def test_a_notebook_runs_on_a_dask_worker(daemon: DaemonProcess) -> None:
    """A notebook run on a Dask worker succeeds with its cell events, its log line and its
    output."""
    run = daemon.submit("NOTEBOOK")["run"]
    final = daemon.wait_final(run["id"], 60)
    assert final["state"] == State.SUCCEEDED, final
    events = daemon.events(run["id"])
    assert "from a cell" in log_messages(events)
    assert any(e["kind"] == "stdout" and e["data"]["text"] == "42" for e in events)
    assert sum(e["kind"] == "cell" and e["data"]["phase"] == "finished" for e in events) == 3


def test_execute_from_root_on_a_dask_worker(daemon: DaemonProcess) -> None:
    """executeFromRoot runs the copied task beside a duft-server/ folder on the worker."""
    run = daemon.submit("ROOT")["run"]
    assert daemon.wait_final(run["id"], 60)["state"] == State.SUCCEEDED
    assert log_messages(daemon.events(run["id"])) == ["beside duft-server: True"]


def test_a_failing_task_fails_with_its_reason(daemon: DaemonProcess) -> None:
    """A task raising on a Dask worker fails with the exception in its reason, and every
    event it sent before is stored."""
    run = daemon.submit("FAILS")["run"]
    final = daemon.wait_final(run["id"], 60)
    assert final["state"] == State.FAILED and final["exit_code"] == 1
    assert "ValueError: the source table is empty" in final["reason"]
    events = daemon.events(run["id"])
    assert log_messages(events) == ["about to fail"]
    assert "ValueError" in final_state_event(events)["data"]["reason"]


def test_cancel_kills_the_remote_tree(daemon: DaemonProcess) -> None:
    """Cancelling a run on a Dask worker stops its process tree there (the task and its
    child) within the grace; the run is cancelled."""
    run = daemon.submit("HANGS")["run"]
    pids = [int(p) for p in wait_log(daemon, run["id"], "pids ").split()[1:]]
    assert all(pid_alive(pid) for pid in pids)
    daemon.request("cancel", run=run["id"])
    final = daemon.wait_final(run["id"], 60)
    assert final["state"] == State.CANCELLED, final
    wait_gone(pids)


def test_a_timeout_kills_the_remote_tree(daemon: DaemonProcess) -> None:
    """A run on a Dask worker that outlives its timeoutSeconds fails with the timeout as
    its reason, and its process tree there is gone."""
    run = daemon.submit("SLOW")["run"]
    pids = [int(p) for p in wait_log(daemon, run["id"], "pids ").split()[1:]]
    final = daemon.wait_final(run["id"], 60)
    assert final["state"] == State.FAILED and "timed out after 2 s" in final["reason"]
    wait_gone(pids)


def test_a_worker_without_this_package_fails_the_run_with_the_reason(
    daemon: DaemonProcess, cluster: DaskCluster, tmp_path: Path
) -> None:
    """A run that waits for a resource no worker has stays unstarted; a worker offering it
    joins whose Python lacks duftd: the run fails with that reason."""
    run = daemon.submit("BARE")["run"]
    daemon.wait_state(run["id"], State.STARTING)
    start = (
        f"import sys; sys.path[:] = [p for p in sys.path if p != {str(REPO)!r}]; "
        "from distributed.cli.dask_worker import main; sys.argv[0] = 'dask-worker'; main()"
    )
    local = tmp_path / "bare"
    local.mkdir()
    cluster.start_process(
        "bare",
        [sys.executable, "-c", start, cluster.address, "--name", "bare", "--nthreads", "1",
         "--no-nanny", "--no-dashboard", "--local-directory", str(local),
         "--resources", "bare=1", *cluster.tls.cli_args()],
    )  # fmt: skip
    try:
        final = daemon.wait_final(run["id"], 60)
    finally:
        cluster.kill("bare")
    assert final["state"] == State.FAILED
    assert "has no dte_tools" in final["reason"] and "install duftd" in final["reason"]


def test_a_run_waits_for_a_worker_with_its_resources(
    daemon: DaemonProcess, cluster: DaskCluster
) -> None:
    """A task asking for resources no worker offers is not started; it runs once a worker
    with them joins, on that worker."""
    run = daemon.submit("BIG")["run"]
    other = daemon.submit("HELLO")["run"]  # the cluster is not blocked meanwhile
    assert daemon.wait_final(other["id"], 60)["state"] == State.SUCCEEDED
    assert daemon.request("run", run=run["id"])["run"]["state"] == State.STARTING
    assert not daemon.request("run", run=run["id"])["run"]["dask_worker"]
    cluster.start_worker("big", resources="memory_gb=16")
    final = daemon.wait_final(run["id"], 60)
    assert final["state"] == State.SUCCEEDED and final["dask_worker"] == "big"


def test_a_killed_dask_worker_loses_the_run_once(
    daemon: DaemonProcess, cluster: DaskCluster
) -> None:
    """SIGKILL of the Dask worker running a run: the run is lost with the reason, and the
    start Dask tries on another worker is refused (the run never runs twice)."""
    run = daemon.submit("HANGS")["run"]
    pids = [int(p) for p in wait_log(daemon, run["id"], "pids ").split()[1:]]
    worker = daemon.request("run", run=run["id"])["run"]["dask_worker"]
    try:
        cluster.kill(worker)
        final = daemon.wait_final(run["id"], 60)
    finally:
        for pid in pids:  # the task outlives its killed Dask worker: end it here
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert final["state"] == State.LOST, final["reason"]
    assert worker in final["reason"]
    events = daemon.events(run["id"])
    assert states(events).count("running") == 1
    assert log_messages(events).count(f"pids {pids[0]} {pids[1]}") == 1


def test_an_unreachable_scheduler_queues_runs_and_health_says_so(
    cluster: DaskCluster, tmp_path: Path
) -> None:
    """With the scheduler unreachable the daemon still starts; health says it is not
    connected and why, and a submitted run waits."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = copy_config(tmp_path / "duft-config")
    args = dask_args(cluster, f"tls://127.0.0.1:{port}")
    daemon = DaemonProcess(config, tmp_path / "state", tmp_path / "data", args).start()
    try:

        def unreachable() -> dict[str, Any] | None:
            health = daemon.request("health")
            return health if health["error"] else None

        health = wait_for(unreachable, 30, "health to name the unreachable scheduler")
        assert health["launcher"] == "dask" and not health["connected"]
        assert f"127.0.0.1:{port}" in health["error"]
        run = daemon.submit("SAMPLE")["run"]
        assert daemon.request("run", run=run["id"])["run"]["state"] in {"queued", "starting"}
    finally:
        daemon.stop()


@pytest.mark.parametrize(
    ("args", "refusal"),
    [
        (["--launcher", "dask", "--dask-scheduler", "tcp://10.1.2.3:8786", "--port", "0"],
         "not on this machine and not tls://"),
        (["--launcher", "dask", "--dask-scheduler", "tls://127.0.0.1:8786"], "needs duftd on tcp"),
        (["--launcher", "dask", "--port", "0"], "needs --dask-scheduler"),
    ],
)  # fmt: skip
def test_refusals_at_start(args: list[str], refusal: str, tmp_path: Path) -> None:
    """duftd refuses to start with a scheduler that would carry jobs in the clear, without
    tcp (always under CURVE) for the workers to dial back, or without a scheduler, saying
    why."""
    config = copy_config(tmp_path / "duft-config")
    done = subprocess.run(
        [sys.executable, "-m", "duftd", "--config", str(config),
         "--state-dir", str(tmp_path / "state"), *args],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and refusal in done.stderr
