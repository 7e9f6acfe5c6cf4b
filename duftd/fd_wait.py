"""Awaiting a bare file descriptor (a pipe end, a pidfd): asyncio's reader and writer
callbacks turned into one await, for the places that have no stream around the fd."""

from __future__ import annotations

import asyncio


async def readable(fd: int) -> None:
    """Wait until ``fd`` has data (or its end) to read; a pidfd: until its process ends."""
    await _ready(fd, write=False)


async def writable(fd: int) -> None:
    """Wait until ``fd`` has room to write (or its reader is gone)."""
    await _ready(fd, write=True)


async def _ready(fd: int, write: bool) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    add, remove = (
        (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    )
    add(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        remove(fd)
