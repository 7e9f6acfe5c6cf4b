"""The daemon: start-up, serving, shutdown, as three phases.

Start-up makes the state folder private, takes its lock, loads the config, opens the
store, binds the three sockets, reconciles runs a previous daemon left behind and writes
the connection file. Shutdown cancels live runs (recorded as cancelled), drains the event
pipeline, closes the store and the sockets, and removes the connection file.

Who may talk to the daemon: each socket listens on ``ipc://<state>/<name>.ipc`` inside the
owner-only state folder, so the filesystem keeps other users out at no cost per message;
asked for tcp (``--host``/``--port``/``--curve-dir``), it also listens there, always under
CURVE, with keys from ``--curve-dir`` or made at start (:mod:`duftd.curve`).

Its size is the three phases in order, kept in one place so that start-up and shutdown
can be read as the sequences they are.
"""

from __future__ import annotations

import asyncio
import fcntl
import gc
import os
import secrets
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from socket import getfqdn
from typing import IO, Any, Literal

import structlog
import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator

from dte_tools import locate
from dte_tools.addresses import is_loopback
from dte_tools.wire import HARD_MESSAGE_BYTES, PROTOCOL_VERSION
from duftd import __version__, connection_file, curve, spawn
from duftd.cluster.connect import DaskSettings, dask_settings
from duftd.cluster.launcher import DaemonSide, DaskLauncher, RunKeys
from duftd.commands import Commands
from duftd.config import LoadedConfig, load_config
from duftd.config_reload import ActiveConfig
from duftd.control import ControlServer
from duftd.errors import StartupError
from duftd.ingest import Ingest
from duftd.pipeline import EventPipeline
from duftd.publisher import PUB_HIGH_WATER_MARK, Publisher
from duftd.runs.manager import RunManager, RunPlaces
from duftd.runs.run import LiveRuns, run_folder
from duftd.scheduler import Scheduler
from duftd.store import Store

log = structlog.get_logger("duftd")

DEFAULT_PORT = 7470
DEFAULT_HOST = "127.0.0.1"
# Everything the daemon and its workers create is its owner's alone (runs, notebooks, logs).
PRIVATE_UMASK = 0o077
RETENTION_INTERVAL_S = 3600.0
# Fewer, cheaper collections: event dicts are short-lived and acyclic.
GC_THRESHOLDS = (20_000, 50, 1000)


@dataclass
class DaemonOptions:
    config_dir: Path
    state_dir: Path
    # tcp is off unless one of host, port or curve_dir is given; then port is control's,
    # ingest and events take the next two (0: any free).
    host: str | None = None
    port: int | None = None
    max_concurrent: int = os.cpu_count() or 2
    cancel_grace_s: float = 5.0
    retention_days: float | None = 90.0
    retention_runs: int | None = 500
    curve_dir: Path | None = None
    spares: bool = True  # keep a warm worker of each kind ready (duftd.runs.workers)
    spare_burst_s: float = 30.0  # a second spare of a kind until its runs pause this long
    containment: Literal["auto", "subreaper"] = "auto"  # subreaper: never cgroups
    strict_connections: bool = False  # refuse connections a task does not declare
    # Where runs execute (duftd.runs.launchers); None: the "launcher" setting, else local.
    launcher: str | None = None
    dask: DaskSettings | None = None  # --dask-scheduler and its TLS files
    dask_data_dir: str | None = None  # a data folder every Dask worker shares, if any

    @property
    def tcp(self) -> bool:
        return self.host is not None or self.port is not None or self.curve_dir is not None


