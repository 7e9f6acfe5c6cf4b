"""One run, one process group: hand the worker its job, read its pipes, stop it, judge it.

The supervisor knows nothing of the store or the queue; it turns one worker process
into an :class:`Outcome`, and the run manager records it. This is where a run's outcome is
judged, and :meth:`RunSupervisor._kill_leftovers` is the one place that ends whatever of a
run is still alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dte_tools.job import Job
from dte_tools.wire import State
from duftd import spawn
from duftd.ingest import RunInput, RunLink
from duftd.pipeline import EventPipeline
from duftd.runs.workers import Worker

REASON_TRACEBACK_LINES = 8


@dataclass
class Outcome:
    """How a run ended: its final state, exit code and a human reason."""

    state: str
    exit_code: int | None = None
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Limits:
    """How long a run may take, and how long it gets to stop when asked."""

    timeout_s: float | None
    cancel_grace_s: float


class RunSupervisor:
    """Runs one worker process group to its end; ``stop()`` ends it early."""

    def __init__(
        self,
        worker: Worker,
        limits: Limits,
        pipeline: EventPipeline,
        link: RunLink,
        handed_over: Callable[[], None] = lambda: None,
    ) -> None:
        self._worker = worker
        # Called once the worker has its job or never will (the next spare is started then).
        self._handed_over = handed_over
        self._limits = limits
        self._link = link
        self._input = RunInput(pipeline, link)
        self._stop_reason: tuple[str, str] | None = None  # (final state, reason)
        self._stop_requested = asyncio.Event()
        self.stopped_by: str | None = None  # "SIGTERM" or "SIGKILL" when we had to stop it
        self.abandoned_pipes = 0  # pipes held open by a process that escaped every kill

    @property
    def pid(self) -> int:
        """The worker's pid (also its process group id)."""
        return self._worker.process.pid

    @property
    def worker_id(self) -> str:
        return self._worker.worker_id

    def discard(self) -> None:
        """End the worker before it was given its job."""
        self._worker.discard()
        self._handed_over()

    async def start(self, job: Job) -> dict[str, Any]:
        """Read the worker's pipes into the run and hand it its job; the run record's
        ``pid``."""
        worker = self._worker
        self._input.start(worker.stdout, worker.stderr, worker.channels)
        try:
            await worker.assign(job)
        except (BrokenPipeError, ConnectionResetError) as error:
            self._kill_leftovers()
            await self._input.settled()
            self._input.close()
            self._worker.tidy()
            raise OSError(f"the worker went away before its run: {error}") from None
        finally:
            self._handed_over()
        return {"pid": self.pid}

    def stop(self, state: str, reason: str) -> None:
        """Ask the run to end with ``state`` (cancelled, or failed on timeout)."""
        if self._stop_reason is None:
            self._stop_reason = (state, reason)
        self._stop_requested.set()

    async def wait(self) -> Outcome:
        """Wait for the worker to end (or stop it), then for every pipe of the run to reach
        its end (everything the run said is then taken in), and judge how it went."""
        process = self._worker.process
        exited = asyncio.create_task(spawn.wait_exit(process))
        stop = asyncio.create_task(self._stop_requested.wait())
        timeout = self._limits.timeout_s
        try:
            done, _ = await asyncio.wait(
                {exited, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            stop.cancel()
            if exited not in done:
                if not self._stop_requested.is_set():
                    self.stop(State.FAILED, f"timed out after {timeout:g} s (timeoutSeconds)")
                await self._terminate(exited)
            code = await exited
            self._kill_leftovers()
            self.abandoned_pipes = await self._input.settled()
        finally:
            self._input.close()
            self._worker.tidy()
        return self._judge(code)

    def _kill_leftovers(self) -> None:
        """End whatever the task left running: its group, and every other process of the
        worker, however it left the group (a notebook's kernel does)."""
        spawn.signal_group(self.pid, signal.SIGKILL)
        spawn.kill_worker(self._worker.worker_id)

    async def _terminate(self, exited: asyncio.Task[int]) -> None:
        """SIGTERM the group, then SIGKILL everything of the run if it outstays the grace."""
        self.stopped_by = "SIGTERM"
        spawn.signal_group(self.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(exited), self._limits.cancel_grace_s)
        except TimeoutError:
            self.stopped_by = "SIGKILL"
            self._kill_leftovers()
            await exited

    def _judge(self, code: int | None) -> Outcome:
        return judge(self._link, code, self._stop_reason, self.stopped_by)


def judge(
    link: RunLink, code: int | None, stop: tuple[str, str] | None, stopped_by: str | None
) -> Outcome:
    """A run's outcome, from how it was stopped (``stop``: final state and reason), its
    exit code, and what it reported (a notebook's failing cell, its stderr)."""
    if stop is not None:
        state, reason = stop
        if stopped_by:
            reason = f"{reason} (stopped with {stopped_by})"
        return Outcome(state, code, reason, {"stopped_by": stopped_by})
    failure = link.failure
    if code != 0 and failure is not None:  # a notebook's failing cell, as its runner saw it
        return Outcome(
            State.FAILED,
            code,
            f"cell {failure['cell_index']} raised {failure['ename']}: {failure['evalue']}",
            {"cell_index": failure["cell_index"], "traceback": failure["traceback"]},
        )
    if code == 0:
        return Outcome(State.SUCCEEDED, 0)
    tail = _traceback_tail(link)
    if code is not None and code < 0:
        summary = f"killed by signal {-code}"
        with contextlib.suppress(ValueError):
            summary = f"killed by signal {signal.Signals(-code).name}"
    else:
        summary = f"exit code {code}"
    if tail:
        summary = f"{summary}: {tail[-1]}"
    return Outcome(State.FAILED, code, "\n".join([summary, *tail[:-1]]), {"traceback": tail})


def _traceback_tail(link: RunLink) -> list[str]:
    """The last lines of the last traceback on stderr (or of stderr itself)."""
    lines = list(link.stderr_tail)
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if starts:
        lines = lines[starts[-1] :]
    return [line for line in lines if line.strip()][-REASON_TRACEBACK_LINES:]
