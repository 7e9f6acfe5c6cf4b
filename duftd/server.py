"""The daemon: start-up, serving, shutdown, as three phases.

Start-up takes the state folder's lock, loads the config, opens the store, binds the
three sockets, reconciles runs a previous daemon left behind and writes the connection
file. Shutdown cancels live runs (recorded as cancelled), drains the event pipeline,
closes the store and the sockets, and removes the connection file.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog
import zmq
import zmq.asyncio

from duftd import __version__, connection_file
from duftd.commands import Commands
from duftd.config import LoadedConfig, load_config
from duftd.control import ControlServer
from duftd.errors import StartupError
from duftd.ingest import Ingest
from duftd.pipeline import EventPipeline
from duftd.publisher import PUB_HIGH_WATER_MARK, Publisher
from duftd.runs.manager import RunManager, WorkerEndpoints
from duftd.scheduler import Scheduler
from duftd.store import Store
from dte_tools import locate
from dte_tools.wire import HARD_MESSAGE_BYTES, PROTOCOL_VERSION

log = structlog.get_logger("duftd")

DEFAULT_PORT = 7470
RETENTION_INTERVAL_S = 3600.0


@dataclass
class DaemonOptions:
    config_dir: Path
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # control; ingest and events take the next two (0: any free)
    max_concurrent: int = os.cpu_count() or 2
    cancel_grace_s: float = 5.0
    retention_days: float | None = 90.0
    retention_runs: int | None = 500
    curve_dir: Path | None = None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Daemon:
    def __init__(self, options: DaemonOptions) -> None:
        self.options = options
        self.started_at = time.time()
        self.context = zmq.asyncio.Context()
        self._lock: IO[str] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.store: Store | None = None
        self.pipeline: EventPipeline | None = None
        self.manager: RunManager | None = None
        self.endpoints: dict[str, str] = {}

    # -- start-up --------------------------------------------------------------

    async def start(self) -> None:
        options = self.options
        if not is_loopback(options.host) and options.curve_dir is None:
            raise StartupError(
                f"refusing to listen on {options.host}: a non-loopback address needs CURVE "
                "keys (--curve-dir with server.key_secret and clients/*.key)"
            )
        options.state_dir.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        config = self._load_config()
        self.store = await Store.open(options.state_dir / "runs.sqlite")
        key = secrets.token_hex(32)
        sockets = self._bind()
        publisher = Publisher(sockets["events"])
        self.pipeline = EventPipeline(self.store, publisher)
        worker = WorkerEndpoints(
            control=self.endpoints["control"],
            ingest=self.endpoints["ingest"],
            data_dir=locate.data_dir(config.root),
            runs_dir=options.state_dir / "runs",
        )
        self.manager = RunManager(
            self.store, self.pipeline, config, worker, options.max_concurrent, options.cancel_grace_s
        )
        ingest = Ingest(sockets["ingest"], self.pipeline, self.manager.worker_link)
        self.manager.ingest = ingest
        scheduler = Scheduler(self.manager, config)
        commands = Commands(self.manager, ingest, self.started_at, scheduler)
        control = ControlServer(
            sockets["control"], key.encode(), commands.handlers(), self.manager.live_run
        )
        self._tasks = [
            asyncio.create_task(self.pipeline.run(), name="pipeline"),
            asyncio.create_task(ingest.run(), name="ingest"),
            asyncio.create_task(control.run(), name="control"),
            asyncio.create_task(self._retention(), name="retention"),
            asyncio.create_task(scheduler.run(), name="scheduler"),
        ]
        lost = await self.manager.reconcile()
        path = connection_file.write(
            options.state_dir,
            {
                **self.endpoints,
                "key": key,
                "pid": os.getpid(),
                "version": __version__,
                "protocol": PROTOCOL_VERSION,
                "started_at": self.started_at,
                "config": str(config.root),
            },
        )
        log.info(
            "duftd started",
            version=__version__,
            config=str(config.root),
            state=str(options.state_dir),
            connection_file=str(path),
            runs_marked_lost=lost,
            **self.endpoints,
        )

    def _take_lock(self) -> None:
        lock_path = self.options.state_dir / "duftd.lock"
        handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held until stop
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StartupError(
                f"another duftd (pid {holder}) is using the state folder {self.options.state_dir}; "
                "stop it first or pass another --state-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    def _load_config(self) -> LoadedConfig:
        config = load_config(self.options.config_dir)
        for diagnostic in config.diagnostics:
            if diagnostic.severity == "error":
                log.warning("config problem", problem=str(diagnostic))
        runnable = sum(task.runnable for task in config.tasks.values())
        log.info("config loaded", root=str(config.root), tasks=len(config.tasks), runnable=runnable)
        return config

    def _bind(self) -> dict[str, zmq.asyncio.Socket]:
        options = self.options
        kinds = {"control": zmq.ROUTER, "ingest": zmq.PULL, "events": zmq.PUB}
        sockets = {}
        for offset, (name, kind) in enumerate(kinds.items()):
            socket = self.context.socket(kind)
            socket.linger = 0
            socket.setsockopt(zmq.MAXMSGSIZE, HARD_MESSAGE_BYTES)
            if kind == zmq.PUB:
                socket.sndhwm = PUB_HIGH_WATER_MARK
            if kind == zmq.PULL:
                # A message is a batch of up to 500 events: a short queue bounds memory,
                # and a full one makes workers wait instead of the daemon swelling.
                socket.rcvhwm = 100
            port = "*" if options.port == 0 else str(options.port + offset)
            try:
                socket.bind(f"tcp://{options.host}:{port}")
            except zmq.ZMQError as error:
                raise StartupError(
                    f"cannot listen on tcp://{options.host}:{port} for {name}: {error}; "
                    "pick another --port (0 picks free ports)"
                ) from None
            self.endpoints[name] = socket.last_endpoint.decode()
            sockets[name] = socket
        return sockets

    # -- serving ---------------------------------------------------------------

    async def _retention(self) -> None:
        options = self.options
        while True:
            older = None
            if options.retention_days is not None:
                older = time.time() - options.retention_days * 86400
            assert self.store is not None
            with contextlib.suppress(Exception):
                pruned = await self.store.prune(older, options.retention_runs)
                if pruned:
                    log.info("pruned old runs", runs=pruned)
            await asyncio.sleep(RETENTION_INTERVAL_S)

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set or a core loop dies (which is logged)."""
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and not task.cancelled() and task.exception():
                log.error("a core loop died", loop=task.get_name(), error=repr(task.exception()))
        stopper.cancel()

    # -- shutdown --------------------------------------------------------------

    async def stop(self) -> None:
        if self.manager is not None:
            await self.manager.shutdown()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.store is not None:
            await self.store.close()
        self.context.destroy(linger=0)
        connection_file.remove(self.options.state_dir, os.getpid())
        if self._lock is not None:
            self._lock.close()
        log.info("duftd stopped")


async def run_daemon(options: DaemonOptions, stop: asyncio.Event) -> None:
    """Start, serve until ``stop``, and always shut down cleanly."""
    daemon = Daemon(options)
    try:
        await daemon.start()
        await daemon.serve(stop)
    finally:
        await daemon.stop()

