"""``--launcher dask``: each run is one Dask task that runs its worker on a Dask worker.

The run manager drives a :class:`DaskRun` as it drives a local supervisor. The job goes
to the cluster with the task folder (content-addressed, :mod:`duftd.cluster.bundle`), the
run's token and a CURVE keypair made for this run alone; on the Dask worker a relay
(:mod:`duftd.cluster.relay`) claims the run, starts its worker and brings its events
back. The claim is single-use: when Dask reschedules the task after the worker running it
died, the second start is refused and the run is recorded ``lost`` with the reason. The
keypair is revoked and the token dies when the run ends.

Its size is the Dask client's life cycle (connect, reconnect, submit, cancel) beside the
run it drives; both sides of one run stay in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import zmq

from dte_tools.job import Job
from dte_tools.wire import State
from duftd.cluster import bundle
from duftd.cluster.connect import DaskSettings, security, submit_job
from duftd.errors import BadRequestError, UnauthorizedError
from duftd.ingest import accept
from duftd.pipeline import EventPipeline
from duftd.protocol import ClaimArgs, RemoteEventsArgs
from duftd.runs.supervisor import Limits, Outcome, judge

if TYPE_CHECKING:
    from distributed import Client, Future

    from duftd.runs.run import LiveRun

log = structlog.get_logger("duftd.cluster")

# A run whose relay has said nothing this long is lost (it beats every 0.5 s).
SILENCE_LOST_S = 10.0
# After a stop, how long beyond the grace the relay has to report the run's end.
STOP_REPORT_S = 10.0
CONNECT_RETRY_S = 2.0
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class DaemonSide:
    """What a relay needs to reach duftd: its tcp control endpoint and CURVE public key."""

    control: str
    server_key: str


@dataclass
class RunKeys:
    """The CURVE clients let in: duftd's own clients, plus one keypair per live run placed
    on the cluster (made at submit, revoked at the run's end). pyzmq's authenticator asks
    :meth:`callback` at each handshake."""

    clients: set[bytes] = field(default_factory=set)
    runs: set[bytes] = field(default_factory=set)

    def callback(self, domain: str, key: bytes) -> bool:
        return any(hmac.compare_digest(key, known) for known in (*self.clients, *self.runs))

    def issue(self) -> tuple[str, str]:
        public, secret = zmq.curve_keypair()
        self.runs.add(public)
        return public.decode(), secret.decode()

    def revoke(self, public: str) -> None:
        self.runs.discard(public.encode())


class DaskLauncher:
    """Runs placed on the Dask cluster at ``settings.scheduler``."""

    name = "dask"
    keeps_output = False  # a notebook's executed copy stays on its Dask worker's run folder

    def __init__(
        self,
        settings: DaskSettings,
        pipeline: EventPipeline,
        daemon: DaemonSide,
        keys: RunKeys,
        data_dir: str | None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.daemon = daemon
        self.keys = keys
        self.data_dir = data_dir
        self._client: Client | None = None
        self._connected = asyncio.Event()
        self._connecting: asyncio.Task[None] | None = None
        self.error: str | None = None

    def start(self) -> None:
        self._connecting = asyncio.create_task(self._connect(), name="dask-connect")

    async def _connect(self) -> None:
        """Connect, retrying while the scheduler cannot be reached (runs wait meanwhile)."""
        from distributed import Client

        while True:
            try:
                self._client = await Client(
                    self.settings.scheduler,
                    asynchronous=True,
                    security=security(self.settings),
                    timeout=CONNECT_TIMEOUT_S,
                )
            except (OSError, TimeoutError) as error:
                self.error = f"cannot reach the Dask scheduler {self.settings.scheduler}: {error}"
                log.warning("dask scheduler unreachable", error=self.error)
                await asyncio.sleep(CONNECT_RETRY_S)
                continue
            self.error = None
            self._connected.set()
            log.info("connected to the dask scheduler", scheduler=self.settings.scheduler)
            return

    async def client(self) -> Client:
        """The connected client (waits while the scheduler is unreachable)."""
        await self._connected.wait()
        assert self._client is not None
        return self._client

    async def place(self, run: LiveRun, limits: Limits) -> DaskRun:
        return DaskRun(self, run, limits)

    def health(self) -> dict[str, Any]:
        client = self._client
        connected = client is not None and client.status == "running"
        workers = len(client.scheduler_info().get("workers", {})) if connected else 0
        return {
            "launcher": self.name,
            "scheduler": self.settings.scheduler,
            "connected": connected,
            "workers": workers,
            "error": self.error if not connected else None,
        }

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._client is not None:
            await self._client.close()


class DaskRun:
    """One run on the cluster, as the run manager sees any placed run."""

    def __init__(self, launcher: DaskLauncher, run: LiveRun, limits: Limits) -> None:
        self._launcher = launcher
        self._run = run
        self._limits = limits
        self.worker_id = f"dask-{secrets.token_hex(8)}"
        self.abandoned_pipes = 0
        self._stop: tuple[str, str] | None = None
        self._stop_requested = asyncio.Event()
        self._claim: ClaimArgs | None = None
        self._claimed = asyncio.Event()
        self._lost: str | None = None
        self._lost_event = asyncio.Event()
        self._future: Future | None = None
        self._result: asyncio.Task[Any] | None = None
        self._public: str | None = None
        self._batches = 0  # batches stored so far (each number is taken once)
        self._heard = time.monotonic()
        self._remote_lost: Counter[str] = Counter()

    # -- the manager's side ------------------------------------------------------

    async def start(self, job: Job) -> dict[str, Any] | None:
        """Submit the job; the Dask worker and host once the relay has claimed the run
        (None when it was stopped before any worker took it)."""
        client = await self._until_stopped(self._launcher.client())
        if client is None:
            return None
        task = self._run.task
        try:
            packed = await asyncio.to_thread(bundle.pack, task.data_tasks_dir)
        except bundle.BundleError as error:
            raise OSError(str(error)) from None
        self._public, secret = self._launcher.keys.issue()
        daemon = self._launcher.daemon
        spec = {
            "run_id": self._run.id,
            "job": job._asdict(),
            "kind": task.kind,
            "script": task.script_path.name,
            "execute_from_root": task.execute_from_root,
            "bundle": packed.data,
            "digest": packed.digest,
            "grace_s": self._limits.cancel_grace_s,
            "data_dir": self._launcher.data_dir,
            "daemon": {
                "control": daemon.control,
                "server_key": daemon.server_key,
                "public": self._public,
                "secret": secret,
            },
        }
        key = f"duftd-run-{self._run.id}-{self.worker_id}"
        self._future = submit_job(client, spec, task.resources, key)
        self._result = asyncio.ensure_future(self._future.result())
        self._heard = time.monotonic()
        claim = await self._until_stopped(self._claimed.wait(), self._result)
        if claim is None or self._claim is None:
            return None
        self._heard = time.monotonic()
        return {"dask_worker": self._claim.worker, "host": self._claim.host}

    async def _until_stopped(self, waited: Any, *also: asyncio.Future[Any]) -> Any:
        """``waited``'s result, or None once a stop, a loss or one of ``also`` came first."""
        task = asyncio.ensure_future(waited)
        stop = asyncio.ensure_future(self._stop_requested.wait())
        lost = asyncio.ensure_future(self._lost_event.wait())
        await asyncio.wait({task, stop, lost, *also}, return_when=asyncio.FIRST_COMPLETED)
        for pending in (stop, lost):
            pending.cancel()
        if task.done():
            return task.result() if task.result() is not None else True
        task.cancel()
        return None

    def stop(self, state: str, reason: str) -> None:
        if self._stop is None:
            self._stop = (state, reason)
        self._stop_requested.set()

    def discard(self) -> None:
        self._release()

    async def wait(self) -> Outcome:
        try:
            outcome = await self._outcome()
        finally:
            await self._release_async()
        for reason, count in self._remote_lost.items():
            self._run.link.channel.lost[f"{reason} (on the Dask worker)"] += count
        return outcome

    async def _outcome(self) -> Outcome:
        if self._lost is not None:
            return Outcome(State.LOST, None, self._lost)
        if self._claim is None and self._result is not None and self._result.done():
            return self._judge()  # the job ended without starting the run (it says why)
        if self._claim is None:  # stopped before any Dask worker started it
            state, reason = self._stop or (State.CANCELLED, "stopped before it started")
            return Outcome(state, None, reason)
        assert self._result is not None
        timeout = self._limits.timeout_s
        started = time.monotonic()
        stopping_since: float | None = None
        while not self._result.done():
            await self._until_stopped(asyncio.sleep(0.5), self._result)
            now = time.monotonic()
            if self._lost is not None:
                return Outcome(State.LOST, None, self._lost)
            if timeout is not None and now - started > timeout and self._stop is None:
                self.stop(State.FAILED, f"timed out after {timeout:g} s (timeoutSeconds)")
            if self._stop is not None and stopping_since is None:
                stopping_since = now
            if now - self._heard > SILENCE_LOST_S:
                return Outcome(State.LOST, None, self._silence())
            grace = self._limits.cancel_grace_s + STOP_REPORT_S
            if stopping_since is not None and now - stopping_since > grace:
                return Outcome(State.LOST, None, f"{self._stop[1]}; {self._silence()}")
        return self._judge()

    def _judge(self) -> Outcome:
        assert self._result is not None
        try:
            result = self._result.result()
        except Exception as error:  # the Dask task itself failed (its worker died...)
            where = self._where()
            return Outcome(
                State.LOST, None, f"the Dask task of the run failed on {where}: {error!r}"
            )
        if result.get("refused"):
            return Outcome(State.LOST, None, result["refused"])
        if self._claim is not None and result["worker"] != self._claim.worker:
            # The worker that started it died; Dask's next try ended without running it.
            elsewhere = f"Dask worker {result['worker']} (host {result['host']})"
            why = f": {result['reason']}" if result.get("reason") else ""
            return Outcome(
                State.LOST,
                None,
                f"{self._where()} stopped running it; Dask tried it again on {elsewhere}, "
                f"which did not run it{why}",
            )
        if result.get("reason"):
            return Outcome(State.FAILED, None, result["reason"])
        if result.get("lost_link"):
            return Outcome(State.LOST, result.get("exit_code"), result["lost_link"])
        return judge(self._run.link, result["exit_code"], self._stop, result.get("stopped_by"))

    def _where(self) -> str:
        claim = self._claim
        return f"Dask worker {claim.worker} (host {claim.host})" if claim else "a Dask worker"

    def _silence(self) -> str:
        return (
            f"no word from the run on {self._where()} for {SILENCE_LOST_S:g} s: the worker or "
            "its machine died, or the network to it failed"
        )

    def _release(self) -> None:
        if self._public is not None:
            self._launcher.keys.revoke(self._public)
            self._public = None
        if self._result is not None and not self._result.done():
            self._result.cancel()

    async def _release_async(self) -> None:
        self._release()
        if self._future is not None and not self._future.done():
            with contextlib.suppress(Exception):
                await self._future.cancel()

    # -- the relay's side (control operations signed with the run's token) --------

    def claim(self, args: ClaimArgs) -> dict[str, Any]:
        """The first claim starts the run; a second means Dask started it again after the
        worker running it was lost: refused, and the run is lost."""
        if self._claim is not None or self._lost is not None:
            first = self._where()
            self._lose(
                f"{first} stopped running it, and Dask started the run again on Dask worker "
                f"{args.worker} (host {args.host}); that second start was refused (a run never "
                "starts twice)"
            )
            raise UnauthorizedError(f"run {self._run.id} was already started on {first}")
        self._claim = args
        self._run.data_dir = Path(args.data_dir)
        self._heard = time.monotonic()
        self._claimed.set()
        return {}

    async def receive(self, args: RemoteEventsArgs) -> dict[str, Any]:
        """Store a batch of the run's events (once per number); answer when stored."""
        self._heard = time.monotonic()
        if self._claim is None:
            raise BadRequestError("events before the run was claimed")
        if args.batch > self._batches + 1:
            raise BadRequestError(f"batch {args.batch} after {self._batches}: one is missing")
        if args.batch == self._batches + 1:
            pipeline = self._launcher.pipeline
            link = self._run.link
            for item in args.events:
                if not accept(pipeline, link, item):
                    link.channel.lost["bad_event"] += 1
            self._remote_lost = Counter(args.lost)
            self._batches = args.batch
            await pipeline.write(_stored)
        return {"stop": self._stop_requested.is_set()}

    def _lose(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
        self._lost_event.set()


async def _stored() -> None:
    """A write that writes nothing: awaited, it says every earlier event is stored."""
