"""The ``ingest`` PULL socket: workers' event batches in, checked, into the pipeline.

Bad messages are dropped and counted by reason; nothing a worker sends can stop the
loop. The socket is drained in bursts through a synchronous shadow and the loop yields
between bursts (an awaited asyncio ``recv`` never yields while messages wait).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio

from dte_tools.wire import MAX_MESSAGE_BYTES, PROTOCOL, RUN_SIGNER_PREFIX, Kind, verify
from duftd.pipeline import EventPipeline, RunChannel

# Events handled between yields to the loop: bounds how long ingest holds it.
EVENT_BURST = 500
SETTLE_DRAIN_LIMIT = 4 * EVENT_BURST
LOG_LEVELS = frozenset({"info", "warning", "error"})
# What a worker may say about itself; run states belong to the daemon.
WORKER_KINDS = frozenset(
    {Kind.LOG, Kind.PROGRESS, Kind.STDOUT, Kind.STDERR, Kind.CELL, Kind.NOTICE, Kind.FAILURE}
)


@dataclass(eq=False)
class WorkerLink:
    """A live run as ingest sees it: its token, its channel, and its open senders."""

    token: bytes = field(repr=False)
    channel: RunChannel
    open_senders: int = 0
    all_closed: asyncio.Event = field(default_factory=asyncio.Event)
    failure: dict[str, Any] | None = None  # a notebook runner's report of its failing cell


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _valid_event(item: Any) -> bool:
    if not (isinstance(item, list) and len(item) == 3):
        return False
    kind, ts, data = item
    # A NaN or infinite time cannot be stored (SQLite keeps NaN as NULL) and would fail the
    # whole batch it is written in, other runs' events included.
    if not isinstance(data, dict) or not _finite(ts):
        return False
    if kind == Kind.LOG:
        return data.get("level") in LOG_LEVELS and isinstance(data.get("message"), str)
    if kind == Kind.PROGRESS:
        return _finite(data.get("done")) and _finite(data.get("total"))
    if kind == Kind.FAILURE:  # becomes the run's reason: only the shape the runner sends
        traceback = data.get("traceback")
        return (
            isinstance(data.get("cell_index"), int)
            and isinstance(data.get("ename"), str)
            and isinstance(data.get("evalue"), str)
            and isinstance(traceback, list)
            and all(isinstance(line, str) for line in traceback)
        )
    return kind in WORKER_KINDS or kind in (Kind.SENDER_OPEN, Kind.SENDER_CLOSED)


class Ingest:
    def __init__(
        self,
        socket: zmq.asyncio.Socket,
        pipeline: EventPipeline,
        lookup: Callable[[int], WorkerLink | None],
    ) -> None:
        self._socket = socket
        self._sync = zmq.Socket.shadow(socket.underlying)
        self._pipeline = pipeline
        self._lookup = lookup
        self.dropped: Counter[str] = Counter()

    async def run(self) -> None:
        while True:
            await self._pipeline.room()
            if self.drain_now(EVENT_BURST):
                await self._socket.poll(flags=zmq.POLLIN)
            else:
                await asyncio.sleep(0)

    def drain_now(self, event_limit: int) -> bool:
        """Handle waiting messages until about ``event_limit`` events; True if none are left."""
        events = 0
        while events < event_limit:
            try:
                frames = self._sync.recv_multipart(flags=zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return True
            events += self._handle(frames) or 1
        return False

    def _handle(self, frames: list[bytes]) -> int | None:
        """Check one message and pass its events on; returns how many it held."""
        if len(frames) != 4 or frames[0] != PROTOCOL:
            self.dropped["malformed"] += 1
            return
        _, signer, signature, body = frames
        if len(body) > MAX_MESSAGE_BYTES:
            self.dropped["oversized"] += 1
            return
        link = self._link(signer)
        if link is None:
            self.dropped["unknown_run"] += 1
            return
        if not verify(link.token, body, signature):
            self.dropped["bad_signature"] += 1
            return
        try:
            events = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            self.dropped["bad_json"] += 1
            return
        if not isinstance(events, list):
            self.dropped["bad_json"] += 1
            return
        for item in events:
            if not _valid_event(item):
                self.dropped["bad_event"] += 1
                continue
            kind, ts, data = item
            if kind == Kind.SENDER_OPEN:
                link.open_senders += 1
                link.all_closed.clear()
            elif kind == Kind.SENDER_CLOSED:
                link.open_senders = max(0, link.open_senders - 1)
                if link.open_senders == 0:
                    link.all_closed.set()
            else:
                if kind == Kind.FAILURE:
                    link.failure = data
                self._pipeline.emit(link.channel, kind, data, float(ts))
        return len(events)

    def _link(self, signer: bytes) -> WorkerLink | None:
        if not signer.startswith(RUN_SIGNER_PREFIX):
            return None
        try:
            run_id = int(signer[len(RUN_SIGNER_PREFIX) :])
        except ValueError:
            return None
        return self._lookup(run_id)

    async def settle(self, link: WorkerLink, wait_s: float | None) -> None:
        """After a worker exits: take in what it already sent; with a ``wait_s``, also wait
        (bounded) for each of its senders' closing marker, which follows its last batch.

        Draining is bounded too: other runs may be streaming without pause.
        """
        self.drain_now(SETTLE_DRAIN_LIMIT)
        if wait_s is not None and link.open_senders:
            try:
                await asyncio.wait_for(link.all_closed.wait(), wait_s)
            except TimeoutError:
                self.dropped["sender_not_closed"] += 1
