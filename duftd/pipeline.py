"""The event pipeline: sequence, redact, store in batches, then publish.

Every event of every run (worker logs, captured output, state changes) passes through
here in order. Numbers are assigned at storage; a batch is committed before any of
it is published, so the store is always at least as complete as the live stream.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import structlog

from dte_tools.redact import Redactor
from dte_tools.wire import Kind
from duftd.publisher import Publisher
from duftd.store import EventRow, Store

log = structlog.get_logger("duftd.pipeline")

# Above this many waiting events, ingest stops reading so libzmq pushes back on workers.
BACKLOG_LIMIT = 50_000
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
    topic: bytes = b""
    task_json: str = ""
    redactor: Redactor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.topic = f"ev/{self.task_id}/{self.run_id}/".encode()
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


class EventPipeline:
    """Accepts events without awaiting; one writer task stores and publishes them."""

    def __init__(self, store: Store, publisher: Publisher) -> None:
        self._store = store
        self._publisher = publisher
        self._pending: list[tuple[RunChannel, float, str, Any]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._below_limit = asyncio.Event()
        self._below_limit.set()
        self.stored = 0

    def emit(self, channel: RunChannel, kind: str, data: dict[str, Any], ts: float) -> None:
        """Queue one event; the writer stores and publishes it shortly."""
        self._pending.append((channel, ts, kind, data))
        if kind == Kind.LOG:
            channel.counts[data.get("level", "info")] += 1
        self._idle.clear()
        self._wake.set()
        if len(self._pending) >= BACKLOG_LIMIT:
            self._below_limit.clear()

    async def room(self) -> None:
        """Wait until the backlog is small enough to accept more from ingest."""
        await self._below_limit.wait()

    async def drained(self) -> None:
        """Wait until everything emitted so far is stored and published."""
        await self._idle.wait()

    async def run(self) -> None:
        """The writer loop; runs until cancelled, after draining what it holds."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch = self._pending[:BATCH_LIMIT]
                del self._pending[:BATCH_LIMIT]
                if len(self._pending) < BACKLOG_LIMIT:
                    self._below_limit.set()
                await asyncio.shield(self._write(batch))
            self._idle.set()

    async def _write(self, batch: list[tuple[RunChannel, float, str, Any]]) -> None:
        rows: list[EventRow] = []
        by_run: dict[RunChannel, list[str]] = {}
        for channel, ts, kind, data in batch:
            channel.last_seq += 1
            seq = channel.last_seq
            text = _encode(data)
            if channel.redactor:
                text = channel.redact(text)
            rows.append((channel.run_id, seq, ts, kind, text))
            by_run.setdefault(channel, []).append(
                f'{{"v":1,"run_id":{channel.run_id},"task_id":{channel.task_json},'
                f'"seq":{seq},"ts":{ts!r},"kind":"{kind}","data":{text}}}'
            )
        try:
            await self._store.insert_events(rows)
        except Exception:
            # Never publish what is not stored; the run's numbering stays monotonic.
            log.exception("storing events failed", events=len(rows))
            return
        self.stored += len(rows)
        for channel, events in by_run.items():
            self._publisher.publish(channel.topic, "[" + ",".join(events) + "]")
