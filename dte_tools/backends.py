"""The two places a data task can run: under duftd, or standalone from a terminal or IDE.

Both answer the same questions (parameters, connections, folders) and take the same
events; task code never knows which one it has.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from dte_tools import channel, locate
from dte_tools.job import current as current_job
from dte_tools.redact import Redactor, secret_values
from dte_tools.wire import (
    ENV_CONTROL,
    ENV_INGEST,
    ENV_RUN_ID,
    ENV_RUN_TOKEN,
    Kind,
    Op,
    run_signer,
)

FLUSH_TIMEOUT_S = 10.0


class Backend(Protocol):
    def parameters(self, given: dict[str, Any]) -> dict[str, Any]: ...
    def connection(self, connection_id: str) -> dict[str, Any]: ...
    def emit(self, kind: str, data: dict[str, Any]) -> None: ...
    def data_dir(self) -> Path: ...
    def close(self) -> None: ...


class StandaloneBackend:
    """No daemon: read duft-config from disk and print events as terminal lines."""

    def __init__(self, config_dir: Path) -> None:
        self.config_dir = config_dir
        self._user_values: dict[str, Any] | None = None
        # Secret values the task has fetched: masked in printed lines, as duftd masks them.
        self._secrets: set[str] = set()
        self._redactor = Redactor(())

    @classmethod
    def discover(cls) -> StandaloneBackend:
        """Find duft-config from the running script's folder, else the working folder."""
        main = sys.modules.get("__main__")
        script = getattr(main, "__file__", None)
        start = Path(script).parent if script else Path.cwd()
        return cls(locate.find_config_dir(start))

    def parameters(self, given: dict[str, Any]) -> dict[str, Any]:
        return given

    def connection(self, connection_id: str) -> dict[str, Any]:
        """The user's values for a connection (``{}`` when none), as duftd would give them."""
        if self._user_values is None:
            path = self.config_dir / "user" / "config.json"
            user = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            self._user_values = user.get("dataConnectionParameters") or {}
        values = dict(self._user_values.get(connection_id) or {})
        self._secrets |= secret_values(values)
        self._redactor = Redactor(self._secrets)
        return values

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        if kind == Kind.PROGRESS:
            message = data.get("message") or ""
            line = f"{stamp} PROGRESS {data['done']}/{data['total']} {message}".rstrip()
        else:
            line = f"{stamp} {data.get('level', 'info').upper():<8} {data.get('message', '')}"
        print(self._redactor.mask(line), flush=True)

    def data_dir(self) -> Path:
        return locate.data_dir(self.config_dir)

    def close(self) -> None:
        sys.stdout.flush()


class DaemonBackend:
    """Under duftd: fetch the run's resolved values over control; events go into the
    process's durable channel (:mod:`dte_tools.channel`).

    A process of the run that has no channel (a program the task started, once the
    process holding the channel is gone) sends its events to the signed ingest socket
    instead; those are stored only while the run is live.
    """

    def __init__(self, run_id: str, token: bytes, control: str, ingest: str) -> None:
        import zmq  # imported here so a standalone task never pays for it

        from dte_tools.daemon_link import ControlClient, EventSender

        self.run_id = run_id
        self._context = zmq.Context()
        self._control = ControlClient(self._context, control, token, run_signer(run_id))
        self._channel = channel.current()
        self._sender = None
        if self._channel is None:
            self._sender = EventSender(self._context, ingest, run_id, token)
            atexit.register(self.close)
        self._hello: dict[str, Any] | None = None
        self._closed = False

    @classmethod
    def from_environment(cls) -> DaemonBackend:
        env = os.environ
        return cls(env[ENV_RUN_ID], env[ENV_RUN_TOKEN].encode(), env[ENV_CONTROL], env[ENV_INGEST])

    def hello(self) -> dict[str, Any]:
        """The run's task id, resolved parameters, declared connections and folders."""
        if self._hello is None:
            self._hello = self._control.request(Op.WORKER_HELLO)
        return self._hello

    def parameters(self, given: dict[str, Any]) -> dict[str, Any]:
        """The run's resolved parameters: from the job duftd gave this process, else (a
        notebook's kernel, a program the task started) asked of duftd."""
        job = current_job()
        return dict(job.params) if job is not None else dict(self.hello()["params"])

    def connection(self, connection_id: str) -> dict[str, Any]:
        return self._control.request(Op.WORKER_CONNECTION, {"id": connection_id})["values"]

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        if self._channel is not None:
            self._channel.emit(kind, data)
        else:
            self._sender.put(kind, data)

    def data_dir(self) -> Path:
        return Path(self.hello()["data_dir"])

    def close(self) -> None:
        """Release the sockets (delivering what the ingest sender still holds); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._sender is not None:
            self._sender.close(FLUSH_TIMEOUT_S)
        self._control.close()
        self._context.term()


def detect() -> Backend:
    """The daemon backend when started by duftd, else standalone."""
    if os.environ.get(ENV_RUN_ID):
        return DaemonBackend.from_environment()
    return StandaloneBackend.discover()
