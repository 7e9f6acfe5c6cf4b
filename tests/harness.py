"""A real duftd in a subprocess for tests: free ports, a temporary state folder, always stopped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clients.bus import BusClient, ConnectionInfo
from dte_tools import locate
from dte_tools.wire import FINAL_STATES, Op

REPO = Path(__file__).resolve().parents[1]
EMBEDDED_CONFIG = REPO / "duft-config"
START_TIMEOUT_S = 20.0


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)  # wait-ok: polling interval of a bounded wait


def copy_config(target: Path, source: Path = EMBEDDED_CONFIG) -> Path:
    """A private copy of a duft-config folder, so tests can add tasks and never touch the repo."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def add_script_task(config_dir: Path, task_id: str, code: str, **fields: Any) -> None:
    """Declare a script task in ``system/data_tasks.json`` with ``code`` as its file."""
    file_name = fields.pop("pythonFile", f"{task_id.lower().replace('-', '_')}.py")
    (config_dir / "system" / "data_tasks" / file_name).write_text(code, encoding="utf-8")
    tasks_file = config_dir / "system" / "data_tasks.json"
    document = json.loads(tasks_file.read_text(encoding="utf-8"))
    document["dataTasks"].append({"id": task_id, "name": task_id, "pythonFile": file_name, **fields})
    tasks_file.write_text(json.dumps(document, indent=2), encoding="utf-8")


class DaemonProcess:
    """One duftd subprocess and a client to it."""

    def __init__(self, config_dir: Path, state_dir: Path, data_dir: Path, extra_args: list[str]) -> None:
        self.config_dir = config_dir
        self.state_dir = state_dir
        self.data_dir = data_dir
        self.extra_args = extra_args
        self.log_path = state_dir / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.client: BusClient | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DUFT_")}
        env.update(DUFT_STATE_DIR=str(self.state_dir), DUFT_DATA_DIR=str(self.data_dir))
        return env

    def start(self) -> DaemonProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        connection = self.state_dir / locate.CONNECTION_FILE_NAME
        connection.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "duftd", "--config", str(self.config_dir), "--port", "0", *self.extra_args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: connection.exists() or self.process.poll() is not None, START_TIMEOUT_S, "duftd to start")
        if self.process.poll() is not None:
            raise AssertionError(f"duftd exited with {self.process.returncode}:\n{self.log_text()}")
        self.client = BusClient(ConnectionInfo.load(self.state_dir))
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.client is not None
        return self.client.request(op, **args)

    def submit(self, task: str, **params: Any) -> dict[str, Any]:
        return self.request(Op.SUBMIT, task=task, params=params)

    def wait_final(self, run_id: int, timeout: float = 30.0) -> dict[str, Any]:
        """The run once it reached a final state."""

        def final() -> dict[str, Any] | None:
            run = self.request(Op.RUN, run=run_id)["run"]
            return run if run["state"] in FINAL_STATES else None

        return wait_for(final, timeout, f"run {run_id} to finish", interval=0.05)

    def wait_state(self, run_id: int, state: str, timeout: float = 30.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            run = self.request(Op.RUN, run=run_id)["run"]
            return run if run["state"] == state else None

        return wait_for(reached, timeout, f"run {run_id} to be {state}", interval=0.02)

    def events(self, run_id: int) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while True:
            page = self.request(Op.EVENTS, run=run_id, after=events[-1]["seq"] if events else 0)
            events.extend(page["events"])
            if not page["more"]:
                return events

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Stop the daemon; returns its exit code."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"duftd did not stop within {timeout} s on {sig.name}") from None
