"""Cron schedules of ``scheduledDataTasks``: parsing and next firing times, in local time.

DUFT writes a schedule as ``{"cron": {"second", "minute", "hour", "day_of_month",
"month", "day_of_week"}}``, each field a cron field (``*``, ``*/n``, ``1,15``, ``1-5``,
names like ``mon-fri``). The fields are joined, seconds first, into a six-field
expression (``"*/30 * * * * *"``) and handed to croniter.

Why croniter: it is the maintained, widely used pure-Python cron parser, it supports a
seconds field (DUFT schedules use one) and it does the calendar arithmetic (month
lengths, day-of-month *or* day-of-week as cron defines it). A hand-written matcher would
get those edge cases wrong; APScheduler would bring a second scheduler and its own loop
when duftd only needs "when is the next firing".

Decisions where DUFT is silent:

- A missing ``second`` means ``0`` (a schedule with only ``minute: "*/5"`` fires once
  per five minutes, not every second of them); any other missing field means ``*``.
- ``cron`` may also be the expression itself as text: five fields (standard cron,
  firing at second 0) or six (seconds first, as shown by ``duft schedules``).
- ``day_of_week`` follows cron: 0 or 7 is Sunday, 1 is Monday; names work too.
- Times are the machine's local time zone, computed on local wall-clock times, so a
  daily 02:00 run stays at 02:00 across a daylight-saving change.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from croniter import croniter

FIELDS = ("second", "minute", "hour", "day_of_month", "month", "day_of_week")
DEFAULTS = {"second": "0"}


class ScheduleError(ValueError):
    """A schedule that cannot be turned into firing times; the message says why."""


def cron_text(schedule: dict[str, Any]) -> str:
    """The six-field cron expression (seconds first) of a ``schedule`` object."""
    cron = schedule.get("cron")
    if isinstance(cron, str):
        fields = cron.split()
        if len(fields) == 5:
            fields = ["0", *fields]
        if len(fields) != 6:
            raise ScheduleError(
                f"cron {cron!r} has {len(fields)} fields; write 5 (minute hour day month "
                "weekday) or 6 (second first)"
            )
    elif isinstance(cron, dict):
        unknown = sorted(set(cron) - set(FIELDS))
        if unknown:
            raise ScheduleError(
                f"unknown cron field(s) {', '.join(unknown)}; the fields are {', '.join(FIELDS)}"
            )
        fields = []
        for name in FIELDS:
            value = cron.get(name, DEFAULTS.get(name, "*"))
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise ScheduleError(f"cron field {name} must be text like '*/5', not {value!r}")
            text = str(value).strip()
            if not text or any(c.isspace() for c in text):
                raise ScheduleError(f"cron field {name} {value!r} must be one field, no spaces")
            fields.append(text)
    else:
        raise ScheduleError(
            'schedule needs "cron": an object with second, minute, hour, day_of_month, '
            'month, day_of_week, or a cron expression such as "0 */5 * * * *"'
        )
    expression = " ".join(fields)
    next_firings(expression, datetime(2026, 1, 1), 1)  # raises for a field or date that never fits
    return expression


def next_firings(expression: str, after: datetime | None = None, count: int = 3) -> list[datetime]:
    """The next ``count`` firings strictly after ``after`` (default now), as aware local times.

    ``after`` may be naive local time or aware; computing happens on naive local wall
    time (see the module docstring), then each result gets its own UTC offset.
    """
    start = after or datetime.now()
    if start.tzinfo is not None:
        start = start.astimezone().replace(tzinfo=None)
    try:
        it = croniter(expression, start, second_at_beginning=True)
        return [it.get_next(datetime).astimezone() for _ in range(count)]
    except Exception as error:  # croniter's errors have no common public base
        raise ScheduleError(f"cron {expression!r} is not valid: {error}") from None


def firing(moment: datetime) -> dict[str, Any]:
    """A firing time as shown to clients: ISO text with its offset, and Unix time."""
    return {"iso": moment.isoformat(), "ts": moment.timestamp()}


def local_timezone() -> str:
    """The machine's time zone, by IANA name when it can be found (``Africa/Nairobi``)."""
    name = os.environ.get("TZ", "").lstrip(":")
    if not name:
        try:
            name = Path("/etc/timezone").read_text(encoding="utf-8").strip()
        except OSError:
            name = ""
    if not name:
        try:
            target = str(Path("/etc/localtime").resolve())
            name = target.split("zoneinfo/", 1)[1] if "zoneinfo/" in target else ""
        except OSError:
            name = ""
    return name or time.tzname[time.localtime().tm_isdst > 0]


def utc_offset(moment: datetime | None = None) -> str:
    """``+03:00``: the local offset from UTC now (or at ``moment``)."""
    text = (moment or datetime.now().astimezone()).strftime("%z")
    return f"{text[:3]}:{text[3:]}"
