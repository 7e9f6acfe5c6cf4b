"""Server-Sent Events: a run's events with no gap and no duplicate, and the live feed of all runs.

:func:`follow_run` is the algorithm of :meth:`clients.bus.BusClient.follow`, on asyncio:

1. start buffering the run's live batches (a :class:`~clients.bridge.async_bus.Listener`)
   *before* asking the store for history, so nothing published meanwhile is lost;
2. page through the store's events after ``after``;
3. then take buffered and live batches in order, skipping numbers already sent; a batch
   that starts past ``last + 1`` (a gap: dropped under load, or a daemon restart), a
   RESET, or a quiet spell sends us back to step 2. The quiet-spell check is what finds a
   final state that was published but missed.

The run ends the stream: the generator returns after the final state event. Items are
event dicts, or None: "nothing new, still alive" (the writer then sends a keep-alive
comment now and then, and notices a client that went away).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from clients.bridge.async_bus import RESET, AsyncBus, DaemonRefused, DaemonUnavailable
from clients.bridge.web_io import STREAMS
from dte_tools.wire import FINAL_STATES, Kind, Op

log = logging.getLogger("duft.bridge.sse")

# How long a live stream may be quiet before the store is checked again (doubling to MAX).
QUIET_S = 1.0
QUIET_MAX_S = 5.0
# How long to wait for the daemon to come back before ticking again.
RETRY_S = 1.0
KEEPALIVE_S = 15.0
# What a browser waits before reconnecting a dropped stream (it resends Last-Event-ID).
RETRY_MS = 1000

Event = dict[str, Any]


def is_final(event: Event) -> bool:
    return event["kind"] == Kind.STATE and event["data"].get("state") in FINAL_STATES


def normalise(raw: Event, run_id: int, task_id: str) -> Event:
    """One shape for stored and published events: ``{run_id, task_id, seq, ts, kind, data}``."""
    return {
        "run_id": run_id,
        "task_id": task_id,
        "seq": raw["seq"],
        "ts": raw["ts"],
        "kind": raw["kind"],
        "data": raw["data"],
    }


def frame(data: Any, event_id: int | str | None = None) -> bytes:
    """One SSE message; ``data`` is sent as one line of JSON."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def follow_run(bus: AsyncBus, run: dict[str, Any], after: int) -> AsyncIterator[Event | None]:
    """Every event of ``run`` after sequence number ``after``, ending at its final state."""
    run_id, task_id = int(run["id"]), str(run["task_id"])
    listener = bus.listen(run_id)  # before any history is fetched
    last = after
    quiet = QUIET_S
    try:
        while True:
            try:
                page = await bus.request(Op.EVENTS, run=run_id, after=last)
            except DaemonUnavailable:
                yield None
                await bus.wait_connected(RETRY_S)
                continue
            except DaemonRefused:
                return  # the run is gone (pruned, or a daemon with another store)
            for raw in page["events"]:
                event = normalise(raw, run_id, task_id)
                last = event["seq"]
                yield event
                if is_final(event):
                    return
            if page["more"]:
                continue
            if page["final"]:
                return
            if not page["events"]:
                yield None  # let the writer start the response before the first live event
            while True:
                item = await listener.get(quiet)
                if item is None:
                    yield None
                    quiet = min(quiet * 2, QUIET_MAX_S)
                    break
                if item is RESET or item[0]["seq"] > last + 1:
                    break
                quiet = QUIET_S
                for raw in item:
                    if raw["seq"] <= last:
                        continue
                    event = normalise(raw, run_id, task_id)
                    last = event["seq"]
                    yield event
                    if is_final(event):
                        return
    finally:
        bus.unlisten(listener)


