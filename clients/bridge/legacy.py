"""The endpoints today's DUFT web UI calls, so that UI can point at the bridge unchanged.

- ``POST /run-data-task`` with ``{"data_task_id", "parameters"}`` -> ``202`` and
  ``{"message": "Script started successfully", "data_task_id", "run_id", "joined",
  "ignored"}``. DUFT's UI checks for a 202 (older versions) or reads ``message``. It posts
  ``application/json`` (possibly with a charset), which the content-type check accepts.
- ``GET /api/v2/dte-status`` -> ``{"is_running": bool, "current_script": task id | null}``
  (the newest run that is starting or running).
- ``GET /sse/dte/`` -> SSE frames ``{"isRunning", "message", "dataTask"}`` of every run,
  live: ``dataTask`` is ``"script_start"`` when a run's process is running,
  ``"script_complete"`` when it succeeds, ``"scriptError"`` when it fails, is cancelled
  or lost; and the task id for each line of its log, stdout or stderr (DUFT's UI shows
  a frame's ``message`` only when ``dataTask`` is set and is none of the three markers).
  ``isRunning`` says whether any run is still active after that event.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from clients.bridge.async_bus import DaemonUnavailable
from clients.bridge.sse import LiveFeed, frame, only, tracked_stream
from clients.bridge.web_io import HttpError, bus_of, json_body
from dte_tools.wire import ACTIVE_STATES, FINAL_STATES, Kind, Op, State

REQUESTED_BY = "duft-ui"
STARTED = "Script started successfully"


def add_routes(routes: web.UrlDispatcher) -> None:
    routes.add_post("/run-data-task", run_data_task)
    routes.add_post("/run-data-task/", run_data_task)
    routes.add_get("/api/v2/dte-status", dte_status)
    routes.add_get("/api/v2/dte-status/", dte_status)
    routes.add_get("/sse/dte/", dte_events)
    routes.add_get("/sse/dte", dte_events)


async def run_data_task(request: web.Request) -> web.Response:
    body = await json_body(request)
    task = body.get("data_task_id") if isinstance(body, dict) else None
    if not isinstance(task, str) or not task:
        raise HttpError(400, "bad_request", 'send {"data_task_id": "<task id>", "parameters": {}}')
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise HttpError(400, "bad_request", "parameters must be a JSON object")
    result = await bus_of(request).request(
        Op.SUBMIT, task=task, params=params, requested_by=REQUESTED_BY
    )
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
    try:
        for state in sorted(ACTIVE_STATES):
            for run in (await bus.request(Op.RUNS, state=state, limit=1000))["runs"]:
                frames.active.add(run["id"])
    except DaemonUnavailable:
        pass  # the stream still opens; runs become known from their events
    feed = only(LiveFeed(bus).events(), lambda event: True, start=True)
    return await tracked_stream(request, feed, frames.frames)


class DteFrames:
    """Turns duftd events into the frames of DUFT's ``/sse/dte/`` stream."""

    def __init__(self) -> None:
        self.active: set[int] = set()

    def frames(self, event: dict[str, Any]) -> list[bytes]:
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
        reason = f": {data['reason']}" if data.get("reason") else ""
        return [self._frame(f"{task}: {state} (run {run_id}){reason}", "scriptError")]

    def _frame(self, message: str, data_task: str) -> bytes:
        return frame({"isRunning": bool(self.active), "message": message, "dataTask": data_task})
