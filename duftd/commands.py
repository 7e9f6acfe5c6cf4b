"""One handler per control operation; each docstring is that operation's wire contract.

Each handler is registered with ``@operation(name)``; its ``args`` annotation is the
model its arguments are checked against (:mod:`duftd.protocol`) before it runs. It
returns the reply's ``result`` object, or raises a :class:`DuftError`.
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from typing import Any

from dte_tools import locate
from dte_tools.wire import FINAL_STATES, PROTOCOL_VERSION, Kind, Op
from duftd import __version__, connections
from duftd.cluster.launcher import DaskRun
from duftd.config import (
    LoadedConfig,
    TaskSpec,
    resolve_connection,
    strict_connections,
)
from duftd.config_reload import ActiveConfig
from duftd.control import Caller
from duftd.errors import UnauthorizedError
from duftd.ingest import Ingest
from duftd.pipeline import EventPipeline
from duftd.protocol import (
    ClaimArgs,
    ConnectionArgs,
    ConnectionTestArgs,
    EventsArgs,
    NoArgs,
    Operation,
    RemoteEventsArgs,
    RunArgs,
    RunsArgs,
    SchedulesArgs,
    SubmitArgs,
    TaskArgs,
    TasksArgs,
    operation,
    operation_table,
)
from duftd.runs.manager import LiveRun, RunManager
from duftd.scheduler import Scheduler
from duftd.store import Store


def task_summary(task: TaskSpec, config: LoadedConfig) -> dict[str, Any]:
    """How a task is shown to clients: never a connection's values."""
    return {
        "id": task.address,
        "name": task.name or task.id,
        "description": task.description,
        "app": task.app,
        "kind": task.kind,
        "file": task.python_file,
        "hidden": task.hide_in_ui,
        "runnable": task.runnable,
        "problems": task.problems,
        "connections": task.data_connections,
        "timeout_seconds": task.timeout_seconds,
        "parameters": {
            name: {
                "title": spec.title,
                "description": spec.description,
                "default": spec.default_value,
                "has_default": spec.has_default,
                "allow_override": spec.allow_override,
                "prompt_user": spec.prompt_user,
            }
            for name, spec in task.supported_parameters.items()
        },
    }


