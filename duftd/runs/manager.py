"""All runs: submission, the one-active-run-per-task rule, the queue, limits and cancel.

Each run's state changes are written to the store and published as ``state`` events
here, and nowhere else; both go through the pipeline's one writer, the event first, so a
reader that sees a run's final state also finds its final event. The work of one run is
in :mod:`duftd.runs.run`; one :class:`RunSupervisor` per running run does the process work.

Its size is the one-active-run-per-task rule, the queue and every state change of a run,
which must be read together to see that they agree.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from dte_tools import wire
from dte_tools.redact import Redactor
from dte_tools.wire import Kind, State
from duftd import spawn
from duftd.config import (
    LoadedConfig,
    ResolvedParameters,
    TaskSpec,
    resolve_parameters,
    secret_values,
)
from duftd.config_reload import ActiveConfig
from duftd.errors import ShuttingDownError, StorageFullError, UnknownRunError
from duftd.ingest import RunLink
from duftd.pipeline import EventPipeline, RunChannel, is_storage_full
from duftd.runs.launchers import Launcher, LocalLauncher
from duftd.runs.run import LiveRun, LiveRuns, RunPlaces, mask_notebook, run_folder
from duftd.runs.supervisor import Limits, Outcome
from duftd.store import NewRun, Store

log = structlog.get_logger("duftd.runs")

__all__ = ["RunManager", "RunPlaces"]

# Where a run's worker runs, in its `running` state event and its record.
PLACEMENT = ("pid", "dask_worker", "host")
# On stop, how long recording the cancelled runs may take beyond the cancel grace.
SHUTDOWN_RECORD_S = 3.0


@dataclass(eq=False)
class _Waiting:
    """A submitted run waiting for its row: what to store, and what its submitter awaits."""

    new: NewRun
    task: TaskSpec
    config: LoadedConfig
    secrets: tuple[str, ...]
    record: asyncio.Future[dict[str, Any]]


async def _nothing() -> None:
    """A write that writes nothing: awaited, it says every earlier event is stored."""


class RunManager:
    def __init__(
        self,
        store: Store,
        pipeline: EventPipeline,
        config: ActiveConfig,
        places: RunPlaces,
        live: LiveRuns,
        max_concurrent: int,
        cancel_grace_s: float = 5.0,
        spares: bool = True,
        spare_burst_s: float = 0,
        launcher: Launcher | None = None,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self._config = config
        self.places = places
        self.max_concurrent = max_concurrent
        self.cancel_grace_s = cancel_grace_s
        self._live = live
        self._active_by_task: dict[str, LiveRun] = {}
        self._queue: deque[LiveRun] = deque()
        self._submit_locks: dict[str, asyncio.Lock] = {}
        # Submitted runs not yet stored, and the task storing them (_create_waiting).
        self._waiting: list[_Waiting] = []
        self._creator: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._accepting = True
        known_ahead = spawn.worker_environment(
            {
                wire.ENV_CONTROL: places.control,
                wire.ENV_INGEST: places.ingest,
                wire.ENV_CONFIG_DIR: str(config.current.root),
            }
        )
        self.launcher: Launcher = launcher or LocalLauncher(
            pipeline, known_ahead, config.current.root, spares, spare_burst_s
        )

    # -- queries ---------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        """Where ``sqlite3file`` values resolve and tasks write (``get_data_dir()``)."""
        return self.places.data_dir

    def health(self) -> dict[str, Any]:
        """The runs' part of the ``health`` reply: load, limit and the launcher's state."""
        return {
            "data_dir": str(self.places.data_dir),
            "active": len(self._live),
            "queued": len(self._queue),
            "max_concurrent": self.max_concurrent,
            **self.launcher.health(),
        }

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
        if self.pipeline.storage_full:
            raise self._storage_full_error()
        config = self._config.current
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
        """Create the run with the others submitted meanwhile (see _create_waiting); its
        row is committed when this returns."""
        spec = task.model_dump_json(by_alias=True)
        waiting = _Waiting(
            NewRun(task.address, requested_by, resolved.values, resolved.ignored, spec),
            task,
            config,
            secret_values(config, task),
            asyncio.get_running_loop().create_future(),
        )
        self._waiting.append(waiting)
        if self._creator is None:
            self._creator = asyncio.create_task(self._create_waiting(), name="create-runs")
        try:
            record = await waiting.record
        except Exception as error:
            if is_storage_full(error):
                raise self._storage_full_error() from None
            raise
        return record, resolved.ignored, False

    async def _create_waiting(self) -> None:
        """Store the runs waiting to be created, all in one transaction, until none wait.

        Submits that arrive while one batch is being written are written together next:
        a burst costs a commit per batch instead of one per run, and nothing waits for a
        timer. Each run is registered, queued and told to its submitter in id order once
        its row is committed, so the row exists before any event of the run."""
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    records = await self.pipeline.write(
                        lambda batch=batch: self.store.create_runs([w.new for w in batch]),
                        retry=False,
                    )
                    for waiting, record in zip(batch, records, strict=True):
                        self._register(waiting, record)
                        if not waiting.record.done():  # its submitter may be gone; not the run
                            waiting.record.set_result(record)
                    self._pump()
                except Exception as error:
                    # Told to every submitter still waiting (the store's refusal, or a bug in
                    # registering), so that none of the batch waits for ever.
                    if not is_storage_full(error):
                        log.exception("creating submitted runs failed", runs=len(batch))
                    for waiting in batch:
                        if not waiting.record.done():
                            waiting.record.set_exception(error)
        finally:
            self._creator = None

    def _register(self, waiting: _Waiting, record: dict[str, Any]) -> None:
        """A created run becomes live, active for its task, and queued."""
        task, config = waiting.task, waiting.config
        channel = RunChannel(record["id"], task.address, waiting.secrets)
        run = LiveRun(
            id=record["id"],
            task=task,
            config=config,
            params=waiting.new.params,
            link=RunLink(secrets.token_hex(32).encode(), channel),
            folder=run_folder(self.places.state_dir, record["id"]),
        )
        self._live.add(run)
        self._active_by_task[task.address] = run
        self._emit_state(run, State.QUEUED, {"requested_by": waiting.new.requested_by})
        self._queue.append(run)

    def _storage_full_error(self) -> StorageFullError:
        folder = self.store.path.parent
        return StorageFullError(
            f"the state folder {folder} is full: duftd keeps what it holds and stores it once "
            "there is space; free some space there (or lower --retention-days/--retention-runs),"
            " then submit again"
        )

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
            outcome = await self._supervise(run)
        except Exception as error:
            log.exception("run failed inside duftd", run_id=run.id)
            outcome = Outcome(State.FAILED, None, f"duftd error while supervising: {error!r}")
        await asyncio.shield(self._finish(run, outcome))

    async def _supervise(self, run: LiveRun) -> Outcome:
        limits = Limits(run.task.timeout_seconds, self.cancel_grace_s)
        try:
            job = run.job(self.places)
            supervisor = await self.launcher.place(run, limits)
        except OSError as error:
            return Outcome(State.FAILED, None, f"worker did not start: {error}")
        run.worker_id = supervisor.worker_id
        output = run.output_path if self.launcher.keeps_output else None
        try:
            await self._transition(
                run,
                State.STARTING,
                worker_id=run.worker_id,
                output=str(output) if output else None,
            )
        except BaseException:
            supervisor.discard()
            raise
        run.supervisor = supervisor
        if run.cancel_reason:
            supervisor.stop(State.CANCELLED, run.cancel_reason)
        try:
            placement = await supervisor.start(job)
        except OSError as error:
            return Outcome(State.FAILED, None, f"worker did not start: {error}")
        if placement is not None:
            await self._transition(run, State.RUNNING, started_at=time.time(), **placement)
        outcome = await supervisor.wait()
        if supervisor.abandoned_pipes:
            self._emit(
                run,
                Kind.NOTICE,
                {
                    "message": f"{supervisor.abandoned_pipes} output pipe(s) of the run were "
                    "still held open by a process that escaped every kill; reading stopped, "
                    "so anything it wrote afterwards is not stored"
                },
            )
        return outcome

    # -- state -----------------------------------------------------------------

    def _emit(self, run: LiveRun, kind: str, data: dict[str, Any]) -> None:
        self.pipeline.emit(run.link.channel, kind, data, time.time())

    def _emit_state(self, run: LiveRun, state: str, extra: dict[str, Any] | None = None) -> None:
        run.state = state
        self._emit(run, Kind.STATE, {"state": state, **(extra or {})})

    async def _transition(self, run: LiveRun, state: str, **fields: Any) -> None:
        self._emit_state(run, state, {k: v for k, v in fields.items() if k in PLACEMENT})
        await self.pipeline.write(lambda: self.store.update_run(run.id, state=state, **fields))

    async def _finish(self, run: LiveRun, outcome: Outcome) -> None:
        """Record the final state (with error counts and losses) and forget the live run.

        Never raises: whatever fails here is logged, and the run is still forgotten (a
        run whose state could not be recorded is marked lost by the next start)."""
        # No event of the run is taken after its final state (ingest looks runs up here).
        self._live.remove(run)
        try:
            await self._record_final(run, outcome)
        except Exception:
            log.exception("recording a run's final state failed", run_id=run.id)
        finally:
            if self._active_by_task.get(run.task.address) is run:
                del self._active_by_task[run.task.address]
            run.finished.set()
        log.info("run finished", run_id=run.id, task=run.task.address, state=outcome.state)

    async def _record_final(self, run: LiveRun, outcome: Outcome) -> None:
        channel = run.link.channel
        reason = channel.redact(outcome.reason) if outcome.reason else None
        run.tidy()
        await self._config.reload_if_replaced(run.task.address)
        await self.pipeline.write(_nothing)  # the run's events are stored: its losses known
        lost = sum(channel.lost.values())
        if lost:
            why = ", ".join(f"{count} {what}" for what, count in sorted(channel.lost.items()))
            note = f"{lost} event(s) of this run could not be stored ({why})"
            self._emit(run, Kind.NOTICE, {"message": note, "events_lost": lost})
            reason = f"{reason}; {note}" if reason else note
        counts = {
            "error_count": channel.counts["error"],
            "warning_count": channel.counts["warning"],
            "events_lost": lost,
        }
        # Drop empty values only: a failing notebook cell 0 is still cell 0.
        detail = {k: v for k, v in outcome.detail.items() if v not in (None, [], "")}
        if "traceback" in detail:
            detail["traceback"] = [channel.redact(line) for line in detail["traceback"]]
        self._emit_state(
            run,
            outcome.state,
            {"exit_code": outcome.exit_code, "reason": reason, **counts, **detail},
        )
        await self.pipeline.write(
            lambda: self.store.update_run(
                run.id,
                state=outcome.state,
                ended_at=time.time(),
                exit_code=outcome.exit_code,
                reason=reason,
                **counts,
            )
        )

    # -- daemon lifecycle ------------------------------------------------------

    async def reconcile(self) -> int:
        """Mark runs a previous daemon left unfinished as lost; kill their orphans and mask
        secrets in a notebook an orphaned runner left."""
        lost = await self.store.unfinished_runs()
        for record in lost:
            run_id = record["id"]
            reason = f"duftd stopped while the run was {record['state']}"
            worker_id = record["worker_id"]
            orphans = spawn.kill_worker(worker_id) if worker_id else 0
            if orphans:
                reason += f"; {orphans} orphaned worker process(es) killed"
            secrets = self._secrets_of(record["task_id"])
            if record["output"]:  # an orphaned runner may have written it unmasked
                mask_notebook(Path(record["output"]), Redactor(secrets))
            channel = RunChannel(run_id, record["task_id"], secrets)
            channel.last_seq = await self.store.max_seq(run_id)
            self.pipeline.emit(
                channel, Kind.STATE, {"state": State.LOST, "reason": reason}, time.time()
            )
            await self.pipeline.write(
                lambda run_id=run_id, reason=reason: self.store.update_run(
                    run_id, state=State.LOST, ended_at=time.time(), reason=reason
                )
            )
        return len(lost)

    def _secrets_of(self, address: str) -> tuple[str, ...]:
        """The secrets a task's runs see under the current config (none if it is gone)."""
        config = self._config.current
        task = config.tasks.get(address)
        return secret_values(config, task) if task is not None else ()

    async def shutdown(self, reason: str = "duftd is shutting down") -> None:
        """Refuse new runs, cancel every live one and wait until each is recorded."""
        self._accepting = False
        try:
            await asyncio.wait_for(self._stop_all(reason), self.cancel_grace_s + SHUTDOWN_RECORD_S)
        except TimeoutError:
            log.error("stopping without recording every run: the store cannot take it now")
        await self.launcher.close()

    async def _stop_all(self, reason: str) -> None:
        for run in self._live.all():
            await self.cancel(run.id, reason)
        runs = [run.finished.wait() for run in self._live.all()]
        await asyncio.gather(*runs, self.pipeline.drained())
