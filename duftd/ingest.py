"""Events in: a run's pipes (its durable channels and its stdout/stderr), and the signed
``ingest`` socket.

A worker's events arrive on the channel pipes duftd created for it (see
:mod:`dte_tools.channel`): one JSON record a line. Reading stops while the pipeline's
backlog is over its limit, so a full pipe blocks the task (back-pressure) and memory stays
bounded. A run is settled when every one of its pipes reaches its end, which happens once
every process holding them is gone; a record that cannot be used is counted as lost on
the run, never dropped in silence.

The ZeroMQ ``ingest`` PULL socket takes signed batches from a process of a live run that
has no channel (a program the task started) and is the seam for workers on other
machines. Bad messages are dropped and counted by reason; nothing a worker sends can stop
the loop. The socket is drained in bursts through a synchronous shadow and the loop
yields between bursts (an awaited asyncio ``recv`` never yields while messages wait).

Its size is the two ways in (a run's pipes and the signed socket), which share the
numbering, the loss accounting and the bounds, so they are read side by side.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import zmq
import zmq.asyncio

from dte_tools.channel import LAST_PIECE, MAX_RECORD_BYTES, PIECE
from dte_tools.wire import MAX_MESSAGE_BYTES, PROTOCOL, RUN_SIGNER_PREFIX, Kind, verify
from duftd.fd_wait import readable
from duftd.pipeline import EventPipeline, RunChannel

log = structlog.get_logger("duftd.ingest")

# Events handled between yields to the loop: bounds how long ingest holds it.
EVENT_BURST = 500
LOG_LEVELS = frozenset({"info", "warning", "error"})
# What a worker may say about itself; run states belong to the daemon.
WORKER_KINDS = frozenset(
    {Kind.LOG, Kind.PROGRESS, Kind.STDOUT, Kind.STDERR, Kind.CELL, Kind.NOTICE, Kind.FAILURE}
)
# Bytes taken from a pipe at a time; also what its reader buffers before the pipe is paused.
READ_CHUNK = 16 * 1024
# Longest stdout/stderr line kept whole; a longer one arrives in pieces.
LINE_LIMIT = 64 * 1024
# How long a reader waits after a short read, so records arrive in batches.
COALESCE_S = 0.001
# Once every process of a run is gone, a pipe still open and silent this long is held by a
# process that escaped every kill: reading stops, and the run records it.
ABANDON_IDLE_S = 5.0
STDERR_TAIL_LINES = 40
PIECE_TAGS = (PIECE, LAST_PIECE)
# Processes of one run writing long records at the same moment; past this, memory is
# bounded by refusing (and counting) the record.
MAX_PIECE_WRITERS = 16
# The record a task's log call or plain output line writes (dte_tools.channel.encode_record),
# recognised without decoding it: a finite time and text of printable ASCII without
# escapes, so the data is already strict JSON and is stored as the task encoded it.
# Anything else (escapes, other kinds, odd spacing) is decoded and checked in full.
_PLAIN_RECORD = re.compile(
    rb'\["(log|stdout|stderr)",(\d{1,12}\.\d{1,9}),'
    rb'(\{(?:"level":"(info|warning|error)","message"|"text"):"([^"\\\x00-\x1f\x7f-\xff]*)"\})\]'
)


@dataclass(eq=False)
class RunLink:
    """A live run as events in see it: its token, its channel, what judging it needs."""

    token: bytes = field(repr=False)
    channel: RunChannel
    failure: dict[str, Any] | None = None  # a notebook runner's report of its failing cell
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES))


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
    if kind in (Kind.STDOUT, Kind.STDERR):
        return isinstance(data.get("text"), str)
    if kind == Kind.FAILURE:  # becomes the run's reason: only the shape the runner sends
        traceback = data.get("traceback")
        return (
            isinstance(data.get("cell_index"), int)
            and isinstance(data.get("ename"), str)
            and isinstance(data.get("evalue"), str)
            and isinstance(traceback, list)
            and all(isinstance(line, str) for line in traceback)
        )
    return kind in WORKER_KINDS


def accept(pipeline: EventPipeline, link: RunLink, item: Any) -> bool:
    """Pass one event a worker sent on to the pipeline; False if it is not a valid one."""
    if not _valid_event(item):
        return False
    kind, ts, data = item
    if kind == Kind.FAILURE:
        link.failure = data
    elif kind == Kind.STDERR:
        link.stderr_tail.append(data["text"])
    pipeline.emit(link.channel, kind, data, float(ts))
    return True


class Ingest:
    """The signed ZeroMQ ingest socket (see the module's docstring)."""

    def __init__(
        self,
        socket: zmq.asyncio.Socket,
        pipeline: EventPipeline,
        lookup: Callable[[int], RunLink | None],
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
            if not accept(self._pipeline, link, item):
                self.dropped["bad_event"] += 1
        return len(events)

    def _link(self, signer: bytes) -> RunLink | None:
        if not signer.startswith(RUN_SIGNER_PREFIX):
            return None
        try:
            run_id = int(signer[len(RUN_SIGNER_PREFIX) :])
        except ValueError:
            return None
        return self._lookup(run_id)


class RunInput:
    """A run's pipes from its worker, read into the pipeline until each reaches its end."""

    def __init__(self, pipeline: EventPipeline, link: RunLink) -> None:
        self._pipeline = pipeline
        self._link = link
        self._readers: list[asyncio.Task[None]] = []
        self._progress = 0  # reads so far: tells a silent pipe from a busy one
        # Pieces of long records (see dte_tools.channel), by writer, until its last piece.
        self._pieces: dict[bytes, bytearray] = {}
        self._refusing: set[bytes] = set()  # writers whose record grew too long to keep

    def start(self, stdout: int, stderr: int, channels: list[int]) -> None:
        """Read the given pipes (their reading ends; each is closed at its end)."""
        pipes = [(stdout, self._text(Kind.STDOUT)), (stderr, self._text(Kind.STDERR))]
        pipes += [(fd, self._records) for fd in channels]
        for fd, handle in pipes:
            os.set_blocking(fd, False)
            limit = MAX_RECORD_BYTES if handle == self._records else LINE_LIMIT
            self._readers.append(asyncio.create_task(self._pump(fd, handle, limit)))

    async def settled(self) -> int:
        """Wait until every pipe has reached its end; returns how many were given up on
        (held open, silent, by a process that escaped every kill)."""
        pending = {reader for reader in self._readers if not reader.done()}
        while pending:
            seen = self._progress
            _, pending = await asyncio.wait(pending, timeout=ABANDON_IDLE_S)
            if pending and seen == self._progress and not self._pipeline.backlogged:
                self.close()
                await asyncio.wait(pending)
                self._unfinished_pieces()
                return len(pending)
        self._unfinished_pieces()
        return 0

    def _unfinished_pieces(self) -> None:
        """A writer that died between the pieces of a record: that record is lost."""
        for _ in self._pieces:
            self._lost("incomplete")
        self._pieces.clear()

    def close(self) -> None:
        """Stop reading now (a pipe not at its end yet is closed)."""
        for reader in self._readers:
            reader.cancel()

    async def _pump(self, fd: int, handle: Callable[[bytes], None], limit: int) -> None:
        pending = bytearray()
        records = handle == self._records
        skipping = False  # inside a record too long to keep, up to its end of line
        try:
            while True:
                await self._pipeline.room()
                await readable(fd)
                chunk = _read(fd)
                if chunk is None:
                    continue
                if not chunk:
                    break
                self._progress += 1
                if skipping:
                    cut = chunk.find(b"\n")
                    if cut < 0:
                        continue
                    skipping, chunk = False, chunk[cut + 1 :]
                pending += chunk
                end = pending.rfind(b"\n")
                if end >= 0:
                    handle(bytes(pending[:end]))
                    del pending[: end + 1]
                while len(pending) > limit:
                    if records:  # longer than any worker sends: refused, not kept growing
                        self._lost("oversized")
                        skipping = True
                        pending.clear()
                    else:  # a long output line arrives in pieces
                        handle(bytes(pending[:limit]))
                        del pending[:limit]
                if len(chunk) < READ_CHUNK:
                    # Let a fast writer fill the pipe a little: one read and one stored
                    # batch per millisecond instead of one per record.
                    await asyncio.sleep(COALESCE_S)
            if pending:
                handle(bytes(pending))
        finally:
            os.close(fd)

    def _records(self, block: bytes) -> None:
        """Records, one a line; plain log and output lines (the flood case) are taken as
        they are, the rest decoded one by one."""
        plain = _PLAIN_RECORD.fullmatch
        emit = self._pipeline.emit_encoded
        link = self._link
        for line in block.split(b"\n"):
            if line[:1] in PIECE_TAGS:
                line = self._piece(line)
                if line is None:
                    continue
            match = plain(line)
            if match is not None:
                kind, ts, data, level, text = match.groups()
                if (level is None) == (kind == b"log"):  # a log's data is level and message
                    match = None
            if match is None:
                item = self._record(line)
                if item is not None and not accept(self._pipeline, link, item):
                    self._lost("bad_event")
                continue
            if kind == b"stderr":
                link.stderr_tail.append(text.decode())
            emit(link.channel, kind.decode(), data.decode(), float(ts), level and level.decode())

    def _piece(self, line: bytes) -> bytes | None:
        """Hold a piece of a long record; its writer's last piece gives the whole record."""
        writer, _, chunk = line[1:].partition(b":")
        last = line[:1] == LAST_PIECE
        if writer in self._refusing:
            if last:
                self._refusing.discard(writer)
            return None
        held = self._pieces.setdefault(writer, bytearray())
        held += chunk
        if last:
            del self._pieces[writer]
            return bytes(held)
        if len(held) > MAX_RECORD_BYTES or len(self._pieces) > MAX_PIECE_WRITERS:
            del self._pieces[writer]
            self._refusing.add(writer)
            self._lost("oversized")
        return None

    def _record(self, line: bytes) -> Any:
        try:
            return json.loads(line)
        except (ValueError, RecursionError):
            self._lost("corrupt")
            return None

    def _text(self, kind: str) -> Callable[[bytes], None]:
        def handle(block: bytes) -> None:
            for line in block.decode("utf-8", errors="replace").split("\n"):
                accept(self._pipeline, self._link, [kind, time.time(), {"text": line.rstrip("\r")}])

        return handle

    def _lost(self, reason: str) -> None:
        self._link.channel.lost[reason] += 1
        log.warning("event lost", run_id=self._link.channel.run_id, reason=reason)


def _read(fd: int) -> bytes | None:
    """What ``fd`` holds (b"" at its end); None when a wake-up found nothing after all."""
    try:
        return os.read(fd, READ_CHUNK)
    except BlockingIOError:
        return None
