"""The ``duft`` command line as a user runs it: real subprocesses against a real daemon."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dte_tools.wire import Op
from tests.harness import REPO, DaemonProcess, environment_without_duft

DUFT = REPO / ".venv" / "bin" / "duft"


def duft(
    state_dir: Path, *args: str, entry_point: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``duft ARGS`` for the daemon of ``state_dir``; bounded, never interactive."""
    env = environment_without_duft(DUFT_STATE_DIR=str(state_dir))
    command = [str(DUFT)] if entry_point else [sys.executable, "-m", "clients.cli.main"]
    return subprocess.run(
        [*command, *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_status_and_tasks(daemon: DaemonProcess) -> None:
    """duft status names the running daemon; duft tasks --json lists the visible tasks, and
    the hidden ones too with --all."""
    status = duft(daemon.state_dir, "status", entry_point=True)
    assert status.returncode == 0, status.stderr
    assert f"pid {daemon.process.pid}" in status.stdout
    health = json.loads(duft(daemon.state_dir, "status", "--json").stdout)
    assert health["pid"] == daemon.process.pid

    tasks = duft(daemon.state_dir, "tasks", "--json")
    assert tasks.returncode == 0, tasks.stderr
    ids = {task["id"] for task in json.loads(tasks.stdout)}
    assert "SAMPLE" in ids
    assert "SLOW-SAMPLE" not in ids
    every = {
        task["id"] for task in json.loads(duft(daemon.state_dir, "tasks", "--all", "--json").stdout)
    }
    assert "SLOW-SAMPLE" in every


def test_run_follow_prints_the_log_and_exits_0(daemon: DaemonProcess) -> None:
    """duft run --follow shows the run's log lines live and exits 0 when it succeeds."""
    result = duft(
        daemon.state_dir,
        "run", "SAMPLE", "-p", "steps=2", "-p", "sleep_time=0", "-p", "name=Arya", "--follow",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Arya: step 1 of 2" in result.stdout
    assert "Arya: step 2 of 2" in result.stdout
    assert "succeeded" in result.stdout
    assert "started run 1 of SAMPLE" in result.stderr


def test_run_follow_of_a_failing_run_exits_1(daemon: DaemonProcess) -> None:
    """duft run --follow exits 1 when the run fails, after showing why."""
    result = duft(
        daemon.state_dir,
        "run", "SAMPLE", "-p", "steps=2", "-p", "sleep_time=0", "-p", "simulate_error=true", "-f",
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Simulated error at step 1" in result.stdout
    assert "failed" in result.stdout
    assert "RuntimeError: simulated error at step 1" in result.stdout


def test_runs_and_logs(daemon: DaemonProcess) -> None:
    """duft runs --json lists the runs and duft logs RUN prints a run's stored log."""
    run_id = daemon.submit("SAMPLE", steps=1, sleep_time=0, name="Bran")["run"]["id"]
    daemon.wait_final(run_id)
    runs = duft(daemon.state_dir, "runs", "--json")
    assert runs.returncode == 0, runs.stderr
    listed = json.loads(runs.stdout)
    assert [(run["id"], run["task_id"], run["state"]) for run in listed] == [
        (run_id, "SAMPLE", "succeeded")
    ]
    table = duft(daemon.state_dir, "runs")
    assert "SAMPLE" in table.stdout and "succeeded" in table.stdout

    logs = duft(daemon.state_dir, "logs", str(run_id))
    assert logs.returncode == 0, logs.stderr
    assert "Bran: step 1 of 1" in logs.stdout
    assert "Hello from print(), Bran" in logs.stdout
    as_json = json.loads(duft(daemon.state_dir, "logs", str(run_id), "--json").stdout)
    assert as_json == daemon.events(run_id)


def test_cancel(daemon: DaemonProcess) -> None:
    """duft cancel RUN stops a running run, which ends cancelled."""
    run_id = daemon.submit("SLOW-SAMPLE")["run"]["id"]
    daemon.wait_state(run_id, "running", timeout=15)
    result = duft(daemon.state_dir, "cancel", str(run_id))
    assert result.returncode == 0, result.stderr
    assert f"run {run_id} of SLOW-SAMPLE" in result.stdout
    assert daemon.wait_final(run_id, timeout=15)["state"] == "cancelled"
    assert daemon.request(Op.HEALTH)["active"] == 0


def test_refused_request_exits_2_with_the_code(daemon: DaemonProcess) -> None:
    """A request the daemon refuses (an unknown task) exits 2 naming the error code."""
    result = duft(daemon.state_dir, "run", "NO-SUCH-TASK")
    assert result.returncode == 2
    assert "[unknown_task]" in result.stderr


NEEDS_DAEMON = [
    ["status"],
    ["tasks"],
    ["show", "SAMPLE"],
    ["run", "SAMPLE", "--follow"],
    ["runs"],
    ["logs", "1"],
    ["logs", "1", "--follow"],
    ["cancel", "1"],
    ["output", "1"],
]


@pytest.mark.parametrize("args", NEEDS_DAEMON, ids=" ".join)
def test_without_a_daemon_every_command_says_how_to_start_it(
    tmp_path: Path, args: list[str]
) -> None:
    """With no daemon, a command prints one line saying duftd is not running and how to
    start it, and exits 3."""
    result = duft(tmp_path / "empty-state", *args)
    output = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 3, output
    assert len(output) == 1, output
    assert "duftd is not running" in output[0]
    assert "start it with" in output[0]


def test_stale_connection_file_counts_as_no_daemon(daemon: DaemonProcess, tmp_path: Path) -> None:
    """A connection file left by a dead daemon is reported as duftd not running (exit 3)."""
    state = tmp_path / "stale-state"
    state.mkdir()
    info = json.loads((daemon.state_dir / "duftd.json").read_text(encoding="utf-8"))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    info["pid"] = int(dead.stdout)
    (state / "duftd.json").write_text(json.dumps(info), encoding="utf-8")
    result = duft(state, "status")
    assert result.returncode == 3
    assert "stale" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


THIN_CLIENT_SCRIPT = """
import sys
from clients.bus import BusClient, ConnectionInfo
from clients.cli.main import main
codes = [main(["run", "SAMPLE", "-p", "steps=1", "-p", "sleep_time=0", "--follow"])]
with BusClient(ConnectionInfo.load()) as client:
    run_id = client.request("runs", limit=1)["runs"][0]["id"]
codes += [main(["runs", "--limit", "1"]), main(["logs", str(run_id), "--follow"])]
import clients.bridge.app
print("CODES", codes)
print("DAEMON", sorted(name for name in sys.modules if name.split(".")[0] == "duftd"))
"""


def test_run_logs_runs_and_the_bridge_import_nothing_from_the_daemon(
    daemon: DaemonProcess,
) -> None:
    """``duft run --follow``, ``duft runs`` and ``duft logs --follow`` work against a
    running daemon, and neither they nor the bridge's app load any module of the daemon
    package: thin clients need only ``dte_tools`` and their own code."""
    env = environment_without_duft(DUFT_STATE_DIR=str(daemon.state_dir))
    result = subprocess.run(
        [sys.executable, "-c", THIN_CLIENT_SCRIPT],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=45,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "CODES [0, 0, 0]" in result.stdout, result.stdout + result.stderr
    assert "DAEMON []" in result.stdout, result.stdout