def make_private(folder: Path) -> int:
    """Create ``folder`` owner-only, or take away what others may do in it and in everything
    it holds (a folder made by an older duftd, or by hand); returns how many entries
    were tightened."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    tightened = 0
    for path in [folder, *folder.rglob("*")]:
        try:
            mode = path.lstat().st_mode
        except OSError:  # removed meanwhile
            continue
        if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & 0o077:
            path.chmod(stat.S_IMODE(mode) & 0o700)
            tightened += 1
    return tightened


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
        self.curve: curve.CurveKeys | None = None
        self._authenticator: AsyncioAuthenticator | None = None
        # Where workers reach control and ingest: always the ipc endpoints in the state
        # folder (NULL mechanism; workers never hold keys).
        self.worker_endpoints: dict[str, str] = {}
        self.dask: DaskSettings | None = None
        self.run_keys = RunKeys()
        self._ipc_paths: list[Path] = []

    # -- start-up --------------------------------------------------------------

    async def start(self) -> None:
        options = self.options
        host = options.host or DEFAULT_HOST
        if not is_loopback(host) and options.curve_dir is None:
            raise StartupError(
                f"refusing to listen on {host}: a non-loopback address needs CURVE "
                "keys (--curve-dir with server.key_secret and clients/*.key)"
            )
        if options.curve_dir is not None:
            self.curve = curve.load(options.curve_dir)
        elif options.tcp:
            self.curve = curve.generate()
        os.umask(PRIVATE_UMASK)
        tightened = make_private(options.state_dir)
        if tightened:
            log.warning(
                "state folder was open to other users; made it owner-only",
                state=str(options.state_dir),
                entries=tightened,
            )
        self._take_lock()
        subreaper = options.containment == "subreaper"
        log.info("run containment", mechanism=spawn.contain_workers(subreaper))
        config = self._load_config()
        self.dask = dask_settings(options.launcher, options.dask, config.user.settings)
        if self.dask is not None and not options.tcp:
            raise StartupError(
                "--launcher dask needs duftd on tcp (--host/--port; always under CURVE): "
                "Dask workers dial back to its control socket"
            )
        self.store = await Store.open(options.state_dir / "runs.sqlite")
        key = secrets.token_hex(32)
        sockets = self._bind()
        publisher = Publisher(sockets["events"])
        self.pipeline = EventPipeline(self.store, publisher)
        places = RunPlaces(
            control=self.worker_endpoints["control"],
            ingest=self.worker_endpoints["ingest"],
            data_dir=locate.data_dir(config.root),
            state_dir=options.state_dir,
        )
        live = LiveRuns()
        active = ActiveConfig(config)
        self.manager = RunManager(
            self.store,
            self.pipeline,
            active,
            places,
            live,
            options.max_concurrent,
            options.cancel_grace_s,
            spares=options.spares,
            spare_burst_s=options.spare_burst_s,
            launcher=self._dask_launcher(),
        )
        ingest = Ingest(sockets["ingest"], self.pipeline, live.link)
        scheduler = Scheduler(self.manager, live, self.pipeline, active)
        commands = Commands(
            self.manager,
            active,
            self.store,
            self.pipeline,
            ingest,
            scheduler,
            self.started_at,
            options.strict_connections,
        )
        control = ControlServer(sockets["control"], key.encode(), commands.operations(), live.get)
        self._tasks = [
            asyncio.create_task(self.pipeline.run(), name="pipeline"),
            asyncio.create_task(ingest.run(), name="ingest"),
            asyncio.create_task(control.run(), name="control"),
            asyncio.create_task(self._retention(), name="retention"),
            asyncio.create_task(scheduler.run(), name="scheduler"),
        ]
        lost = await self.manager.reconcile()
        self.manager.launcher.start()
        # Everything loaded so far lives as long as the daemon: keep it out of the cyclic
        # collector's full passes, which otherwise stall the loop for tens of milliseconds
        # while events stream (seen as control-latency spikes in `make bench`).
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
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
                **(self.curve.connection_info() if self.curve else {}),
            },
        )
        log.info(
            "duftd started",
            version=__version__,
            config=str(config.root),
            state=str(options.state_dir),
            connection_file=str(path),
            runs_marked_lost=lost,
            access="CURVE on tcp, ipc in the owner-only state folder"
            if self.curve
            else "ipc in the owner-only state folder",
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
        keys = self.curve
        if keys is not None:
            # Checks every CURVE peer's key (tcp only: the ipc endpoints set no ZAP domain,
            # so their NULL peers are never sent to it).
            self._authenticator = AsyncioAuthenticator(self.context)
            self._authenticator.start()
            if self.dask is not None:  # the clients, and one key per run on the cluster
                self.run_keys.clients = keys.allowed_keys()
                self._authenticator.configure_curve_callback("*", self.run_keys)
            else:
                keys.allow_clients(self._authenticator)
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
            # First the ipc endpoint: libzmq takes a socket's options at each bind, and
            # this one is no CURVE server.
            self.endpoints[name] = self._bind_ipc(socket, name)
            if name != "events":
                self.worker_endpoints[name] = self.endpoints[name]
            if keys is not None:
                self.endpoints[name] = self._bind_tcp(socket, name, offset, keys)
            sockets[name] = socket
        return sockets

    def _bind_ipc(self, socket: zmq.asyncio.Socket, name: str) -> str:
        """Bind ``<state>/<name>.ipc`` (NULL mechanism), owner-only like its folder."""
        path = self.options.state_dir / f"{name}.ipc"
        endpoint = f"ipc://{path}"
        try:
            socket.bind(endpoint)  # replaces a file a crashed daemon left (we hold the lock)
        except zmq.ZMQError as error:
            raise StartupError(
                f"cannot listen on {endpoint}: {error}; a shorter --state-dir path may help "
                "(ipc paths are limited to ~100 bytes)"
            ) from None
        path.chmod(0o600)
        self._ipc_paths.append(path)
        return socket.last_endpoint.decode()

    def _bind_tcp(
        self, socket: zmq.asyncio.Socket, name: str, offset: int, keys: curve.CurveKeys
    ) -> str:
        """Bind the tcp endpoint as a CURVE server (only allowed client keys get in)."""
        host = self.options.host or DEFAULT_HOST
        base = DEFAULT_PORT if self.options.port is None else self.options.port
        port = "*" if base == 0 else str(base + offset)
        socket.curve_secretkey = keys.secret
        socket.curve_publickey = keys.public
        socket.curve_server = True
        try:
            socket.bind(f"tcp://{host}:{port}")
        except zmq.ZMQError as error:
            raise StartupError(
                f"cannot listen on tcp://{host}:{port} for {name}: {error}; "
                "pick another --port (0 picks free ports)"
            ) from None
        return socket.last_endpoint.decode()

    def _dask_launcher(self) -> DaskLauncher | None:
        """The Dask launcher when runs go to a cluster (None: local workers)."""
        if self.dask is None:
            return None
        assert self.pipeline is not None and self.curve is not None
        control = self.endpoints["control"]
        host = self.options.host
        if host in ("0.0.0.0", "::", "*"):  # bound everywhere: give workers a dialable name
            control = control.replace(f"//{host}:", f"//{getfqdn()}:", 1)
        daemon = DaemonSide(control, self.curve.public.decode())
        return DaskLauncher(
            self.dask, self.pipeline, daemon, self.run_keys, self.options.dask_data_dir
        )

    # -- serving ---------------------------------------------------------------

    async def _retention(self) -> None:
        options = self.options
        while True:
            older = None
            if options.retention_days is not None:
                older = time.time() - options.retention_days * 86400
            assert self.store is not None and self.pipeline is not None
            try:
                pruned = await self.store.prune(older, options.retention_runs, self.pipeline.write)
            except Exception:
                log.exception("pruning old runs failed")
                pruned = []
            # Executed notebooks and other per-run files go with the run (in a thread: a
            # first pass over years of history may remove thousands of folders).
            await asyncio.to_thread(self._remove_run_dirs, pruned)
            if pruned:
                log.info("pruned old runs", runs=len(pruned))
            await asyncio.sleep(RETENTION_INTERVAL_S)

    def _remove_run_dirs(self, run_ids: list[int]) -> None:
        for run_id in run_ids:
            shutil.rmtree(run_folder(self.options.state_dir, run_id), ignore_errors=True)

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
        spawn.release_containment()
        if self._authenticator is not None:
            self._authenticator.stop()
        self.context.destroy(linger=0)
        self._remove_ipc()
        connection_file.remove(self.options.state_dir, os.getpid())
        if self._lock is not None:
            self._lock.close()
        log.info("duftd stopped")

    def _remove_ipc(self) -> None:
        """Remove the ipc files this daemon bound (never another daemon's: a start refused
        for a held lock stops too)."""
        for path in self._ipc_paths:
            path.unlink(missing_ok=True)


async def run_daemon(options: DaemonOptions, stop: asyncio.Event) -> None:
    """Start, serve until ``stop``, and always shut down cleanly."""
    daemon = Daemon(options)
    try:
        await daemon.start()
        await daemon.serve(stop)
    finally:
        await daemon.stop()
