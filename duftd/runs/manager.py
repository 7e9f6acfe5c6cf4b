"""All runs: submission, the one-active-run-per-task rule, the queue, limits and cancel.

Each run's state changes are written to the store and published as ``state`` events
here, and nowhere else. One :class:`RunSupervisor` per running run does the process work.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from dte_tools import wire
from dte_tools.wire import Kind, State
from duftd import spawn
from duftd.config import (
    LoadedConfig,
    ResolvedParameters,
    TaskSpec,
    resolve_parameters,
    secret_values,
)
from duftd.errors import ShuttingDownError, UnknownRunError
from duftd.ingest import Ingest, WorkerLink
from duftd.notebook.scratch import kernel_dir
from duftd.pipeline import EventPipeline, RunChannel
from duftd.runs.root_layout import prepare_root_copy
from duftd.runs.spares import SparePool, new_worker_id
from duftd.runs.supervisor import LaunchSpec, Outcome, RunSupervisor
from duftd.store import Store

log = structlog.get_logger("duftd.runs")

SCRIPT_SPARE = [sys.executable, "-m", "dte_tools.spare"]
NOTEBOOK_COLD = [sys.executable, "-m", "duftd.notebook.runner"]
NOTEBOOK_SPARE = [*NOTEBOOK_COLD, "--spare"]
# How long a worker that ended on its own may take to deliver its last events (its
# senders' closing markers) before the final state is recorded.
SETTLE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class WorkerEndpoints:
    """Where workers reach the daemon, and the folders runs use."""

    control: str
    ingest: str
    data_dir: Path
    runs_dir: Path  # per-run folders: executed notebooks, executeFromRoot copies


@dataclass(eq=False)
class LiveRun:
    """A run that is queued, starting or running, with the spec it was submitted with."""

    id: int
    task: TaskSpec
    # The config as it was at submit (a reload does not change a live run); kept out of
    # repr because it holds the user's connection values.
    config: LoadedConfig = field(repr=False)
    params: dict[str, Any]
    link: WorkerLink
    state: str = State.QUEUED
    supervisor: RunSupervisor | None = None
    cancel_reason: str | None = None
    worker_id: str = ""  # in the environment of every process of the run
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class RunManager:
    def __init__(
        self,
        store: Store,
        pipeline: EventPipeline,
        config: LoadedConfig,
        endpoints: WorkerEndpoints,
        max_concurrent: int,
        cancel_grace_s: float = 5.0,
        spares: bool = True,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.config = config
        self.endpoints = endpoints
        self.max_concurrent = max_concurrent
        self.cancel_grace_s = cancel_grace_s
        self.ingest: Ingest | None = None
        self._live: dict[int, LiveRun] = {}
        self._active_by_task: dict[str, LiveRun] = {}
        self._queue: deque[LiveRun] = deque()
        self._submit_locks: dict[str, asyncio.Lock] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._accepting = True
        # Called with the task's address after each run (duftd.config_reload's check).
        self.on_run_end: Callable[[str], None] | None = None
        known_ahead = spawn.worker_environment(
            {
                wire.ENV_CONTROL: endpoints.control,
                wire.ENV_INGEST: endpoints.ingest,
                wire.ENV_CONFIG_DIR: str(config.root),
            }
        )
        self._spares = {
            "script": SparePool(SCRIPT_SPARE, known_ahead, config.root, spares),
            "notebook": SparePool(NOTEBOOK_SPARE, known_ahead, config.root, spares),
        }

    def start_spares(self) -> None:
        for pool in self._spares.values():
            pool.start()

    # -- queries ---------------------------------------------------------------

    def worker_link(self, run_id: int) -> WorkerLink | None:
        """The ingest link of a live run (how ingest checks a worker's token)."""
        run = self._live.get(run_id)
        return run.link if run else None

    def live_run(self, run_id: int) -> LiveRun | None:
        return self._live.get(run_id)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def active(self) -> int:
        return len(self._live)

    async def get_run(self, run_id: int) -> dict[str, Any]:
        run = await self.store.get_run(run_id)
        if run is None:
            raise UnknownRunError(f"no run {run_id}; `duft runs` lists the recorded runs")
        return run

    # -- submit and cancel -----------------------------------------------------

    async def submit(
        self, address: str, given: dict[str, Any], requested_by: str
    ) -> tuple[dict[str, Any], dict[str, str], bool]:
        """Queue a run of a task; returns (run, ignored parameters, joined an active run)."""
        if not self._accepting:
            raise ShuttingDownError(
                "duftd is shutting down and takes no new runs; submit again once it is back"
            )
        config = self.config
        task = config.runnable_task(address)
        resolved = resolve_parameters(task, given)
        # Concurrent submits of one task must see each other's run: check and register
        # under the task's lock, across the store's await.
        async with self._submit_locks.setdefault(task.address, asyncio.Lock()):
            active = self._active_by_task.get(task.address)
            if active is not None:
                return await self.get_run(active.id), {}, True
            return await self._create(task, config, resolved, requested_by)

    async def _create(
        self, task: TaskSpec, config: LoadedConfig, resolved: ResolvedParameters, requested_by: str
    ) -> tuple[dict[str, Any], dict[str, str], bool]:
        record = await self.store.create_run(
            task.address,
            requested_by,
            resolved.values,
            resolved.ignored,
            task.model_dump(mode="json", by_alias=True),
        )
        channel = RunChannel(record["id"], task.address, tuple(secret_values(config, task)))
        run = LiveRun(
            id=record["id"],
            task=task,
            config=config,
            params=resolved.values,
            link=WorkerLink(secrets.token_hex(32).encode(), channel),
        )
        self._live[run.id] = run
        self._active_by_task[task.address] = run
        self._emit_state(run, State.QUEUED, {"requested_by": requested_by})
        self._queue.append(run)
        self._pump()
        return record, resolved.ignored, False

    async def cancel(self, run_id: int, reason: str = "cancelled by request") -> dict[str, Any]:
        """Cancel a queued or running run; a finished one is returned as it is."""
        run = self._live.get(run_id)
        if run is None:
            return await self.get_run(run_id)
        if run.state == State.QUEUED:
            self._queue.remove(run)
            await self._finish(run, Outcome(State.CANCELLED, None, reason))
        elif run.supervisor is not None:
            run.supervisor.stop(State.CANCELLED, reason)
        else:
            run.cancel_reason = reason  # starting: the supervisor is stopped once it exists
        return await self.get_run(run_id)

    # -- the queue ---------------------------------------------------------------

    def _pump(self) -> None:
        while self._queue and len(self._running) < self.max_concurrent:
            run = self._queue.popleft()
            run.state = State.STARTING  # off the queue now: a cancel must not look for it there
            task = asyncio.create_task(self._execute(run), name=f"run-{run.id}")
            self._running.add(task)
            task.add_done_callback(self._on_run_done)

    def _on_run_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("run supervisor crashed", run=task.get_name(), error=repr(task.exception()))
        self._pump()

    async def _execute(self, run: LiveRun) -> None:
        """One run from starting to its recorded final state; failure is data, never raised."""
        try:
            output = self._output_path(run)
            launch = self._launch_spec(run)
            await self._transition(
                run,
                State.STARTING,
                worker_id=run.worker_id,
                output=str(output) if output else None,
            )
            supervisor = RunSupervisor(launch, lambda k, d: self._emit(run, k, d))
            try:
                pid = await supervisor.start()
            except OSError as error:
                await self._finish(
                    run, Outcome(State.FAILED, None, f"worker did not start: {error}")
                )
                return
            run.supervisor = supervisor
            await self._transition(run, State.RUNNING, pid=pid, started_at=time.time())
            if run.cancel_reason:
                supervisor.stop(State.CANCELLED, run.cancel_reason)
            outcome = await supervisor.wait(lambda on_its_own: self._settle(run, on_its_own))
        except Exception as error:
            log.exception("run failed inside duftd", run_id=run.id)
            outcome = Outcome(State.FAILED, None, f"duftd error while supervising: {error!r}")
        await asyncio.shield(self._finish(run, outcome))

    async def _settle(self, run: LiveRun, ended_on_its_own: bool) -> None:
        """Take in the worker's last events; wait for them only if it was not killed."""
        if self.ingest is not None:
            await self.ingest.settle(run.link, SETTLE_TIMEOUT_S if ended_on_its_own else None)

    def _run_dir(self, run: LiveRun) -> Path:
        return self.endpoints.runs_dir / str(run.id)

    def _output_path(self, run: LiveRun) -> Path | None:
        """Where a notebook run's executed copy is written (None for scripts)."""
        if run.task.kind != "notebook":
            return None
        return self._run_dir(run) / run.task.script_path.name

    def _launch_spec(self, run: LiveRun) -> LaunchSpec:
        """How to start the run's worker: on a warm spare when one is ready, else cold."""
        task = run.task
        endpoints = self.endpoints
        extra = {
            wire.ENV_RUN_ID: str(run.id),
            wire.ENV_RUN_TOKEN: run.link.token.decode(),
            wire.ENV_CONTROL: endpoints.control,
            wire.ENV_INGEST: endpoints.ingest,
            wire.ENV_CONFIG_DIR: str(run.config.root),
        }
        script, cwd = task.script_path, task.data_tasks_dir
        if task.execute_from_root:
            # The task may replace duft-config itself: run a copy from the folder above it,
            # with the task's own folder still importable.
            script = prepare_root_copy(task.script_path, self._run_dir(run) / "root-copy")
            cwd = run.config.root.parent
            extra["PYTHONPATH"] = str(task.data_tasks_dir)
        if task.kind == "notebook":
            interpreter = NOTEBOOK_COLD
            args = [str(script), str(self._output_path(run))]
        else:
            # DUFT passes a script's parameters as its JSON argument; they hold no secrets.
            interpreter = [sys.executable]
            args = [str(script), json.dumps(run.params)]
        spare = self._spares[task.kind].take()
        run.worker_id = spare.worker_id if spare else new_worker_id()
        assignment = {"argv": args, "cwd": str(cwd), "env": extra} if spare else None
        env = spawn.worker_environment({**extra, wire.ENV_WORKER_ID: run.worker_id})
        return LaunchSpec(
            interpreter + args,
            cwd,
            env,
            task.timeout_seconds,
            self.cancel_grace_s,
            worker_id=run.worker_id,
            spare=spare,
            assignment=assignment,
        )

    # -- state -----------------------------------------------------------------

    def _emit(self, run: LiveRun, kind: str, data: dict[str, Any]) -> None:
        self.pipeline.emit(run.link.channel, kind, data, time.time())

    def _emit_state(self, run: LiveRun, state: str, extra: dict[str, Any] | None = None) -> None:
        run.state = state
        self._emit(run, Kind.STATE, {"state": state, **(extra or {})})

    async def _transition(self, run: LiveRun, state: str, **fields: Any) -> None:
        await self.store.update_run(run.id, state=state, **fields)
        self._emit_state(run, state, {k: v for k, v in fields.items() if k == "pid"})

    async def _finish(self, run: LiveRun, outcome: Outcome) -> None:
        """Record the final state (with error counts) and forget the live run."""
        channel = run.link.channel
        failure = run.link.failure
        if outcome.state == State.FAILED and failure and not outcome.detail.get("stopped_by"):
            outcome = Outcome(
                State.FAILED,
                outcome.exit_code,
                f"cell {failure.get('cell_index')} raised {failure.get('ename')}: "
                f"{failure.get('evalue')}",
                {"cell_index": failure.get("cell_index"), "traceback": failure.get("traceback")},
            )
        reason = channel.redact(outcome.reason) if outcome.reason else None
        self._tidy_run_dir(run)
        if self.on_run_end is not None:
            self.on_run_end(run.task.address)
        counts = {
            "error_count": channel.counts["error"],
            "warning_count": channel.counts["warning"],
        }
        await self.store.update_run(
            run.id,
            state=outcome.state,
            ended_at=time.time(),
            exit_code=outcome.exit_code,
            reason=reason,
            **counts,
        )
        # Drop empty values only: a failing notebook cell 0 is still cell 0.
        detail = {k: v for k, v in outcome.detail.items() if v not in (None, [], "")}
        if "traceback" in detail:
            detail["traceback"] = [channel.redact(line) for line in detail["traceback"]]
        self._emit_state(
            run,
            outcome.state,
            {"exit_code": outcome.exit_code, "reason": reason, **counts, **detail},
        )
        self._live.pop(run.id, None)
        if self._active_by_task.get(run.task.address) is run:
            del self._active_by_task[run.task.address]
        run.finished.set()
        log.info("run finished", run_id=run.id, task=run.task.address, state=outcome.state)

    def _tidy_run_dir(self, run: LiveRun) -> None:
        """Drop an executeFromRoot copy; mask secrets in the executed notebook kept for the user."""
        run_dir = self._run_dir(run)
        shutil.rmtree(run_dir / "root-copy", ignore_errors=True)
        if run.task.kind == "notebook":  # left behind only by a runner that had to be killed
            shutil.rmtree(kernel_dir(run.worker_id), ignore_errors=True)
        output = self._output_path(run)
        if output is not None and output.is_file() and run.link.channel.secrets:
            output.write_text(
                run.link.channel.redact(output.read_text(encoding="utf-8")), encoding="utf-8"
            )

    # -- daemon lifecycle ------------------------------------------------------

    async def reconcile(self) -> int:
        """Mark runs a previous daemon left unfinished as lost; kill their orphans."""
        lost = await self.store.unfinished_runs()
        for record in lost:
            run_id = record["id"]
            reason = f"duftd stopped while the run was {record['state']}"
            worker_id = record["worker_id"]
            orphans = spawn.kill_worker(worker_id) if worker_id else 0
            if orphans:
                reason += f"; {orphans} orphaned worker process(es) killed"
            await self.store.update_run(
                run_id, state=State.LOST, ended_at=time.time(), reason=reason
            )
            channel = RunChannel(run_id, record["task_id"])
            channel.last_seq = await self.store.max_seq(run_id)
            self.pipeline.emit(
                channel, Kind.STATE, {"state": State.LOST, "reason": reason}, time.time()
            )
        return len(lost)

    async def shutdown(self, reason: str = "duftd is shutting down") -> None:
        """Refuse new runs, cancel every live one and wait until each is recorded."""
        self._accepting = False
        for run in list(self._live.values()):
            await self.cancel(run.id, reason)
        runs = [run.finished.wait() for run in self._live.values()]
        if runs:
            await asyncio.gather(*runs)
        for pool in self._spares.values():
            await pool.close()
        await self.pipeline.drained()

    def reload(self, config: LoadedConfig) -> None:
        """Use a new config for new submissions; live runs keep the spec they started with."""
        self.config = config
