"""Where a run's worker executes: one small interface, two implementations picked by name.

Everything above it (queue, one active run per task, limits, cancel, timeouts, reconcile,
events) is the run manager's and the same for both. ``local`` starts workers on this
machine (:mod:`duftd.runs.workers`); ``dask`` places each run on a Dask cluster
(:mod:`duftd.cluster.launcher`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dte_tools.job import Job
from duftd.pipeline import EventPipeline
from duftd.runs.supervisor import Limits, Outcome, RunSupervisor
from duftd.runs.workers import SparePool, start_worker

if TYPE_CHECKING:
    from duftd.runs.run import LiveRun

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
    """Workers on this machine: a warm spare of the task's kind when one is ready."""

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
            kind: SparePool(kind, env, cwd, spares, spare_burst_s)
            for kind in ("script", "notebook")
        }

    def start(self) -> None:
        for pool in self._spares.values():
            pool.start()

    async def place(self, run: LiveRun, limits: Limits) -> RunSupervisor:
        pool = self._spares[run.task.kind]
        worker = pool.take() or await start_worker(pool.kind, self._env, self._cwd)
        return RunSupervisor(worker, limits, self._pipeline, run.link, handed_over=pool.start)

    def health(self) -> dict[str, Any]:
        return {"launcher": self.name}

    async def close(self) -> None:
        for pool in self._spares.values():
            await pool.close()
