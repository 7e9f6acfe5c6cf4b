"""The event pipeline: sequence, redact, store in batches, then publish; and the one writer
of the store.

Every event of every run (worker logs, captured output, state changes) passes through
here in order. Numbers are assigned at storage; a batch is committed before any of
it is published, so the store is always at least as complete as the live stream.

Every other write to the store (a new run, a run's state) is queued here too and done by
the same writer task, in order with the events: a run's final state event is committed
before its row says it is final, so no reader sees ``final`` without that event. When the
disk is full the writer keeps what it holds and retries until space returns; meanwhile
the backlog fills, reading from workers stops (so they wait), and ``storage_full`` is set.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from dte_tools.redact import Redactor
from dte_tools.wire import Kind, encode_event, topic
from duftd.publisher import Publisher
from duftd.store import EventRow, Store

log = structlog.get_logger("duftd.pipeline")

# Above this many waiting events, nothing more is read from workers: they wait.
BACKLOG_LIMIT = 50_000
# How often a write that failed for lack of space is tried again.
STORAGE_RETRY_S = 1.0
# Small batches bound how long one write holds the event loop (control latency).
BATCH_LIMIT = 500
# Event data nested deeper than this is replaced: Python's json cannot decode it near its
# recursion limit, so a client would fail on the run's history.
MAX_DEPTH = 64
UNENCODABLE = '{"unencodable":"event data was not strict JSON or nested too deeply"}'


@dataclass(eq=False)
class RunChannel:
    """What the pipeline needs to know about one run: ids, secrets, counters."""

    run_id: int
    task_id: str
    secrets: tuple[str, ...] = field(default=(), repr=False)
    last_seq: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)  # events that could not be stored, by why
    topic: bytes = b""
    task_json: str = ""
    redactor: Redactor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.topic = topic(self.task_id, self.run_id)
        self.task_json = json.dumps(self.task_id)
        self.redactor = Redactor(self.secrets)

    def redact(self, text: str) -> str:
        return self.redactor.mask(text)


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (without recursing)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


# One encoder for every event: json.dumps with options builds a new encoder per call,
# which was the largest single cost of an event in the daemon.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str, allow_nan=False)


def _encode(data: dict[str, Any]) -> str:
    """An event's data as strict JSON (what browsers parse) that any client can decode back,
    whatever a worker sent."""
    try:
        text = _ENCODER.encode(data)
        # Counting brackets is cheap; only text with many of them is measured properly.
        if text.count("[") + text.count("{") <= MAX_DEPTH or _depth(data) <= MAX_DEPTH:
            return text
    except (ValueError, RecursionError):  # NaN or infinity, or nesting too deep to encode
        pass
    log.warning("event data replaced: not strict JSON, or nested too deeply")
    return UNENCODABLE


T = TypeVar("T")


def is_storage_full(error: BaseException) -> bool:
    """SQLite could not write for lack of space (SQLITE_FULL, or an I/O error writing)."""
    code = getattr(error, "sqlite_errorcode", None)
    return (
        isinstance(error, sqlite3.OperationalError)
        and code is not None
        and (code & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR))
    )


@dataclass(eq=False)
class _Write:
    """A store write other than events, done in order with them."""

    do: Callable[[], Awaitable[Any]]
    done: asyncio.Future[Any]
    retry: bool  # on a full disk: retry until space returns (else fail at once)


class EventPipeline:
    """Accepts events without awaiting; one writer task stores and publishes them, and does
    every other write of the store in order with them."""

    def __init__(self, store: Store, publisher: Publisher) -> None:
        self._store = store
        self._publisher = publisher
        # (channel, ts, kind, data): data is a dict, or its JSON when a worker sent it ready.
        self._pending: list[tuple[RunChannel, float, str, Any] | _Write] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._below_limit = asyncio.Event()
        self._below_limit.set()
        self.storage_full = False

    def emit(self, channel: RunChannel, kind: str, data: dict[str, Any], ts: float) -> None:
        """Queue one event; the writer stores and publishes it shortly."""
        self.emit_encoded(
            channel, kind, data, ts, data.get("level", "info") if kind == Kind.LOG else None
        )

    def emit_encoded(
        self,
        channel: RunChannel,
        kind: str,
        data: dict[str, Any] | str,
        ts: float,
        level: str | None,
    ) -> None:
        """Queue one event whose data may already be strict JSON text (``level`` for a log
        line, which the run counts)."""
        self._pending.append((channel, ts, kind, data))
        if level is not None:
            channel.counts[level] += 1
        self._idle.clear()
        self._wake.set()
        if len(self._pending) >= BACKLOG_LIMIT:
            self._below_limit.clear()

    async def write(self, do: Callable[[], Awaitable[T]], retry: bool = True) -> T:
        """Run ``do`` (a store write) after every event queued before it is stored."""
        item = _Write(do, asyncio.get_running_loop().create_future(), retry)
        self._pending.append(item)
        self._idle.clear()
        self._wake.set()
        return await item.done

    @property
    def backlogged(self) -> bool:
        """Whether readers are held back (the backlog is over its limit)."""
        return not self._below_limit.is_set()

    async def room(self) -> None:
        """Wait until the backlog is small enough to accept more from workers."""
        await self._below_limit.wait()

    async def drained(self) -> None:
        """Wait until everything emitted so far is stored and published."""
        await self._idle.wait()

    async def run(self) -> None:
        """The writer loop; runs until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                head = self._pending[0]
                if isinstance(head, _Write):
                    del self._pending[0]
                    await self._call(head)
                    continue
                end = 1
                limit = min(len(self._pending), BATCH_LIMIT)
                while end < limit and not isinstance(self._pending[end], _Write):
                    end += 1
                batch = self._pending[:end]
                await self._write(batch)  # type: ignore[arg-type]
                del self._pending[:end]
                if len(self._pending) < BACKLOG_LIMIT:
                    self._below_limit.set()
            self._idle.set()

    async def _call(self, item: _Write) -> None:
        while True:
            try:
                result = await asyncio.shield(item.do())
            except Exception as error:
                if item.retry and is_storage_full(error):
                    await self._storage_full(error)
                    continue
                if not item.done.done():
                    item.done.set_exception(error)
                return
            self._storage_ok()
            if not item.done.done():
                item.done.set_result(result)
            return

    async def _storage_full(self, error: BaseException) -> None:
        if not self.storage_full:
            log.error(
                "the state folder is full; holding events until space returns", error=str(error)
            )
        self.storage_full = True
        await asyncio.sleep(STORAGE_RETRY_S)

    def _storage_ok(self) -> None:
        if self.storage_full:
            log.info("the state folder has space again")
        self.storage_full = False

    async def _write(self, batch: list[tuple[RunChannel, float, str, Any]]) -> None:
        rows: list[EventRow] = []
        by_run: dict[RunChannel, list[str]] = {}
        for channel, ts, kind, data in batch:
            channel.last_seq += 1
            seq = channel.last_seq
            text = data if type(data) is str else _encode(data)
            if channel.redactor:
                text = channel.redact(text)
            rows.append((channel.run_id, seq, ts, kind, text))
            by_run.setdefault(channel, []).append(
                encode_event(channel.run_id, channel.task_json, seq, ts, kind, text)
            )
        while True:
            try:
                await asyncio.shield(self._store.insert_events(rows))
                break
            except Exception as error:
                if is_storage_full(error):
                    await self._storage_full(error)
                    continue
                # Never publish what is not stored; the run records what it lost.
                log.exception("storing events failed", events=len(rows))
                for channel, _, _, _ in batch:
                    channel.lost["storage_error"] += 1
                return
        self._storage_ok()
        for channel, events in by_run.items():
            self._publisher.publish(channel.topic, "[" + ",".join(events) + "]")
