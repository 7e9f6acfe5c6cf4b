"""The two places a data task can run: under duftd, or standalone from a terminal or IDE.

Both answer the same questions (parameters, connections, folders) and take the same
events; task code never knows which one it has.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from collections.abc import Iterable
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
    ENV_TASK,
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
    """No daemon: read duft-config from disk and print events as terminal lines.

    Values are resolved by duftd's own code (:mod:`duftd.config.resolve`, imported only
    here, so a task under duftd never pays for it) for the task whose script is running:
    the same defaults, ``allowOverride`` and connection rules as a run under duftd. Two
    differences, printed as warnings: a value of another type is kept (duftd refuses the
    run), and a script no data_tasks.json declares gets what it was given, unresolved.
    """

    def __init__(self, config_dir: Path, script: Path | None = None) -> None:
        self.config_dir = config_dir
        self._script = script
        self._resolved: tuple[Any, Any] | None = None  # (LoadedConfig, TaskSpec | None)
        self._secrets: set[str] = set()
        self._redactor = Redactor(())

    @classmethod
    def discover(cls) -> StandaloneBackend:
        """Find duft-config from the running script's folder, else the working folder."""
        main = sys.modules.get("__main__")
        script = getattr(main, "__file__", None)
        start = Path(script).parent if script else Path.cwd()
        return cls(locate.find_config_dir(start), Path(script).resolve() if script else None)

    def _config_and_task(self) -> tuple[Any, Any]:
        """The loaded config and the task declaring the running script (None if not one)."""
        if self._resolved is None:
            from duftd.config import load_config, resolve

            config = load_config(self.config_dir)
            found = [t for t in config.tasks.values() if self._is_running(t.script_path)]
            chosen = os.environ.get(ENV_TASK)
            if chosen:
                found = [t for t in found if chosen in (t.address, t.id)]
            task = found[0] if len(found) == 1 else None
            if len(found) > 1:
                names = ", ".join(t.address for t in found)
                self._warn(
                    f"{self._script} is the script of several tasks ({names}): parameters are "
                    f"used as given; set {ENV_TASK} to one of them to get its defaults"
                )
            self._resolved = (config, task)
            if task is not None:
                self._mask(resolve.secret_values(config, task))
        return self._resolved

    def _is_running(self, script_path: Path) -> bool:
        return self._script is not None and script_path.resolve() == self._script

    def parameters(self, given: dict[str, Any]) -> dict[str, Any]:
        """As duftd would resolve ``given`` for this script's task."""
        from duftd.config import resolve_parameters

        _, task = self._config_and_task()
        if task is None:
            return given
        resolved = resolve_parameters(task, given, refuse_mismatches=False)
        for name, why in resolved.ignored.items():
            self._warn(f"parameter {name!r} ignored: {why} (duftd ignores it too)")
        for mismatch in resolved.mismatched:
            self._warn(f"parameter {mismatch}: kept here, but duftd would refuse this run")
        return resolved.values

    def connection(self, connection_id: str) -> dict[str, Any]:
        """The user's values for a connection (``{}`` when none), as duftd would give them."""
        from duftd.config import resolve_connection, strict_connections

        config, task = self._config_and_task()
        if task is not None:
            return resolve_connection(config, task, connection_id, strict_connections(config))
        values = dict(config.user.data_connection_parameters.get(connection_id) or {})
        self._mask(secret_values(values))
        return values

    def _mask(self, secrets: Iterable[str]) -> None:
        self._secrets |= set(secrets)
        self._redactor = Redactor(self._secrets)

    def _warn(self, message: str) -> None:
        self.emit(Kind.LOG, {"level": "warning", "message": message})

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
