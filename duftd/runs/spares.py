"""Spare workers: a process started before it is needed, then handed exactly one run.

A fresh script worker spends ~30 ms importing pyzmq before the task's first line runs, and
a notebook runner ~0.5 s waiting for its kernel to be ready. A spare pays that while the
daemon waits, so a run starts on a warm process. A spare is never reused: it runs one
task and exits, like a worker started cold, and the next spare is started at once.

A spare's environment holds what is known in advance (endpoints, config folder, its
worker id); the run's id and token reach it on stdin with its assignment, never on a
command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from dte_tools.wire import ENV_WORKER_ID
from duftd import spawn

log = structlog.get_logger("duftd.spares")


def new_worker_id() -> str:
    return secrets.token_hex(8)


@dataclass
class Spare:
    process: asyncio.subprocess.Process
    worker_id: str

    async def assign(self, job: dict[str, Any]) -> None:
        """Hand the spare its run: one JSON line on stdin, then end of input."""
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(json.dumps(job).encode() + b"\n")
        await stdin.drain()
        stdin.close()


class SparePool:
    """Keeps one spare of one kind ready (when enabled)."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, enabled: bool) -> None:
        self._argv = argv
        self._env = env
        self._cwd = cwd
        self.enabled = enabled
        self._spare: Spare | None = None
        self._starting: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start a spare in the background unless one is ready or on its way."""
        if self.enabled and self._spare is None and self._starting is None:
            self._starting = asyncio.create_task(self._start())

    async def _start(self) -> None:
        worker_id = new_worker_id()
        try:
            process = await spawn.start_worker(
                self._argv, self._cwd, {**self._env, ENV_WORKER_ID: worker_id}, stdin_pipe=True
            )
            self._spare = Spare(process, worker_id)
        except OSError as error:
            log.warning("could not start a spare worker", error=str(error))
            self.enabled = False
        finally:
            self._starting = None

    def take(self) -> Spare | None:
        """The ready spare (None if there is none), and a new one on its way."""
        spare, self._spare = self._spare, None
        self.start()
        if spare is not None and spare.process.returncode is None:
            return spare
        return None

    async def close(self) -> None:
        """Stop the spare (and any kernel it started) when the daemon stops."""
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
        spare, self._spare = self._spare, None
        self.enabled = False
        if spare is None:
            return
        spawn.kill_worker(spare.worker_id)  # and any kernel it started
        await spawn.wait_exit(spare.process)