class LiveFeed:
    """Every run's events as they happen, gap-free for each run seen since the feed began.

    A run is tracked from its first live event until its final state; meanwhile a gap in
    its numbers, a RESET, or a quiet spell is filled from the store.
    """

    def __init__(self, bus: AsyncBus, quiet_s: float = 2.0) -> None:
        self._bus = bus
        self._quiet_s = quiet_s
        self._last: dict[int, int] = {}  # run id -> last sequence number, for open runs
        self._task: dict[int, str] = {}  # run id -> task id, for open runs

    async def events(self) -> AsyncIterator[Event | None]:
        listener = self._bus.listen(None)
        try:
            while True:
                item = await listener.get(self._quiet_s)
                if item is None or item is RESET:
                    if item is None:
                        yield None
                    for run_id in sorted(self._last):
                        async for event in self._catch_up(run_id):
                            yield event
                    continue
                run_id = int(item[0]["run_id"])
                if run_id in self._last and item[0]["seq"] > self._last[run_id] + 1:
                    async for event in self._catch_up(run_id):
                        yield event
                task_id = self._task.setdefault(run_id, str(item[0]["task_id"]))
                for raw in item:
                    if raw["seq"] <= self._last.get(run_id, 0):
                        continue
                    yield self._take(normalise(raw, run_id, task_id))
        finally:
            self._bus.unlisten(listener)

    def _take(self, event: Event) -> Event:
        run_id = event["run_id"]
        if is_final(event):
            self._last.pop(run_id, None)
            self._task.pop(run_id, None)
        else:
            self._last[run_id] = event["seq"]
        return event

    async def _catch_up(self, run_id: int) -> AsyncIterator[Event]:
        while run_id in self._last:
            try:
                page = await self._bus.request(Op.EVENTS, run=run_id, after=self._last[run_id])
            except DaemonUnavailable:
                return  # tried again at the next quiet spell or RESET
            except DaemonRefused:
                self._last.pop(run_id, None)  # pruned, or from a different store
                self._task.pop(run_id, None)
                return
            task_id = self._task[run_id]
            for raw in page["events"]:
                yield self._take(normalise(raw, run_id, task_id))
            if not page["more"]:
                return


async def stream(
    request: web.Request,
    items: AsyncIterator[Any],
    to_frames: Callable[[Any], list[bytes]],
) -> web.StreamResponse:
    """Write ``items`` as an SSE response until they end or the client goes away.

    If ``items`` ends before yielding anything the answer is ``204 No Content``, which
    tells a browser's EventSource to stop reconnecting (the run was already over).
    """
    response: web.StreamResponse | None = None
    last_write = time.monotonic()
    async with contextlib.aclosing(items):
        try:
            async for item in items:
                if response is None:
                    response = await _open_stream(request)
                    last_write = time.monotonic()
                if item is None:
                    if time.monotonic() - last_write < KEEPALIVE_S:
                        continue
                    chunks = [b": keep-alive\n\n"]
                else:
                    chunks = to_frames(item)
                for chunk in chunks:
                    await response.write(chunk)
                if chunks:
                    last_write = time.monotonic()
        except ConnectionResetError:
            return response or web.Response(status=204)
        except Exception:
            if response is None:
                raise  # nothing sent yet: the error middleware answers with its status
            log.exception("a stream to %s ended early", request.path)
            return response
    if response is None:
        return web.Response(status=204)
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def _open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # no buffering in a reverse proxy
        }
    )
    await response.prepare(request)
    await response.write(f"retry: {RETRY_MS}\n\n".encode())
    return response


async def tracked_stream(
    request: web.Request, items: AsyncIterator[Any], to_frames: Callable[[Any], list[bytes]]
) -> web.StreamResponse:
    """:func:`stream`, registered so that it is cancelled when the bridge shuts down."""
    task = asyncio.current_task()
    assert task is not None
    streams = request.app[STREAMS]
    streams.add(task)
    try:
        return await stream(request, items, to_frames)
    finally:
        streams.discard(task)


async def only(
    items: AsyncIterator[Any], wanted: Callable[[Any], bool], start: bool = False
) -> AsyncIterator[Any]:
    """The ticks and ``wanted`` items of ``items`` (others become ticks); a first tick if
    ``start``, so that the response begins at once."""
    if start:
        yield None
    async with contextlib.aclosing(items):
        async for item in items:
            yield item if item is None or wanted(item) else None
