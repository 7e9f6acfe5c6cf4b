"""Where a run's worker executes: one small interface, two implementations picked by name.

Everything above it (queue, one active run per task, limits, cancel, timeouts, reconcile,
events) is the run manager's and the same for both. ``local`` starts workers on this
machine (:mod:`duftd.runs.workers`); ``dask`` places each run on a Dask cluster
(:mod:`duftd.cluster.launcher`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from dte_tools.job import Job
from duftd import spawn
from duftd.pipeline import EventPipeline
from duftd.runs.forks import ForkServer
from duftd.runs.supervisor import Limits, Outcome, RunSupervisor
from duftd.runs.workers import SparePool, Worker, start_worker

if TYPE_CHECKING:
    from duftd.runs.run import LiveRun

log = structlog.get_logger("duftd.launchers")

LAUNCHERS = ("local", "dask")


class Placed(Protocol):
    """A run's worker, placed: started with its job, stopped on request, judged at its end."""

    worker_id: str  # in the run record (and, locally, in the environment of its processes)
    abandoned_pipes: int

    async def start(self, job: Job) -> dict[str, Any] | None:
        """Hand over the job; the run record's fields once it runs (None: it never started,
        having been stopped first)."""

    def stop(self, state: str, reason: str) -> None:
        """Ask the run to end with ``state`` (cancelled, or failed on timeout)."""

    async def wait(self) -> Outcome:
        """Wait for the end (every event of the run is in the pipeline by then)."""

    def discard(self) -> None:
        """Give up a run that will never be started."""


class Launcher(Protocol):
    name: str
    keeps_output: bool  # a notebook's executed copy lands in the run's folder here

    def start(self) -> None: ...

    async def place(self, run: LiveRun, limits: Limits) -> Placed:
        """A worker for ``run``; OSError when none can be had."""

    def health(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class LocalLauncher:
    """Workers on this machine: a warm spare of the task's kind when one is ready; script
    workers forked by a fork server where workers get a cgroup each (:mod:`.forks`)."""

    name = "local"
    keeps_output = True

    def __init__(
        self,
        pipeline: EventPipeline,
        env: dict[str, str],
        cwd: Path,
        spares: bool,
        spare_burst_s: float = 0,
    ) -> None:
        self._pipeline = pipeline
        self._env = env
        self._cwd = cwd
        self._spares = {
            kind: SparePool(kind, self._start_worker, spares, spare_burst_s)
            for kind in ("script", "notebook")
        }
        self._forks: ForkServer | None = None
        self._forks_wanted = True  # until one fails to start
        self._forks_lock = asyncio.Lock()

    def start(self) -> None:
        for pool in self._spares.values():
            pool.start()

    async def place(self, run: LiveRun, limits: Limits) -> RunSupervisor:
        pool = self._spares[run.task.kind]
        worker = pool.take() or await self._start_worker(pool.kind)
        return RunSupervisor(worker, limits, self._pipeline, run.link, handed_over=pool.start)

    async def _start_worker(self, kind: str) -> Worker:
        forks = await self._fork_server() if kind == "script" else None
        return await start_worker(kind, self._env, self._cwd, forks)

    async def _fork_server(self) -> ForkServer | None:
        """The running fork server, started (again) when needed; None where workers are
        not contained by cgroups (or a server could not be started: then never again)."""
        async with self._forks_lock:
            if not (self._forks_wanted and spawn.contained_by_cgroups()):
                return None
            if self._forks is not None and not self._forks.running:
                await self._forks.close()  # it ended (killed): reap it, start another
                self._forks = None
            if self._forks is None:
                try:
                    self._forks = await ForkServer.start(self._env, self._cwd)
                except OSError as error:
                    log.warning(
                        "no script fork server; starting script workers one by one",
                        error=str(error),
                    )
                    self._forks_wanted = False
            return self._forks

    def health(self) -> dict[str, Any]:
        """The launcher, its warm spares by kind, and whether script workers are forked."""
        forking = self._forks is not None and self._forks.running
        spares = {kind: pool.ready for kind, pool in self._spares.items()}
        return {"launcher": self.name, "spares": spares, "script_fork_server": forking}

    async def close(self) -> None:
        for pool in self._spares.values():
            await pool.close()
        if self._forks is not None:  # after the spares: it reports their exits
            await self._forks.close()
