"""An asyncio client of duftd: signed requests on a DEALER, every published event on one SUB.

The bridge serves many HTTP requests and streams at once, so unlike the synchronous
:class:`clients.bus.BusClient` this client keeps one DEALER with many requests in flight
(replies are matched to requests by their id) and one SUB subscribed to everything,
whose batches it hands to local :class:`Listener` queues. A stream therefore
"subscribes" by registering a listener, which takes effect at once: no per-stream
ZeroMQ slow-joiner window.

The daemon may stop, or restart with new ports and a new key. The connection file is
re-read every ``watch_interval_s`` and whenever a request fails or times out:

- no file, or its daemon is dead: the connection is dropped and requests fail at once
  with :class:`DaemonUnavailable` (the bridge answers 503) instead of waiting for a
  timeout;
- a different daemon: both sockets are rebuilt with the new endpoints and key, and every
  listener gets :data:`RESET`, since live events may have been missed meanwhile and must
  be fetched from the store.

Its size is the reconnection logic, which requests and live listeners share and which
must be read as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from clients.bus import ConnectionInfo, DaemonError, DaemonNotRunning, curve_setup
from dte_tools.wire import (
    CLIENT_SIGNER,
    TOPIC_PREFIX,
    ErrorCode,
    decode_events,
    decode_reply,
    encode_request,
)

log = logging.getLogger("duft.bridge.bus")

REQUEST_TIMEOUT_S = 3.0
WATCH_INTERVAL_S = 0.5
# A listener this far behind is emptied and told to RESET (refetch from the store).
LISTENER_MAX_BATCHES = 10_000


class DaemonUnavailable(RuntimeError):
    """duftd is not running or does not answer; the message says which and where."""


class DaemonRefused(DaemonError):
    """duftd answered with an error reply (never a timeout: that is DaemonUnavailable)."""


class _Reset:
    def __repr__(self) -> str:
        return "RESET"


RESET = _Reset()
"""Put in a listener's queue when live events may have been missed (reconnect, overflow)."""

Batch = list[dict[str, Any]]


class Listener:
    """Live event batches of one run (or of every run when ``run_id`` is None)."""

    def __init__(self, run_id: int | None) -> None:
        self.run_id = run_id
        self._queue: asyncio.Queue[Batch | _Reset] = asyncio.Queue()

    def put(self, item: Batch | _Reset) -> None:
        if self._queue.qsize() >= LISTENER_MAX_BATCHES:
            while not self._queue.empty():
                self._queue.get_nowait()
            item = RESET
        self._queue.put_nowait(item)

    async def get(self, wait_s: float) -> Batch | _Reset | None:
        """The next batch, :data:`RESET`, or None when nothing came within ``wait_s``."""
        try:
            # Not wait_for: under Python 3.11 it can swallow a cancel that comes as an item
            # arrives, and a stream whose client left would go on.
            async with asyncio.timeout(wait_s):
                return await self._queue.get()
        except TimeoutError:
            return None


class _Stale(Exception):
    """A request got no reply on this connection (timed out, or the connection was replaced)."""


@dataclass(eq=False)
class _Connection:
    """The sockets to one daemon, and the requests waiting for its replies."""

    info: ConnectionInfo
    dealer: zmq.asyncio.Socket
    sub: zmq.asyncio.Socket
    pending: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def call(self, op: str, args: dict[str, Any], wait_s: float) -> dict[str, Any]:
        frames = encode_request(op, args, self.info.key, CLIENT_SIGNER)
        request_id = json.loads(frames[3])["id"]
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        try:
            async with asyncio.timeout(wait_s):
                await self.dealer.send_multipart(frames)
                return await future
        except (TimeoutError, zmq.ZMQError):  # no reply, or the socket closed under us
            raise _Stale from None
        finally:
            self.pending.pop(request_id, None)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for future in self.pending.values():
            if not future.done():
                future.set_exception(_Stale())
        self.pending.clear()
        self.dealer.close(linger=0)
        self.sub.close(linger=0)