class Commands:
    def __init__(
        self,
        manager: RunManager,
        config: ActiveConfig,
        store: Store,
        pipeline: EventPipeline,
        ingest: Ingest,
        scheduler: Scheduler,
        started_at: float,
        strict_connections: bool = False,
    ) -> None:
        self._manager = manager
        self._config = config
        self._store = store
        self._pipeline = pipeline
        self._ingest = ingest
        self._started_at = started_at
        self._scheduler = scheduler
        self._strict_connections = strict_connections
        # Undeclared connections each live run was already warned about (once per run).
        self._warned: weakref.WeakKeyDictionary[LiveRun, set[str]] = weakref.WeakKeyDictionary()

    def operations(self) -> dict[str, Operation]:
        return operation_table(self)

    @operation(Op.HEALTH)
    async def health(self, caller: Caller, args: NoArgs) -> dict[str, Any]:
        """-> {version, protocol, pid, uptime_s, config, data_dir, runs: {state: n}, active, queued,
        dropped: {reason: n}, storage_full: bool, launcher, ...}; ``storage_full`` while the
        state folder's disk is full (events are held, submits refused, until space returns);
        with ``launcher: local`` also ``spares: {script, notebook}`` (warm workers waiting)
        and ``script_fork_server``; with ``launcher: dask`` also ``scheduler``, ``connected``,
        ``workers``, ``error``."""
        return {
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self._started_at, 3),
            "config": str(self._config.current.root),
            "runs": await self._store.counts_by_state(),
            "dropped": dict(self._ingest.dropped),
            "storage_full": self._pipeline.storage_full,
            **self._manager.health(),
        }

    @operation(Op.TASKS)
    async def tasks(self, caller: Caller, args: TasksArgs) -> dict[str, Any]:
        """{all?: bool} -> {tasks: [task]}; tasks with ``hideInUI`` only when ``all``."""
        config = self._config.current
        return {
            "tasks": [
                task_summary(task, config)
                for task in config.tasks.values()
                if args.all or not task.hide_in_ui
            ]
        }

    @operation(Op.TASK)
    async def task(self, caller: Caller, args: TaskArgs) -> dict[str, Any]:
        """{task: address} -> {task}; unknown_task / ambiguous_task errors."""
        config = self._config.current
        return {"task": task_summary(config.task(args.task), config)}

    @operation(Op.SUBMIT)
    async def submit(self, caller: Caller, args: SubmitArgs) -> dict[str, Any]:
        """{task, params?, requested_by?} -> {run, ignored: {name: why}, joined: bool}.

        ``joined`` is true when the task already had a queued or running run: that run
        is returned and no second one starts.
        """
        run, ignored, joined = await self._manager.submit(args.task, args.params, args.requested_by)
        return {"run": run, "ignored": ignored, "joined": joined}

    @operation(Op.CANCEL)
    async def cancel(self, caller: Caller, args: RunArgs) -> dict[str, Any]:
        """{run} -> {run}; cancelling a finished run changes nothing."""
        return {"run": await self._manager.cancel(args.run)}

    @operation(Op.RUN)
    async def run(self, caller: Caller, args: RunArgs) -> dict[str, Any]:
        """{run} -> {run}; unknown_run error."""
        return {"run": await self._manager.get_run(args.run)}

    @operation(Op.RUNS)
    async def runs(self, caller: Caller, args: RunsArgs) -> dict[str, Any]:
        """{task?, state?, limit?=50} -> {runs: [run]}, newest first."""
        store = self._store
        return {"runs": await store.list_runs(args.task, args.state, args.limit)}

    @operation(Op.EVENTS)
    async def events(self, caller: Caller, args: EventsArgs) -> dict[str, Any]:
        """{run, after?=0, limit?=1000} -> {run, events: [{seq, ts, kind, data}], more, final}.

        ``more`` says another page follows; ``final`` that the run has ended and
        ``events`` reach its last one, its final state event. (A run's final state event
        is committed before its row says it is final, and the row is read first.)
        """
        manager = self._manager
        run = await manager.get_run(args.run)
        events = await self._store.events_after(args.run, args.after, args.limit + 1)
        more = len(events) > args.limit
        events = events[: args.limit]
        final = run["state"] in FINAL_STATES and not more
        return {"run": run, "events": events, "more": more, "final": final}

    @operation(Op.RELOAD)
    async def reload(self, caller: Caller, args: NoArgs) -> dict[str, Any]:
        """-> {config, tasks, runnable, errors, warnings}; live runs keep their spec."""
        config = await self._config.reload()
        severities = [d.severity for d in config.diagnostics]
        return {
            "config": str(config.root),
            "tasks": len(config.tasks),
            "runnable": sum(task.runnable for task in config.tasks.values()),
            "errors": severities.count("error"),
            "warnings": severities.count("warning"),
        }

    @operation(Op.SCHEDULES)
    async def schedules(self, caller: Caller, args: SchedulesArgs) -> dict[str, Any]:
        """{count?=3} -> {timezone, utc_offset, now: {iso, ts}, schedules: [{key, task,
        description, cron, next: [{iso, ts}], last: {due, fired, outcome, run?, message?}
        | null}]}; times are the machine's local time, cron has seconds first."""
        return self._scheduler.describe(args.count)

    @operation(Op.TEST_CONNECTION)
    async def test_connection(self, caller: Caller, args: ConnectionTestArgs) -> dict[str, Any]:
        """{id, timeout_s?=10} -> {id, type, target, query, ok, seconds, message, result}.

        Connects with the user's values as duftd has them loaded and runs the
        connection's testquery (or SELECT 1). A failure is ``ok: false`` with the
        driver's message; secrets are masked everywhere. unknown_connection when the id
        is neither declared nor has values.
        """
        target = connections.find_target(self._config.current, args.id, self._manager.data_dir)
        try:
            result = await asyncio.wait_for(
                asyncio.to_thread(connections.run_test, target, args.timeout_s),
                args.timeout_s + 5.0,  # the drivers' own timeouts should end it first
            )
        except TimeoutError:
            result = connections.timed_out(target, args.timeout_s + 5.0)
        return result.to_dict()

    @operation(Op.WORKER_HELLO)
    async def worker_hello(self, caller: Caller, args: NoArgs) -> dict[str, Any]:
        """(worker) -> {run_id, task_id, task_name, params, connections, config_dir,
        data_dir, temp_dir}: what a worker needs to start, never a connection's values."""
        run = _worker_run(caller)
        data_dir = run.data_dir or self._manager.data_dir
        return {
            "run_id": run.id,
            "task_id": run.task.address,
            "task_name": run.task.name,
            "params": run.params,
            "connections": run.task.data_connections,
            "config_dir": str(run.config.root),
            "data_dir": str(data_dir),
            "temp_dir": str(locate.temp_dir(data_dir)),
        }

    @operation(Op.WORKER_CONNECTION)
    async def worker_connection(self, caller: Caller, args: ConnectionArgs) -> dict[str, Any]:
        """(worker) {id} -> {values}: the user's values of a connection. One the task does
        not declare is handed over with a warning on the run, as DUFT does, unless strict
        (``--strict-connections`` or the config's ``strictConnections`` setting) refuses it."""
        run = _worker_run(caller)
        strict = self._strict_connections or strict_connections(run.config)
        values = resolve_connection(run.config, run.task, args.id, strict)
        warned = self._warned.setdefault(run, set())
        if args.id not in run.task.data_connections and args.id not in warned:
            warned.add(args.id)
            message = (
                f"task {run.task.address} read connection {args.id}, which its "
                f"dataConnections do not list; add it in {run.task.source_file}"
            )
            self._pipeline.emit(
                run.link.channel, Kind.LOG, {"level": "warning", "message": message}, time.time()
            )
        return {"values": values}

    @operation(Op.WORKER_CLAIM)
    async def worker_claim(self, caller: Caller, args: ClaimArgs) -> dict[str, Any]:
        """(relay) {worker, host, data_dir} -> {}: a run placed on a Dask worker starts
        there once; another start of it (Dask rescheduling it) is refused."""
        return _placed_run(caller).claim(args)

    @operation(Op.WORKER_EVENTS)
    async def worker_events(self, caller: Caller, args: RemoteEventsArgs) -> dict[str, Any]:
        """(relay) {batch, events, lost, last} -> {stop}, once the events are stored."""
        return await _placed_run(caller).receive(args)


def _placed_run(caller: Caller) -> DaskRun:
    run = _worker_run(caller)
    if not isinstance(run.supervisor, DaskRun):
        raise UnauthorizedError(f"run {run.id} is not placed on a Dask cluster")
    return run.supervisor


def _worker_run(caller: Caller):
    if caller.run is None:
        raise UnauthorizedError("only a worker, signing with its run token, may ask this")
    return caller.run
