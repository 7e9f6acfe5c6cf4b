"""The Dask side of a run: its worker started as at home, its events carried to duftd.

On the Dask worker the relay does what duftd does for a local run: it starts the worker
with its pipes and supervises it with duftd's own :class:`RunSupervisor` (the same pipe
reader, stop and containment), then forwards what the pipes held to duftd over the
daemon's tcp control socket (CURVE), in numbered batches. A batch is kept until duftd
answers that it has stored it, and sent again (under the same number, which duftd takes
once) when no answer comes; while batches wait, the reader stops, so a task that logs
faster than the link carries is slowed down, as at home. Empty batches go every
:data:`BEAT_S` as a heartbeat; each answer says whether duftd wants the run stopped
(cancel, timeout).

The task's own requests (parameters, connections) and events from programs it started go
to two ipc sockets of the relay, in a folder only this user can enter, and on to duftd:
the CURVE keys never reach the task's processes.

Its size is the batching, retrying and acknowledging of events on the far side, the
mirror of what duftd does locally, kept in one module that travels to the Dask worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from dte_tools import wire
from dte_tools.daemon_link import ControlClient, DaemonError
from dte_tools.job import Job
from dte_tools.wire import MAX_MESSAGE_BYTES, PROTOCOL, Op, State, run_signer, verify
from duftd import spawn
from duftd.cluster import bundle
from duftd.ingest import RunLink, accept
from duftd.pipeline import RunChannel
from duftd.runs.root_layout import prepare_root_copy
from duftd.runs.supervisor import Limits, RunSupervisor
from duftd.runs.workers import start_worker

# A heartbeat at least this often; duftd marks a run lost after some beats are missed.
BEAT_S = 0.5
# Events per batch, and how many may wait to be sent before the pipes are left unread.
BATCH_EVENTS = 500
WAITING_EVENTS = 20_000
# After this long without any answer, duftd is taken to be gone: the run is stopped.
GIVE_UP_S = 60.0


@dataclass(frozen=True)
class DaemonAddress:
    """Where and how the relay reaches duftd: its control endpoint and CURVE keys (z85)."""

    control: str
    server_key: str
    public: str
    secret: str

    def setup(self, socket: zmq.Socket) -> None:
        socket.curve_serverkey = self.server_key.encode()
        socket.curve_publickey = self.public.encode()
        socket.curve_secretkey = self.secret.encode()


class ForwardQueue:
    """Stands where duftd's event pipeline stands for a local run: the reader emits into
    it, and waits (``room``) while too much is waiting to be sent."""

    def __init__(self) -> None:
        self.events: deque[list[Any]] = deque()
        self._below_limit = asyncio.Event()
        self._below_limit.set()
        self.ready = asyncio.Event()

    def emit(self, channel: RunChannel, kind: str, data: dict[str, Any], ts: float) -> None:
        self.events.append([kind, ts, data])
        self.ready.set()
        if len(self.events) >= WAITING_EVENTS:
            self._below_limit.clear()

    def emit_encoded(
        self,
        channel: RunChannel,
        kind: str,
        data: dict[str, Any] | str,
        ts: float,
        level: str | None,
    ) -> None:
        """A plain record (its data still JSON text, see ``RunInput``) travels decoded."""
        self.emit(channel, kind, json.loads(data) if isinstance(data, str) else data, ts)

    @property
    def backlogged(self) -> bool:
        return not self._below_limit.is_set()

    async def room(self) -> None:
        await self._below_limit.wait()

    def take(self) -> list[list[Any]]:
        count = min(len(self.events), BATCH_EVENTS)
        batch = [self.events.popleft() for _ in range(count)]
        if len(self.events) < WAITING_EVENTS:
            self._below_limit.set()
        if not self.events:
            self.ready.clear()
        return batch


class Relay:
    """One run on this Dask worker, from its claim to its last acknowledged batch."""

    def __init__(self, run_id: int, token: bytes, daemon: DaemonAddress) -> None:
        self.run_id = run_id
        self._token = token
        self._daemon = daemon
        self._context = zmq.asyncio.Context()
        self._sync = zmq.Context.shadow(self._context.underlying)
        self._control = ControlClient(
            self._sync, daemon.control, token, run_signer(run_id), daemon.setup
        )
        self._queue = ForwardQueue()
        self._link = RunLink(token, RunChannel(run_id, ""))
        self._batch = 0
        self._stop: Callable[[str, str], None] = lambda state, reason: None
        self.lost_link: str | None = None  # why duftd could not be reached, if it could not
        self._finishing = False  # the worker has ended: the sender stops, _finish takes over

    async def request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self._control.request, op, args)

    async def run(self, kind: str, job: Job, grace_s: float) -> dict[str, Any]:
        """Start the worker with ``job`` and supervise it as duftd does at home, relaying
        until its pipes end; its exit code and how it was stopped."""
        folder = Path(tempfile.mkdtemp(prefix="duftd-relay-"))  # 0700: ipc paths stay short
        proxy = asyncio.create_task(self._proxy(folder))
        try:
            env = spawn.worker_environment(
                {wire.ENV_CONTROL: f"ipc://{folder}/c", wire.ENV_INGEST: f"ipc://{folder}/i"}
            )
            job = job._replace(env={**job.env, **_endpoints(env)})
            worker = await start_worker(kind, env, Path(job.cwd))
            queue = self._queue
            supervisor = RunSupervisor(worker, Limits(None, grace_s), queue, self._link)  # type: ignore[arg-type]
            self._stop = supervisor.stop
            sender = asyncio.create_task(self._send())
            await supervisor.start(job)
            outcome = await supervisor.wait()
            await self._finish(sender)
            return {
                "exit_code": outcome.exit_code,
                "stopped_by": supervisor.stopped_by,
                "lost_link": self.lost_link,
            }
        finally:
            proxy.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await proxy
            self._control.close()
            self._context.destroy(linger=0)
            shutil.rmtree(folder, ignore_errors=True)

    async def _send(self) -> None:
        """Send batches (or a heartbeat) until the run is finishing; each kept until
        acknowledged."""
        while not self._finishing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BEAT_S):
                    await self._queue.ready.wait()
            if self._finishing or not await self._deliver(self._queue.take(), last=False):
                return

    async def _finish(self, sender: asyncio.Task[None]) -> None:
        """Let the sender finish the batch it holds and stop, then deliver what is left and
        the last (empty) batch.

        The sender is told, not cancelled: under Python 3.11, ``wait_for`` swallowed a
        cancel that came as the queue's event fired (the last lines arriving as the worker
        ended), and the sender went on sending heartbeats while this waited for it: the run
        never finished (about one cluster run in a hundred)."""
        self._finishing = True
        self._queue.ready.set()  # wakes the sender if it waits
        await sender
        while self._queue.events and self.lost_link is None:
            await self._deliver(self._queue.take(), last=False)
        if self.lost_link is None:
            await self._deliver([], last=True)

    async def _deliver(self, events: list[list[Any]], last: bool) -> bool:
        """One batch to duftd, sent again until it is stored; False if duftd is gone."""
        self._batch += 1
        args = {
            "batch": self._batch,
            "events": events,
            "lost": dict(self._link.channel.lost),
            "last": last,
        }
        since = time.monotonic()
        while True:
            try:
                reply = await asyncio.shield(self.request(Op.WORKER_EVENTS, args))
            except DaemonError as error:
                if error.code == wire.ErrorCode.TIMEOUT and time.monotonic() - since < GIVE_UP_S:
                    continue  # the same batch again: duftd takes each number once
                self.lost_link = f"duftd could not be reached: {error}"
                self._stop(State.FAILED, self.lost_link)
                return False
            if reply.get("stop"):
                self._stop(State.CANCELLED, "duftd stopped the run")
            return True

    async def _proxy(self, folder: Path) -> None:
        """The task's ipc endpoints: control requests passed on to duftd and their answers
        back; events from programs without a channel checked and forwarded."""
        router = self._context.socket(zmq.ROUTER)
        router.bind(f"ipc://{folder}/c")
        pull = self._context.socket(zmq.PULL)
        pull.bind(f"ipc://{folder}/i")
        dealer = self._context.socket(zmq.DEALER)
        self._daemon.setup(dealer)
        dealer.connect(self._daemon.control)
        for socket in (router, pull, dealer):
            socket.linger = 0
            socket.setsockopt(zmq.MAXMSGSIZE, 2 * MAX_MESSAGE_BYTES)
        asking: dict[str, bytes] = {}  # request id -> the task's socket that asked
        poller = zmq.asyncio.Poller()
        for socket in (router, pull, dealer):
            poller.register(socket, zmq.POLLIN)
        while True:
            for socket, _ in await poller.poll():
                frames = await socket.recv_multipart()
                if socket is router and len(frames) == 5:
                    asking[_request_id(frames[4])] = frames[0]
                    await dealer.send_multipart(frames[1:])
                elif socket is dealer and len(frames) == 3:
                    who = asking.pop(_request_id(frames[2]), None)
                    if who is not None:
                        await router.send_multipart([who, *frames])
                elif socket is pull:
                    self._take_pushed(frames)

    def _take_pushed(self, frames: list[bytes]) -> None:
        if (
            len(frames) != 4
            or frames[0] != PROTOCOL
            or not verify(self._token, frames[3], frames[2])
        ):
            self._link.channel.lost["bad_signature"] += 1
            return
        try:
            events = json.loads(frames[3])
        except ValueError:
            events = None
        for item in events if isinstance(events, list) else [None]:
            if not accept(self._queue, self._link, item):  # type: ignore[arg-type]
                self._link.channel.lost["bad_event"] += 1


def _endpoints(env: dict[str, str]) -> dict[str, str]:
    return {name: env[name] for name in (wire.ENV_CONTROL, wire.ENV_INGEST)}


def _request_id(body: bytes) -> str:
    try:
        found = json.loads(body).get("id")
    except (ValueError, AttributeError):
        return ""
    return found if isinstance(found, str) else ""


_containment_chosen = threading.Lock()
_containment: str | None = None


def _contain_workers() -> None:
    """Choose, once per Dask worker process, how run workers are contained (as duftd does
    at its start: a cgroup each where the machine allows, else a subreaper launcher)."""
    global _containment
    with _containment_chosen:
        if _containment is None:
            _containment = spawn.contain_workers()


def run_here(spec: dict[str, Any], where: dict[str, str], local: Path) -> dict[str, Any]:
    """One run on this Dask worker: claim it (a second start of the same run is refused),
    unpack its task folder, run its worker through a :class:`Relay`."""
    _contain_workers()
    job = Job(**spec["job"])
    relay = Relay(
        int(spec["run_id"]), job.env[wire.ENV_RUN_TOKEN].encode(), DaemonAddress(**spec["daemon"])
    )
    return asyncio.run(_run_here(relay, spec, job, where, local))


async def _run_here(
    relay: Relay, spec: dict[str, Any], job: Job, where: dict[str, str], local: Path
) -> dict[str, Any]:
    run_dir = local / "duftd-runs" / f"{relay.run_id}-{secrets.token_hex(4)}"
    data_dir = Path(spec["data_dir"]) if spec.get("data_dir") else run_dir / "data"
    try:
        await relay.request(Op.WORKER_CLAIM, {**where, "data_dir": str(data_dir)})
    except DaemonError as error:
        return {**where, "refused": str(error)}
    try:
        task_dir = bundle.unpack(spec["digest"], spec["bundle"], local / "duftd-tasks")
        data_dir.mkdir(parents=True, exist_ok=True)
        here = _localize(spec, job, task_dir, run_dir, data_dir)
        outcome = await relay.run(spec["kind"], here, float(spec["grace_s"]))
    except (OSError, bundle.BundleError) as error:
        return {**where, "reason": f"the run could not start on {where['host']}: {error}"}
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {**where, **outcome}


def _localize(spec: dict[str, Any], job: Job, task_dir: Path, run_dir: Path, data_dir: Path) -> Job:
    """The daemon's job with this machine's paths: the unpacked task folder, a per-run
    folder (an executeFromRoot copy beside duft-server/, a notebook's executed copy) and
    the data folder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    script, cwd = task_dir / spec["script"], task_dir
    env = {**job.env, wire.ENV_DATA_DIR: str(data_dir), wire.ENV_CONFIG_DIR: str(task_dir)}
    env.pop("PYTHONPATH", None)
    if spec["execute_from_root"]:
        script = prepare_root_copy(script, run_dir / "root-copy")
        cwd = script.parent
        env["PYTHONPATH"] = str(task_dir)
    rest = job.argv[1:]
    if spec["kind"] == "notebook":
        rest = [str(run_dir / script.name)]
    return job._replace(argv=[str(script), *rest], cwd=str(cwd), env=env)