class AsyncBus:
    """The bridge's one link to duftd; ``await start()`` it, ``await close()`` it."""

    def __init__(
        self,
        state_dir: Path | None = None,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        watch_interval_s: float = WATCH_INTERVAL_S,
    ) -> None:
        self.state_dir = state_dir
        self.request_timeout_s = request_timeout_s
        self.watch_interval_s = watch_interval_s
        self._context: zmq.asyncio.Context | None = None
        self._conn: _Connection | None = None
        self._why = "duftd's connection file has not been read yet"
        self._listeners: set[Listener] = set()
        self._refresh_lock = asyncio.Lock()
        self._watch_task: asyncio.Task[None] | None = None
        self.generation = 0  # bumped on every (re)connection
        self.connected = asyncio.Event()

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._context = zmq.asyncio.Context()
        await self.refresh()
        self._watch_task = asyncio.create_task(self._watch(), name="bus-watch")

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        self._drop("the bridge is stopping")
        if self._context is not None:
            self._context.destroy(linger=0)
            self._context = None

    @property
    def available(self) -> bool:
        return self._conn is not None

    @property
    def unavailable_reason(self) -> str:
        return self._why

    async def wait_connected(self, wait_s: float) -> bool:
        """True once a daemon is connected, False if none came within ``wait_s``."""
        try:
            async with asyncio.timeout(wait_s):
                await self.connected.wait()
        except TimeoutError:
            return False
        return True

    # -- requests --------------------------------------------------------------------

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        """One signed request's ``result``; raises DaemonRefused or DaemonUnavailable.

        A request that gets no answer is retried once, and only on a different daemon
        (one that has replaced the daemon it was sent to): a daemon that is merely slow
        may still act on it, so it is not sent to that one twice.
        """
        for attempt in range(2):
            conn = self._conn
            if conn is None and await self.refresh():
                conn = self._conn
            if conn is None:
                raise DaemonUnavailable(self._why)
            try:
                reply = await conn.call(op, args, self.request_timeout_s)
            except _Stale:
                if attempt == 0 and (self._conn is not conn or await self.refresh()):
                    continue
                raise DaemonUnavailable(
                    f"duftd did not answer {op!r} within {self.request_timeout_s:g} s "
                    f"at {conn.info.control}"
                ) from None
            if reply["ok"]:
                return reply.get("result") or {}
            error = reply.get("error") or {}
            code = str(error.get("code", ErrorCode.ERROR))
            if code == ErrorCode.UNAUTHORIZED and attempt == 0 and await self.refresh():
                continue  # signed with the key of a daemon that has since been replaced
            raise DaemonRefused(code, str(error.get("message", "request refused")))
        raise AssertionError("unreachable")  # pragma: no cover

    # -- live events -----------------------------------------------------------------

    def listen(self, run_id: int | None = None) -> Listener:
        """Start buffering live batches of ``run_id`` (every run when None)."""
        listener = Listener(run_id)
        self._listeners.add(listener)
        return listener

    def unlisten(self, listener: Listener) -> None:
        self._listeners.discard(listener)

    # -- connection management -------------------------------------------------------

    async def refresh(self) -> bool:
        """Re-read the connection file; True if that (re)connected to a different daemon."""
        async with self._refresh_lock:
            try:
                info = ConnectionInfo.load(self.state_dir)
            except DaemonNotRunning as error:
                self._drop(str(error))
                return False
            except (KeyError, TypeError, ValueError) as error:
                self._drop(f"duftd's connection file is not usable: {error!r}")
                return False
            if self._conn is not None and self._conn.info == info:
                return False
            try:
                setup = curve_setup(info)
            except DaemonNotRunning as error:  # CURVE required and no usable client key
                self._drop(str(error))
                return False
            self._connect(info, setup)
            return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watch_interval_s)
            try:
                await self.refresh()
            except Exception:  # the watcher must outlive any surprise
                log.exception("re-reading duftd's connection file failed")

    def _connect(self, info: ConnectionInfo, setup: Callable[[zmq.Socket], None] | None) -> None:
        assert self._context is not None, "start() the bus first"
        self._drop(None)
        dealer = self._context.socket(zmq.DEALER)
        dealer.linger = 0
        sub = self._context.socket(zmq.SUB)
        sub.linger = 0
        if setup is not None:  # the daemon requires CURVE
            setup(dealer)
            setup(sub)
        dealer.connect(info.control)
        sub.connect(info.events)
        sub.subscribe(TOPIC_PREFIX)
        conn = _Connection(info, dealer, sub)
        conn.tasks = [
            asyncio.create_task(self._read_replies(conn), name="bus-replies"),
            asyncio.create_task(self._read_events(conn), name="bus-events"),
        ]
        self._conn = conn
        self.generation += 1
        self.connected.set()
        log.info("connected to duftd (pid %s) at %s", info.pid, info.control)
        for listener in self._listeners:
            listener.put(RESET)

    def _drop(self, why: str | None) -> None:
        if why is not None:
            self._why = why
        if self._conn is None:
            return
        log.info("disconnected from duftd (pid %s): %s", self._conn.info.pid, why or "replaced")
        self._conn.close()
        self._conn = None
        self.connected.clear()

    async def _read_replies(self, conn: _Connection) -> None:
        while True:
            frames = await conn.dealer.recv_multipart()
            try:
                reply = decode_reply(frames, conn.info.key)
            except ValueError as error:
                log.warning("dropped a bad reply from duftd: %s", error)
                continue
            future = conn.pending.get(str(reply.get("id")))
            if future is not None and not future.done():
                future.set_result(reply)

    async def _read_events(self, conn: _Connection) -> None:
        while True:
            frames = await conn.sub.recv_multipart()
            try:
                batch = decode_events(frames[-1])
            except ValueError:
                log.warning("dropped a malformed event message (%d frames)", len(frames))
                continue
            run_id = batch[0]["run_id"]
            for listener in list(self._listeners):
                if listener.run_id is None or listener.run_id == run_id:
                    listener.put(batch)
