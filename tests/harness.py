"""A real duftd in a subprocess for tests: free ports, a temporary state folder, always stopped."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from clients.bus import BusClient, ConnectionInfo
from dte_tools import locate
from dte_tools.wire import FINAL_STATES, Op

REPO = Path(__file__).resolve().parents[1]
EMBEDDED_CONFIG = REPO / "duft-config"
# The public DUFT config as published, in shared/ beside the checkout (resolved: the loader
# reports resolved paths).
FIXTURES_DIR = (REPO.parent / "shared" / "fixtures" / "duft-config-public").resolve()
START_TIMEOUT_S = 20.0


@contextlib.contextmanager
def second_user(prefix: str) -> Iterator[pwd.struct_passwd]:
    """A fresh system user with no home or shell, for access tests; removed afterwards.
    Skips the test (saying why) where this process may not create users."""
    if os.geteuid() != 0:
        pytest.skip("creating a second unix user needs root")
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"useradd refused to create a second user: {made.stderr.strip()}")
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)


def environment_without_duft(**extra: str) -> dict[str, str]:
    """This process's environment minus every DUFT_* variable (a test's own daemon or task
    must not find the developer's), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUFT_")}
    env.update(extra)
    return env


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after
    ``timeout``."""
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
    document["dataTasks"].append(
        {"id": task_id, "name": task_id, "pythonFile": file_name, **fields}
    )
    tasks_file.write_text(json.dumps(document, indent=2), encoding="utf-8")


class DaemonProcess:
    """One duftd subprocess and a client to it."""

    def __init__(
        self, config_dir: Path, state_dir: Path, data_dir: Path, extra_args: list[str]
    ) -> None:
        self.config_dir = config_dir
        self.state_dir = state_dir
        self.data_dir = data_dir
        self.extra_args = extra_args
        self.log_path = state_dir / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.client: BusClient | None = None
        self.control_endpoint = ""

    @property
    def env(self) -> dict[str, str]:
        return environment_without_duft(
            DUFT_STATE_DIR=str(self.state_dir), DUFT_DATA_DIR=str(self.data_dir)
        )

    def start(self) -> DaemonProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        connection = self.state_dir / locate.CONNECTION_FILE_NAME
        connection.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "duftd",
                    "--config",
                    str(self.config_dir),
                    *self.extra_args,
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(
            lambda: connection.exists() or self.process.poll() is not None,
            START_TIMEOUT_S,
            "duftd to start",
        )
        if self.process.poll() is not None:
            raise AssertionError(f"duftd exited with {self.process.returncode}:\n{self.log_text()}")
        self.client = BusClient(ConnectionInfo.load(self.state_dir))
        # Where its workers reach it (their environment names it), whatever clients use.
        self.control_endpoint = f"ipc://{self.state_dir.resolve() / 'control.ipc'}"
        return self

    def log_text(self) -> str:
        return (
            self.log_path.read_text(encoding="utf-8", errors="replace")
            if self.log_path.exists()
            else ""
        )

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
        finally:
            kill_leftover_workers(self.control_endpoint)


# -- helpers for tests that misbehave on purpose (issue 3) ---------------------------

WORKERS_DIR = Path(__file__).resolve().parent / "workers"


def meet_dir(config_dir: Path) -> Path:
    """Where test workers leave notes and wait for gates: ``meet/`` beside the config."""
    return config_dir.resolve().parent / "meet"


def add_worker_task(config_dir: Path, task_id: str, worker: str, **fields: Any) -> None:
    """Declare ``task_id`` running ``tests/workers/<worker>.py`` (``worker_kit.py`` too)."""
    data_tasks = config_dir / "system" / "data_tasks"
    shutil.copy(WORKERS_DIR / "worker_kit.py", data_tasks / "worker_kit.py")
    code = (WORKERS_DIR / f"{worker}.py").read_text(encoding="utf-8")
    add_script_task(config_dir, task_id, code, pythonFile=f"{worker}.py", **fields)


def read_note(config_dir: Path, name: str, run_id: int, timeout: float = 15.0) -> Any:
    """Wait for the note ``name`` that run ``run_id``'s worker writes (worker_kit.note)."""
    path = meet_dir(config_dir) / f"{name}-{run_id}.json"
    wait_for(path.exists, timeout, f"run {run_id} to write its {name!r} note")
    return json.loads(path.read_text(encoding="utf-8"))


def open_gate(config_dir: Path, run_id: int, name: str = "gate") -> None:
    """Let run ``run_id``'s worker past ``worker_kit.wait_gate(name)``."""
    folder = meet_dir(config_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}-{run_id}").touch()


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    """Wait until none of ``pids`` is alive."""
    wait_for(
        lambda: not any(pid_alive(pid) for pid in pids), timeout, f"processes {pids} to be gone"
    )


def log_messages(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["message"] for e in events if e["kind"] == "log"]


def final_state_event(events: list[dict[str, Any]]) -> dict[str, Any]:
    states = [e for e in events if e["kind"] == "state"]
    assert states and states[-1]["data"]["state"] in FINAL_STATES, states
    return states[-1]


class RawSocket:
    """One ZeroMQ socket of any type, on its own context, for speaking raw frames to duftd."""

    def __init__(self, kind: int, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(kind)
        self.socket.linger = 0
        if kind == zmq.SUB:
            self.socket.rcvhwm = 0
        self.socket.connect(endpoint)

    def __enter__(self) -> RawSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()

    def send(self, frames: list[bytes]) -> None:
        self.socket.send_multipart(frames)

    def offer(self, frames: list[bytes], timeout: float = 2.0) -> bool:
        """Send, unless no peer takes it within ``timeout`` (False): a DEALER whose CURVE
        handshake was refused has no peer left, and its send would block for ever."""
        self.socket.sndtimeo = int(timeout * 1000)
        try:
            self.socket.send_multipart(frames)
            return True
        except zmq.Again:
            return False
        finally:
            self.socket.sndtimeo = -1

    def recv(self, timeout: float = 10.0) -> list[bytes] | None:
        if not self.socket.poll(timeout * 1000):
            return None
        return self.socket.recv_multipart()

    def ask(self, frames: list[bytes], timeout: float = 10.0) -> dict[str, Any]:
        """Send a control request and return the reply body (a DEALER socket only)."""
        self.send(frames)
        reply = self.recv(timeout)
        assert reply is not None, f"no reply within {timeout} s"
        assert len(reply) == 3 and reply[0] == b"duft/1", reply
        return json.loads(reply[2])

    def drain(self) -> list[list[bytes]]:
        """Every message already waiting, without blocking."""
        messages = []
        while self.socket.poll(0):
            messages.append(self.socket.recv_multipart())
        return messages


def kill_leftover_workers(control_endpoint: str) -> list[int]:
    """SIGKILL processes a stopped daemon's workers left behind (so no test leaks them)."""
    if not control_endpoint:
        return []
    needle = f"\0DUFT_CONTROL_ENDPOINT={control_endpoint}\0".encode()
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            environ = b"\0" + (proc / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
    return killed
