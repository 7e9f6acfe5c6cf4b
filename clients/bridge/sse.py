"""Server-Sent Events: a run's events with no gap and no duplicate, and the live feed of all runs.

The algorithm is :mod:`clients.follow` (the CLI's too); :func:`follow_run` and
:class:`LiveFeed` are its asyncio drivers. Each starts buffering live batches (a
:class:`~clients.bridge.async_bus.Listener`) *before* asking the store for anything, so
nothing published meanwhile is lost.

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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from clients.bridge.async_bus import RESET, AsyncBus, DaemonRefused, DaemonUnavailable
from clients.bridge.web_io import STREAMS
from clients.follow import FeedFollower, RunFollower, Step
from dte_tools.wire import Op

log = logging.getLogger("duft.bridge.sse")

# How long to wait for the daemon to come back before ticking again.
RETRY_S = 1.0
KEEPALIVE_S = 15.0
# What a browser waits before reconnecting a dropped stream (it resends Last-Event-ID).
RETRY_MS = 1000
# How long the feed of every run may be quiet before its open runs are checked in the store.
FEED_QUIET_S = 2.0

Event = dict[str, Any]


def frame(data: Any, event_id: int | str | None = None) -> bytes:
    """One SSE message; ``data`` is sent as one line of JSON."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def follow_run(bus: AsyncBus, run: dict[str, Any], after: int) -> AsyncIterator[Event | None]:
    """Every event of ``run`` after sequence number ``after``, ending at its final state."""
    run_id = int(run["id"])
    listener = bus.listen(run_id)  # before any history is fetched
    follower = RunFollower(run_id, str(run["task_id"]), after)
    step = follower.start()
    try:
        while True:
            for event in step.emit:
                yield event
            if step.done:
                return
            if step.fetch:
                try:
                    page = await bus.request(Op.EVENTS, run=run_id, after=follower.last)
                except DaemonUnavailable:
                    yield None
                    await bus.wait_connected(RETRY_S)
                    step = follower.reset()
                    continue
                except DaemonRefused:
                    return  # the run is gone (pruned, or a daemon with another store)
                step = follower.page(page)
                if not step.emit and not step.done:
                    yield None  # let the writer start the response before the first live event
                continue
            item = await listener.get(follower.wait_s)
            if item is None:
                yield None
                step = follower.quiet()
            elif item is RESET:
                step = follower.reset()
            else:
                step = follower.live(item)
    finally:
        bus.unlisten(listener)


class LiveFeed:
    """Every run's events as they happen, gap-free for each run seen since the feed began
    (:class:`clients.follow.FeedFollower`, driven on asyncio)."""

    def __init__(self, bus: AsyncBus, quiet_s: float = FEED_QUIET_S) -> None:
        self._bus = bus
        self._quiet_s = quiet_s
        self._feed = FeedFollower()

    async def events(self, first: Callable[[], Awaitable[Any]] | None = None) -> AsyncIterator[Any]:
        """Live events (and None ticks); ``first()``'s result before them, read after the
        feed has subscribed, so that nothing happening meanwhile is missed."""
        listener = self._bus.listen(None)
        try:
            if first is not None:
                yield await first()
            while True:
                item = await listener.get(self._quiet_s)
                if item is None or item is RESET:
                    if item is None:
                        yield None
                    for follower in self._feed.quiet():
                        async for event in self._fetch(follower):
                            yield event
                    continue
                follower, step = self._feed.live(item)
                for event in step.emit:
                    yield event
                if follower is not None and step.fetch:
                    async for event in self._fetch(follower):
                        yield event
        finally:
            self._bus.unlisten(listener)

    async def _fetch(self, follower: RunFollower) -> AsyncIterator[Event]:
        step = Step(fetch=True)
        while step.fetch and not step.done:
            try:
                page = await self._bus.request(Op.EVENTS, run=follower.run_id, after=follower.last)
            except DaemonUnavailable:
                return  # tried again at the next quiet spell or RESET
            except DaemonRefused:
                self._feed.gone(follower)  # pruned, or from a different store
                return
            step = self._feed.page(follower, page)
            for event in step.emit:
                yield event


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


async def only(items: AsyncIterator[Any], wanted: Callable[[Any], bool]) -> AsyncIterator[Any]:
    """The ticks and ``wanted`` items of ``items`` (others become ticks)."""
    async with contextlib.aclosing(items):
        async for item in items:
            yield item if item is None or wanted(item) else None
