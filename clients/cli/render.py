"""How the ``duft`` CLI shows things: event lines, tables, and a live progress bar."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from dte_tools.wire import Kind

LEVEL_STYLES = {"error": "bold red", "warning": "yellow", "info": ""}
STATE_STYLES = {"succeeded": "green", "failed": "bold red", "cancelled": "yellow", "lost": "red"}

console = Console(highlight=False, soft_wrap=True)


def clock(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else "-"


def stamp(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def event_line(event: dict[str, Any]) -> tuple[str, str]:
    """One event as (text, rich style)."""
    kind, data = event["kind"], event["data"]
    when = clock(event["ts"])
    if kind == Kind.LOG:
        level = data.get("level", "info")
        return f"{when} {level.upper():<7} {data.get('message', '')}", LEVEL_STYLES.get(level, "")
    if kind in (Kind.STDOUT, Kind.STDERR):
        return f"{when} {kind:<7} {data.get('text', '')}", "dim" if kind == Kind.STDOUT else "red"
    if kind == Kind.PROGRESS:
        message = data.get("message") or ""
        return f"{when} {'progress':<7} {data.get('done')}/{data.get('total')} {message}", "cyan"
    if kind == Kind.STATE:
        state = data.get("state", "")
        extra = ""
        if data.get("exit_code") is not None:
            extra += f" (exit code {data['exit_code']})"
        if data.get("error_count"):
            extra += f", {data['error_count']} error(s) logged"
        if data.get("events_lost"):
            extra += f", {data['events_lost']} event(s) lost"
        if data.get("reason"):
            extra += f"\n{data['reason']}"
        return f"{when} {'state':<7} {state}{extra}", STATE_STYLES.get(state, "bold")
    if kind == Kind.CELL:
        phase = data.get("phase", "")
        return f"{when} {'cell':<7} {phase} {data.get('number')}/{data.get('count')}", "dim"
    return f"{when} {kind:<7} {json.dumps(data)}", ""


def print_events(events: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """Print events as lines; returns the last one."""
    last = None
    for event in events:
        text, style = event_line(event)
        console.print(text, style=style, markup=False)
        last = event
    return last


def follow_with_progress(events: Iterator[dict[str, Any]]) -> dict[str, Any] | None:
    """Print events as they come under a progress bar (plain lines when not a terminal)."""
    if not sys.stdout.isatty():
        return print_events(events)
    last = None
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("running", total=None)
        for event in events:
            last = event
            if event["kind"] == Kind.PROGRESS:
                data = event["data"]
                description = (data.get("message") or "running")[:40]
                progress.update(
                    bar,
                    completed=data["done"],
                    total=data["total"] or None,
                    description=description,
                )
                continue
            text, style = event_line(event)
            progress.console.print(text, style=style, markup=False)
    return last


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """Plain aligned columns: (key, heading) pairs."""
    if not rows:
        console.print("(none)")
        return
    cells = [
        [str(row.get(key, "") if row.get(key) is not None else "-") for key, _ in columns]
        for row in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(columns)]
    console.print(
        "  ".join(h.ljust(w) for (_, h), w in zip(columns, widths, strict=True)),
        style="bold",
        markup=False,
    )
    for line in cells:
        console.print(
            "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(), markup=False
        )


def as_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))
