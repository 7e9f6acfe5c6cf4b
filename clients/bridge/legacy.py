"""The data-task endpoints DUFT's web UI calls, so that UI can point at the bridge unchanged.

- ``POST /api/v2/run-data-task`` (and ``POST /run-data-task``, what older UIs call) with
  ``{"data_task_id", "parameters"}`` -> ``202`` and ``{"message": "Script started
  successfully", "data_task_id", "run_id", "joined", "ignored"}``. DUFT's UI checks for a
  202 (older versions) or reads ``message``; on an error it shows the top-level
  ``message`` (our ``code`` is beside it). A task the navigation lists but that does
  not exist, or cannot run, gets a message that says so. Needs ``run_data_task``.
- ``GET /api/v2/dte-status`` -> ``{"is_running": bool, "current_script": task id | null}``
  (the newest run that is starting or running).
- ``GET /sse/dte/`` -> SSE frames ``{"isRunning", "message", "dataTask"}`` of every run,
  live. On connect, the current state: for each active run a frame naming it (with a
  ``script_start`` marker first when it is running), or one "No data task is running"
  frame. Then ``dataTask`` is ``"script_start"`` when a run's process is running,
  ``"script_complete"`` when it succeeds, ``"scriptError"`` when it fails, is cancelled
  or lost (after a visible line "<task> failed: <reason>"); and the task id for each line
  of its log, stdout or stderr (DUFT's UI shows a frame's ``message`` only when
  ``dataTask`` is set, is none of the three markers, and is at most 150 characters).
  ``isRunning`` says whether any run is still active after that event.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from clients.bridge.accounts import RUN_DATA_TASK
from clients.bridge.async_bus import AsyncBus, DaemonRefused, DaemonUnavailable
from clients.bridge.auth import require
from clients.bridge.duft_api import CONFIG_FILES
from clients.bridge.sse import LiveFeed, frame, tracked_stream
from clients.bridge.web_io import HttpError, bus_of, json_body
from dte_tools.wire import ACTIVE_STATES, FINAL_STATES, ErrorCode, Kind, Op, State

REQUESTED_BY = "duft-ui"
STARTED = "Script started successfully"
MAX_SHOWN = 150  # DUFT's UI drops longer messages


def add_routes(routes: web.UrlDispatcher) -> None:
    for path in ("/api/v2/run-data-task", "/run-data-task"):
        routes.add_post(path, run_data_task)
        routes.add_post(path + "/", run_data_task)
    routes.add_get("/api/v2/dte-status", dte_status)
    routes.add_get("/api/v2/dte-status/", dte_status)
    routes.add_get("/sse/dte/", dte_events)
    routes.add_get("/sse/dte", dte_events)


async def run_data_task(request: web.Request) -> web.Response:
    require(request, RUN_DATA_TASK)
    body = await json_body(request)
    task = body.get("data_task_id") if isinstance(body, dict) else None
    if not isinstance(task, str) or not task:
        raise HttpError(
            400, ErrorCode.BAD_REQUEST, 'send {"data_task_id": "<task id>", "parameters": {}}'
        )
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise HttpError(400, ErrorCode.BAD_REQUEST, "parameters must be a JSON object")
    try:
        result = await bus_of(request).request(
            Op.SUBMIT, task=task, params=params, requested_by=REQUESTED_BY
        )
    except DaemonRefused as error:
        if error.code == ErrorCode.UNKNOWN_TASK and await _in_navigation(request, task):
            raise DaemonRefused(
                error.code,
                f"{task} is listed in navigation.json's data tasks, but no data task has "
                f"that id: {error.message}",
            ) from None
        raise
    run = result["run"]
    message = STARTED
    if result["joined"]:
        message += f" (run {run['id']} of {task} was already active; following it)"
    return web.json_response(
        {
            "message": message,
            "data_task_id": run["task_id"],
            "run_id": run["id"],
            "joined": result["joined"],
            "ignored": result["ignored"],
        },
        status=202,
    )


async def _in_navigation(request: web.Request, task: str) -> bool:
    files = request.app[CONFIG_FILES]
    navigation = files.navigation(await files.root(), None) or {}
    items = (navigation.get("dataTasks") or {}).get("items") or []
    return any(isinstance(item, dict) and item.get("task") == task for item in items)


async def dte_status(request: web.Request) -> web.Response:
    bus = bus_of(request)
    for state in (State.RUNNING, State.STARTING):
        runs = (await bus.request(Op.RUNS, state=state, limit=1))["runs"]
        if runs:
            return web.json_response({"is_running": True, "current_script": runs[0]["task_id"]})
    return web.json_response({"is_running": False, "current_script": None})


async def dte_events(request: web.Request) -> web.StreamResponse:
    bus = bus_of(request)
    frames = DteFrames()
    feed = LiveFeed(bus).events(first=lambda: _snapshot(bus))
    return await tracked_stream(request, feed, frames.frames)


@dataclass(frozen=True)
class Snapshot:
    """The active runs when a client connected (None: duftd was not reachable)."""

    runs: list[dict[str, Any]] | None


async def _snapshot(bus: AsyncBus) -> Snapshot:
    """The active runs now (read after the feed has subscribed, so nothing is missed)."""
    runs: list[dict[str, Any]] = []
    try:
        for state in sorted(ACTIVE_STATES):
            runs += (await bus.request(Op.RUNS, state=state, limit=1000))["runs"]
    except DaemonUnavailable:
        return Snapshot(None)  # the stream still opens; runs become known from their events
    return Snapshot(runs)


class DteFrames:
    """Turns duftd events into the frames of DUFT's ``/sse/dte/`` stream."""

    def __init__(self) -> None:
        self.active: set[int] = set()

    def frames(self, event: dict[str, Any] | Snapshot) -> list[bytes]:
        if isinstance(event, Snapshot):
            return self._snapshot(event.runs)
        kind, data, run_id, task = event["kind"], event["data"], event["run_id"], event["task_id"]
        if kind == Kind.STATE:
            return self._state(data, run_id, task)
        if kind == Kind.LOG:
            lines = str(data.get("message", "")).splitlines()
        elif kind in (Kind.STDOUT, Kind.STDERR):
            lines = str(data.get("text", "")).splitlines()
        else:
            return []
        self.active.add(run_id)
        return [self._frame(line, task) for line in lines if line.strip()]

    def _state(self, data: dict[str, Any], run_id: int, task: str) -> list[bytes]:
        state = data.get("state")
        if state in ACTIVE_STATES:
            self.active.add(run_id)
            if state == State.RUNNING:
                return [self._frame(f"{task}: started (run {run_id})", "script_start")]
            return []
        if state not in FINAL_STATES:
            return []
        self.active.discard(run_id)
        if state == State.SUCCEEDED:
            errors = int(data.get("error_count") or 0)
            outcome = f"finished with {errors} error(s)" if errors else "completed"
            if data.get("events_lost"):
                outcome += f", {data['events_lost']} event(s) lost"
            return [self._frame(f"{task}: {outcome} (run {run_id})", "script_complete")]
        reason = data.get("reason") or (
            f"exit code {data['exit_code']}" if data.get("exit_code") is not None else state
        )
        verb = "failed" if state == State.FAILED else state
        return [
            self._frame(f"{task} {verb}: {reason}", task),
            self._frame(f"{task}: {state} (run {run_id}): {reason}", "scriptError"),
        ]

    def _snapshot(self, runs: list[dict[str, Any]] | None) -> list[bytes]:
        if runs is None:
            return [self._frame("duftd is not reachable yet", None)]
        self.active.update(run["id"] for run in runs)
        if not runs:
            return [self._frame("No data task is running", None)]
        frames = []
        for run in sorted(runs, key=lambda run: run["id"]):
            task, run_id, state = run["task_id"], run["id"], run["state"]
            if state == State.RUNNING:
                frames.append(self._frame(f"{task}: started (run {run_id})", "script_start"))
                since = time.strftime("%H:%M:%S", time.localtime(run.get("started_at") or 0))
                frames.append(self._frame(f"{task} is running (run {run_id}, since {since})", task))
            else:
                frames.append(self._frame(f"{task} is {state} (run {run_id})", task))
        return frames

    def _frame(self, message: str, data_task: str | None) -> bytes:
        if len(message) > MAX_SHOWN:
            message = message[: MAX_SHOWN - 1] + "…"
        return frame({"isRunning": bool(self.active), "message": message, "dataTask": data_task})
