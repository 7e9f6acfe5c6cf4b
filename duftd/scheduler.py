"""The scheduler: runs ``scheduledDataTasks`` at their cron times, in local time.

One asyncio loop, started by :meth:`duftd.server.Daemon.start`, sleeps until the
earliest next firing and submits that schedule's task through the run manager, with
its default parameters and ``requested_by="schedule:<key>"``. Parsing and the calendar
are in :mod:`duftd.config.schedule` (croniter, and why).

- No backlog: next firings are counted from when the scheduler starts or reloads, and
  after a late wake-up from now, so firings missed while duftd was stopped or busy are
  not made up in a burst.
- A firing while the task's previous run is still queued or running is skipped, never
  queued twice: the manager answers with the active run (``joined``) and the skip is
  recorded on that run as a ``notice`` event ``{"message", "schedule", "skipped": true}``.
- :meth:`Scheduler.reload` takes a new config (the ``reload`` operation calls it); a
  schedule whose key, task and cron are unchanged keeps its next firing.
- The loop never dies of one schedule's failure: a refused submit (unknown task, a task
  that cannot run) is logged and shown as the schedule's last outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from dte_tools.wire import Kind
from duftd.config import LoadedConfig, ScheduledTask
from duftd.config.schedule import firing, local_timezone, next_firings, utc_offset
from duftd.errors import DuftError, ShuttingDownError

if TYPE_CHECKING:
    from duftd.config_reload import ActiveConfig
    from duftd.pipeline import EventPipeline
    from duftd.runs.manager import RunManager
    from duftd.runs.run import LiveRuns

log = structlog.get_logger("duftd.scheduler")

# Longest single sleep: the wall clock is looked at again at least this often, so a
# clock set forward (NTP, a laptop waking up) delays a firing by at most this much.
MAX_SLEEP_S = 30.0


def requested_by(key: str) -> str:
    """The ``requested_by`` of a run a schedule started."""
    return f"schedule:{key}"


def describe_schedules(config: LoadedConfig, count: int = 3) -> dict[str, Any]:
    """What the ``schedules`` operation returns, from a config alone (no live state)."""
    return _description(
        ((key, item, None) for key, item in config.user.scheduled_data_tasks.items()), count
    )


def _description(entries: Iterable[tuple[str, Any, Any]], count: int) -> dict[str, Any]:
    """Each (key, schedule, last outcome) with its next ``count`` firings, in local time."""
    now = datetime.now().astimezone()
    return {
        "timezone": local_timezone(),
        "utc_offset": utc_offset(now),
        "now": firing(now),
        "schedules": [_summary(key, item, now, count, last) for key, item, last in entries],
    }


def _summary(
    key: str, item: ScheduledTask, now: datetime, count: int, last: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "key": key,
        "task": item.task,
        "description": item.description,
        "cron": item.cron,
        "next": [firing(moment) for moment in next_firings(item.cron, now, count)],
        "last": last,
    }


@dataclass(eq=False)
class _Entry:
    key: str
    item: ScheduledTask
    next_at: datetime  # aware, local
    last: dict[str, Any] | None = None  # the latest firing: when, outcome, run


class Scheduler:
    """Fires every schedule of the current config; :meth:`run` is the daemon's loop."""

    def __init__(
        self,
        manager: RunManager,
        live: LiveRuns,
        pipeline: EventPipeline,
        config: ActiveConfig,
    ) -> None:
        self._manager = manager
        self._live = live
        self._pipeline = pipeline
        self._config = config
        self._entries: dict[str, _Entry] = {}
        self._planned_from: LoadedConfig | None = None
        self._wake = config.watch()  # set on every config swap
        self._replan_if_swapped()

    def _replan_if_swapped(self) -> None:
        """Use the schedules of the config in force from now on (only future firings count)."""
        config = self._config.current
        if config is self._planned_from:
            return
        self._planned_from = config
        now = datetime.now().astimezone()
        entries: dict[str, _Entry] = {}
        for key, item in config.user.scheduled_data_tasks.items():
            if not item.cron:
                continue  # the loader reported why
            old = self._entries.get(key)
            same = old is not None and (old.item.task, old.item.cron) == (item.task, item.cron)
            if old is not None and same and old.next_at > now:
                entries[key] = _Entry(key, item, old.next_at, old.last)
            else:
                entries[key] = _Entry(key, item, next_firings(item.cron, now, 1)[0])
        self._entries = entries
        log.info("schedules loaded", schedules=len(entries), timezone=local_timezone())

    def describe(self, count: int = 3) -> dict[str, Any]:
        """Every schedule with its next ``count`` firings and its last outcome."""
        self._replan_if_swapped()
        return _description(((e.key, e.item, e.last) for e in self._entries.values()), count)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            self._replan_if_swapped()
            due = [e for e in self._entries.values() if e.next_at.timestamp() <= time.time()]
            for entry in sorted(due, key=lambda e: e.next_at):
                try:
                    await self._fire(entry)
                except ShuttingDownError:
                    return
                except Exception:  # one schedule's bug must not stop the others
                    log.exception("scheduled firing failed", schedule=entry.key)
                # Strictly after now: firings missed by a late wake-up are not made up.
                entry.next_at = next_firings(entry.item.cron, datetime.now().astimezone(), 1)[0]
            soonest = min((e.next_at.timestamp() for e in self._entries.values()), default=None)
            delay = MAX_SLEEP_S if soonest is None else soonest - time.time()
            if delay > 0:
                # asyncio.timeout, not wait_for: under Python 3.11 wait_for can swallow a
                # cancel that comes as the event fires, and stopping would never end.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(delay, MAX_SLEEP_S)):
                        await self._wake.wait()

    async def _fire(self, entry: _Entry) -> None:
        key, task, due = entry.key, entry.item.task, entry.next_at
        outcome: dict[str, Any] = {"due": firing(due), "fired": firing(datetime.now().astimezone())}
        # Known from now on: a client that sees the run before submit returns sees its firing.
        entry.last = {**outcome, "outcome": "firing"}
        try:
            run, _, joined = await self._manager.submit(task, {}, requested_by(key))
        except ShuttingDownError:
            raise
        except DuftError as error:
            entry.last = {**outcome, "outcome": "error", "message": str(error)}
            log.warning("scheduled task not started", schedule=key, task=task, error=str(error))
            return
        entry.last = {**outcome, "outcome": "skipped" if joined else "started", "run": run["id"]}
        if not joined:
            log.info("scheduled run started", schedule=key, task=task, run_id=run["id"])
            return
        message = (
            f"schedule {key}: the firing due at {due.isoformat()} was skipped because this "
            f"run of {run['task_id']} was still {run['state']}"
        )
        live = self._live.get(run["id"])
        if live is not None:  # else it ended meanwhile: its final state stays its last event
            data = {"message": message, "schedule": key, "skipped": True}
            self._pipeline.emit(live.link.channel, Kind.NOTICE, data, time.time())
        log.info("scheduled firing skipped", schedule=key, task=task, active_run=run["id"])
