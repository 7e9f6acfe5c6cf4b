"""One run, one process group: start the worker, capture its output, stop it, judge it.

The supervisor knows nothing of the store or the queue; it turns one worker process
into an :class:`Outcome`, and the run manager records it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dte_tools.wire import Kind, State
from duftd import spawn
from duftd.runs.spares import Spare

STDERR_TAIL_LINES = 40
REASON_TRACEBACK_LINES = 8
# How long a finished worker's output pipes may stay open (held by a process that
# escaped its group) before we stop reading them.
READER_GRACE_S = 2.0

Emit = Callable[[str, dict[str, Any]], None]


@dataclass
class Outcome:
    """How a run ended: its final state, exit code and a human reason."""

    state: str
    exit_code: int | None = None
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class LaunchSpec:
    """Everything needed to start one worker process."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    timeout_s: float | None
    cancel_grace_s: float
    worker_id: str  # its cgroup and the marker in its environment (duftd.containment)
    # A warm spare to hand the run to, with its assignment (argv, cwd, env), instead of
    # starting ``argv`` cold.
    spare: Spare | None = None
    assignment: dict[str, Any] | None = None


class RunSupervisor:
    """Runs one worker process group to its end; ``stop()`` ends it early."""

    def __init__(self, launch: LaunchSpec, emit: Emit) -> None:
        self._launch = launch
        self._emit = emit
        self._stop_reason: tuple[str, str] | None = None  # (final state, reason)
        self._stop_requested = asyncio.Event()
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.process: asyncio.subprocess.Process | None = None
        self.stopped_by: str | None = None  # "SIGTERM" or "SIGKILL" when we had to stop it

    async def start(self) -> int:
        """Start the worker; returns its pid (also its process group id)."""
        launch = self._launch
        if launch.spare is not None:
            assert launch.assignment is not None  # a spare always comes with its run
            self.process = launch.spare.process
            try:
                await launch.spare.assign(launch.assignment)
            except (BrokenPipeError, ConnectionResetError) as error:
                raise OSError(f"the spare worker went away: {error}") from None
        else:
            self.process = await spawn.start_worker(launch.argv, launch.cwd, launch.env)
        return self.process.pid

    def stop(self, state: str, reason: str) -> None:
        """Ask the run to end with ``state`` (cancelled, or failed on timeout)."""
        if self._stop_reason is None:
            self._stop_reason = (state, reason)
        self._stop_requested.set()

    async def wait(self, settle: Callable[[bool], Awaitable[None]]) -> Outcome:
        """Wait for the worker to end (or stop it), then judge how it went.

        ``settle(ended_on_its_own)`` is awaited after the process is gone and before
        judging, so the worker's last events are taken in before the final state.
        """
        process = self.process
        assert process is not None
        readers = [
            asyncio.create_task(self._read(process.stdout, Kind.STDOUT)),
            asyncio.create_task(self._read(process.stderr, Kind.STDERR)),
        ]
        exited = asyncio.create_task(spawn.wait_exit(process))
        stop = asyncio.create_task(self._stop_requested.wait())
        timeout = self._launch.timeout_s
        done, _ = await asyncio.wait(
            {exited, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        stop.cancel()
        if exited not in done:
            if not self._stop_requested.is_set():
                self.stop(State.FAILED, f"timed out after {timeout:g} s (timeoutSeconds)")
            await self._terminate(exited)
        self._kill_leftovers()
        _, pending = await asyncio.wait(readers, timeout=READER_GRACE_S)
        for reader in pending:
            reader.cancel()
        code = await exited
        await settle(code >= 0)  # exited by itself (a stopped notebook runner does, after flushing)
        return self._judge(code)

    def _kill_leftovers(self) -> None:
        """End whatever the task left running: its group, and every other process of the
        worker, however it left the group (a notebook's kernel does)."""
        assert self.process is not None
        spawn.signal_group(self.process.pid, signal.SIGKILL)
        spawn.kill_worker(self._launch.worker_id)

    async def _terminate(self, exited: asyncio.Task[int]) -> None:
        """SIGTERM the group, then SIGKILL everything of the run if it outstays the grace."""
        pid = self.process.pid if self.process else 0
        self.stopped_by = "SIGTERM"
        spawn.signal_group(pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(exited), self._launch.cancel_grace_s)
        except TimeoutError:
            self.stopped_by = "SIGKILL"
            self._kill_leftovers()
            await exited

    async def _read(self, stream: asyncio.StreamReader | None, kind: str) -> None:
        """Turn a pipe into one event per line; over-long lines arrive in pieces."""
        if stream is None:
            return
        while True:
            try:
                chunk = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as end:
                chunk = end.partial
                if not chunk:
                    return
            except asyncio.LimitOverrunError as overrun:
                chunk = await stream.read(overrun.consumed or spawn.LINE_LIMIT)
            text = chunk.decode("utf-8", errors="replace").rstrip("\r\n")
            if kind == Kind.STDERR:
                self._stderr_tail.append(text)
            self._emit(kind, {"text": text})

    def _judge(self, code: int | None) -> Outcome:
        if self._stop_reason is not None:
            state, reason = self._stop_reason
            if self.stopped_by:
                reason = f"{reason} (stopped with {self.stopped_by})"
            return Outcome(state, code, reason, {"stopped_by": self.stopped_by})
        if code == 0:
            return Outcome(State.SUCCEEDED, 0)
        tail = self._traceback_tail()
        if code is not None and code < 0:
            summary = f"killed by signal {-code}"
            with contextlib.suppress(ValueError):
                summary = f"killed by signal {signal.Signals(-code).name}"
        else:
            summary = f"exit code {code}"
        if tail:
            summary = f"{summary}: {tail[-1]}"
        return Outcome(State.FAILED, code, "\n".join([summary, *tail[:-1]]), {"traceback": tail})

    def _traceback_tail(self) -> list[str]:
        """The last lines of the last traceback on stderr (or of stderr itself)."""
        lines = list(self._stderr_tail)
        starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
        if starts:
            lines = lines[starts[-1] :]
        return [line for line in lines if line.strip()][-REASON_TRACEBACK_LINES:]
