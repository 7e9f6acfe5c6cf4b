"""Worker processes: started with their pipes, then handed exactly one run.

Every worker (a script worker, or a notebook runner with its kernel) is started the same
way, before or when its run is known, and reads its job (:mod:`dte_tools.job`) on stdin.
A warm spare is simply a worker started ahead of need: a fresh script worker spends
~30 ms importing pyzmq before the task's first line runs, and a notebook runner ~0.5 s
waiting for its kernel to be ready. Where workers get a cgroup each, a script worker is
forked, already loaded, by the fork server (:mod:`duftd.runs.forks`) instead. A worker
is never reused: it runs one task and exits, and the next spare is started once that
task has its job.

duftd creates each worker's pipes and keeps their reading ends: stdout, stderr, and one
durable event channel per process that reports events (the worker, and a notebook's
kernel). The worker is started holding the writing ends; duftd closes its own copies, so
a pipe reaches its end exactly when every process holding it is gone.

A worker's environment holds what is known in advance (endpoints, config folder, its
worker id); the run's id and token arrive with its job, never on a command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from dte_tools.job import Job
from dte_tools.wire import ENV_WORKER_ID
from duftd import spawn
from duftd.fd_wait import writable
from duftd.runs.forks import ForkServer

log = structlog.get_logger("duftd.workers")

SCRIPT_WORKER = [sys.executable, "-m", "dte_tools.spare"]
NOTEBOOK_RUNNER = [sys.executable, "-m", "duftd.notebook.runner"]
# Bigger pipes mean fewer wake-ups for a task that logs fast (1 MiB is Linux's default
# ceiling for an unprivileged process).
CHANNEL_PIPE_BYTES = 1024 * 1024


def new_worker_id() -> str:
    return secrets.token_hex(8)


def kernel_dir(worker_id: str) -> Path:
    """A notebook worker's kernel folder (IPC sockets, the connection file with the kernel's
    key): short, since socket paths are limited, and named after the worker id so that
    duftd can remove it when it had to kill the runner."""
    digest = hashlib.sha256(worker_id.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"duftd-kernel-{digest}"


@dataclass(eq=False)
class Worker:
    """A started worker waiting for its job, with the reading ends of its pipes and the
    writing end of its stdin."""

    kind: str  # "script" or "notebook"
    process: spawn.WorkerProcess
    worker_id: str
    job_pipe: int | None  # where its job is written (None once closed)
    stdout: int
    stderr: int
    channels: list[int] = field(default_factory=list)

    async def assign(self, job: Job) -> None:
        """Hand the worker its run: one JSON line on stdin, then end of input."""
        assert self.job_pipe is not None
        try:
            await _write_all(self.job_pipe, job.encode())
        finally:
            self._close_job_pipe()

    def pipes(self) -> list[int]:
        """Reading ends, handed over to whoever reads them (which closes them)."""
        return [self.stdout, self.stderr, *self.channels]

    def close_pipes(self) -> None:
        for fd in self.pipes():
            with contextlib.suppress(OSError):
                os.close(fd)

    def discard(self) -> None:
        """End a worker that will never get its job (its processes, pipes and folder)."""
        spawn.kill_worker(self.worker_id)
        self._close_job_pipe()
        self.close_pipes()
        self.tidy()

    def tidy(self) -> None:
        """Remove what a killed worker could not (its kernel folder)."""
        if self.kind == "notebook":
            shutil.rmtree(kernel_dir(self.worker_id), ignore_errors=True)

    def _close_job_pipe(self) -> None:
        if self.job_pipe is not None:
            os.close(self.job_pipe)
            self.job_pipe = None


async def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to a non-blocking pipe, waiting for room while the reader takes it
    (BrokenPipeError: the reader is gone)."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await writable(fd)


def _pipe(size: int | None = None) -> tuple[int, int]:
    read, write = os.pipe2(os.O_CLOEXEC)
    if size is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, size)
    return read, write


async def start_worker(
    kind: str, env: dict[str, str], cwd: Path, forks: ForkServer | None = None
) -> Worker:
    """Start a worker of ``kind`` (a script worker forked by ``forks`` when given); it
    waits for its job on stdin."""
    worker_id = new_worker_id()
    env = {**env, ENV_WORKER_ID: worker_id}
    job_in, out, err = _pipe(), _pipe(), _pipe()
    channels = [_pipe(CHANNEL_PIPE_BYTES) for _ in range(2 if kind == "notebook" else 1)]
    writers = [end for _, end in channels]
    theirs = (job_in[0], out[1], err[1], *writers)
    try:
        if forks is not None and kind == "script":
            process: spawn.WorkerProcess = await forks.fork(env, cwd, *theirs)
            await spawn.contain(worker_id, process.pid)
        else:
            argv = [*SCRIPT_WORKER, str(writers[0])]
            if kind == "notebook":
                argv = [*NOTEBOOK_RUNNER, str(kernel_dir(worker_id)), *map(str, writers)]
            process = await spawn.start_worker(
                argv,
                cwd,
                env,
                stdin=job_in[0],
                stdout=out[1],
                stderr=err[1],
                pass_fds=tuple(writers),
            )
    except BaseException:
        for fd in (job_in[1], out[0], err[0], *(read for read, _ in channels)):
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            with contextlib.suppress(OSError):
                os.close(fd)
    os.set_blocking(job_in[1], False)
    return Worker(
        kind, process, worker_id, job_in[1], out[0], err[0], [read for read, _ in channels]
    )


class SparePool:
    """Keeps workers of one kind started ahead of need (when enabled): one always, and a
    second while runs of the kind come often.

    A notebook runner's kernel needs ~0.5 s to get ready, longer than a short notebook
    runs, and a script worker ~35 ms to import (at a lower priority than the run beside
    it), about as long as a short script runs; so with one spare a run submitted as the
    previous one ends waits for a worker that is still starting. While runs come often
    (one was placed within ``burst_idle_s``) the pool keeps a second spare, so the one
    handed over has had a whole run's time to get ready; once runs stop for that long, the
    extra spare is stopped to give its memory back. ``burst_idle_s`` of 0 keeps a single
    spare. Each spare is handed to one run only.
    """

    def __init__(
        self,
        kind: str,
        start_worker: Callable[[str], Awaitable[Worker]],
        enabled: bool,
        burst_idle_s: float = 0,
    ) -> None:
        self.kind = kind
        self._start_worker = start_worker
        self.enabled = enabled
        self._burst_idle_s = burst_idle_s
        self._spares: list[Worker] = []  # oldest (readiest) first
        self._starting: set[asyncio.Task[None]] = set()
        self._stopping: set[asyncio.Task[None]] = set()
        self._in_burst = False
        self._burst_timer: asyncio.TimerHandle | None = None

    def _wanted(self) -> int:
        if not self.enabled:
            return 0
        return 2 if self._in_burst else 1

    def start(self) -> None:
        """Start spares in the background until as many as wanted are ready or on their way."""
        while len(self._spares) + len(self._starting) < self._wanted():
            starting = asyncio.create_task(self._start())
            self._starting.add(starting)
            starting.add_done_callback(self._starting.discard)

    async def _start(self) -> None:
        try:
            self._spares.append(await self._start_worker(self.kind))
        except OSError as error:
            log.warning("could not start a spare worker", error=str(error))
            self.enabled = False
        self._give_back_extra()

    @property
    def ready(self) -> int:
        """Spares started and waiting for a run."""
        return len(self._spares)

    def take(self) -> Worker | None:
        """The readiest live spare (None if there is none).

        The caller calls :meth:`start` once the run has its job: starting a process holds
        the loop for its fork and exec, which put milliseconds into the hand-over."""
        if self._burst_idle_s > 0:
            self._in_burst = True
            if self._burst_timer is not None:
                self._burst_timer.cancel()
            loop = asyncio.get_running_loop()
            self._burst_timer = loop.call_later(self._burst_idle_s, self._end_burst)
        spare = None
        while self._spares and spare is None:
            spare = self._spares.pop(0)
            if spare.process.returncode is not None:
                spare.discard()  # dead, but its cgroup, leftovers and kernel folder are not
                spare = None
        return spare

    def _end_burst(self) -> None:
        self._burst_timer = None
        self._in_burst = False
        self._give_back_extra()

    def _give_back_extra(self) -> None:
        """Stop the newest spares beyond what is wanted now (the burst is over)."""
        while len(self._spares) > self._wanted():
            self._stop(self._spares.pop())

    def _stop(self, spare: Worker) -> None:
        spare.discard()  # the spare and any kernel it started carry its worker id
        stopping = asyncio.create_task(spawn.wait_exit(spare.process))
        self._stopping.add(stopping)
        stopping.add_done_callback(self._stopping.discard)

    async def close(self) -> None:
        """Stop the spares (and any kernels they started) when the daemon stops."""
        self.enabled = False
        if self._burst_timer is not None:
            self._burst_timer.cancel()
        if self._starting:
            await asyncio.gather(*self._starting, return_exceptions=True)
        self._give_back_extra()  # wanted is 0 now: all of them
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
