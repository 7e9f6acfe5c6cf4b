"""DUFT's start-up endpoints and its log, answered from the daemon's duft-config folder.

- ``GET /api/v2/get-current-config`` -> ``features``, ``currentUser``,
  ``currentUserPermissions``, ``currentUserRoles``, ``settings``, ``version``,
  ``serverBaseURL``, ``directories`` (the UI leaves its splash screen with it);
- ``GET /api/v2/settings`` -> ``{"oobe", "debug", "unittest"}`` (user/config.json's ``settings``);
- ``GET /api/v2/navigation`` -> ``{"system", "user"}`` navigation files; with no system
  file, a navigation whose data-task list is duftd's runnable tasks;
- ``GET /api/v2/theme`` -> the theme file;
- ``GET /api/v2/3dldashboard/{id}`` -> the text of ``dashboards/{id}.3dl``, as a JSON string;
- ``GET /api/v2/log`` -> ``{"content": [...]}``: the lines of the most recent runs.

``?app=NAME`` asks for an app's files (``apps/NAME/``) instead of the system ones.
"""

from __future__ import annotations

import platform
import sys
import time
from collections import deque
from typing import Any

from aiohttp import web

from clients.bridge.async_bus import AsyncBus
from clients.bridge.auth import CREDENTIALS, describe, identity_of
from clients.bridge.duft_config import BadName, ConfigFiles, checked_name
from clients.bridge.web_io import BUS, HttpError, bus_of
from dte_tools.wire import FINAL_STATES, ErrorCode, Kind, Op, State

CONFIG_FILES = web.AppKey("config_files", ConfigFiles)
LOG_RUNS = 10  # the log endpoint shows the lines of this many recent runs,
LOG_LINES = 2000  # and at most this many lines of them (the newest)


def add_routes(app: web.Application) -> None:
    app[CONFIG_FILES] = ConfigFiles(app[BUS])
    for path, handler in (
        ("/api/v2/get-current-config", get_current_config),
        ("/api/v2/settings", user_settings),
        ("/api/v2/navigation", navigation),
        ("/api/v2/theme", theme),
        ("/api/v2/3dldashboard/{dashboard}", dashboard),
        ("/api/v2/log", recent_log),
    ):
        app.router.add_get(path, handler)
        app.router.add_get(path + "/", handler)


def _app_of(request: web.Request) -> str | None:
    app = request.query.get("app") or None
    try:
        return checked_name(app, "app") if app else None
    except BadName as error:
        raise HttpError(400, ErrorCode.BAD_REQUEST, str(error)) from None


async def get_current_config(request: web.Request) -> web.Response:
    files = request.app[CONFIG_FILES]
    root = await files.root()
    credentials = request.app[CREDENTIALS]
    users_on = credentials.users_on()
    who = identity_of(request)
    directories: dict[str, str] = {}
    if who is not None and root is not None:  # paths only for those who may read runs
        directories = {"config": str(root)}
    return web.json_response(
        {
            "features": {
                "data_tasks": True,
                "user_authentication": users_on,
                "enforce_user_authentication": users_on,
                "task_scheduler": files.has_schedules(root),
                "server_uploads": True,  # POST /api/v2/uploads (clients.bridge.uploads)
                "log_level": "INFO",
            },
            **describe(who, users_on),
            "settings": files.settings(root, _app_of(request)),
            "version": files.version,
            "serverBaseURL": f"{request.scheme}://{request.host}/api/v2",
            "pythonPath": sys.executable if who is not None else "",
            "pythonVersion": platform.python_version(),
            "directories": directories,
        }
    )


async def user_settings(request: web.Request) -> web.Response:
    files = request.app[CONFIG_FILES]
    return web.json_response(files.user_settings(await files.root()))


async def navigation(request: web.Request) -> web.Response:
    files = request.app[CONFIG_FILES]
    root = await files.root()
    app = _app_of(request)
    system = files.navigation(root, app)
    if system is None:
        system = await _default_navigation(request, files.settings(root, app))
    return web.json_response({"system": system, "user": files.user_navigation(root)})


async def _default_navigation(request: web.Request, settings: dict[str, Any]) -> dict[str, Any]:
    """A navigation for a folder without one: a home page and duftd's runnable tasks."""
    tasks = (await bus_of(request).request(Op.TASKS))["tasks"]
    items = [
        {
            "title": task["name"] or task["id"],
            "icon": "update-icon",
            "task": task["id"],
            "dashboard": "",
            "prompt": f"Run {task['name'] or task['id']}?",
        }
        for task in tasks
        if task["runnable"]
    ]
    return {
        "settings": {"appName": settings.get("appName") or settings.get("name") or "DUFT"},
        "home": {"title": "Home", "icon": "home-icon", "dashboard": "/dashboard/home"},
        "menu": {"header": "Dashboards", "items": []},
        "dataTasks": {"header": "Data tasks", "items": items},
    }


async def theme(request: web.Request) -> web.Response:
    files = request.app[CONFIG_FILES]
    return web.json_response(files.theme(await files.root(), _app_of(request)))


async def dashboard(request: web.Request) -> web.Response:
    files = request.app[CONFIG_FILES]
    try:
        name = checked_name(request.match_info["dashboard"], "dashboard")
    except BadName as error:
        raise HttpError(404, ErrorCode.UNKNOWN_DASHBOARD, str(error)) from None
    app = _app_of(request)
    text = files.dashboard(await files.root(), app, name)
    if text is None:
        where = f"apps/{app}" if app else "system"
        raise HttpError(
            404, ErrorCode.UNKNOWN_DASHBOARD, f"no dashboard {where}/dashboards/{name}.3dl"
        )
    return web.json_response(text)


async def recent_log(request: web.Request) -> web.Response:
    """The log, stdout and stderr lines and outcomes of the newest runs, oldest first: of
    each run only its last ``LOG_LINES`` events are read, however many it has."""
    bus = bus_of(request)
    runs = (await bus.request(Op.RUNS, limit=LOG_RUNS))["runs"]
    content: deque[str] = deque(maxlen=LOG_LINES)
    for run in reversed(runs):
        after = max(0, await _last_seq(bus, run["id"]) - LOG_LINES)
        while True:
            page = await bus.request(Op.EVENTS, run=run["id"], after=after)
            for event in page["events"]:
                content.extend(_log_lines(run, event))
                after = event["seq"]
            if not page["more"]:
                break
    return web.json_response({"content": list(content)})


async def _last_seq(bus: AsyncBus, run_id: int) -> int:
    """The run's last event number, or 0 when it has at most ``LOG_LINES``: found with a
    few one-event reads, as the events op pages forward only and a run has no count."""

    async def any_after(seq: int) -> bool:
        page = await bus.request(Op.EVENTS, run=run_id, after=seq, limit=1)
        return bool(page["events"])

    if not await any_after(LOG_LINES):
        return 0
    low, high = LOG_LINES, 2 * LOG_LINES  # events after low; after high, not known yet
    while await any_after(high):
        low, high = high, 2 * high
    while high - low > 1:  # the last one is in (low, high]
        middle = (low + high) // 2
        low, high = (middle, high) if await any_after(middle) else (low, middle)
    return high


def _log_lines(run: dict[str, Any], event: dict[str, Any]) -> list[str]:
    kind, data = event["kind"], event["data"]
    if kind == Kind.LOG:
        lines = str(data.get("message", "")).splitlines()
    elif kind in (Kind.STDOUT, Kind.STDERR):
        lines = str(data.get("text", "")).splitlines()
    elif kind == Kind.STATE and data.get("state") in FINAL_STATES:
        outcome = data["state"]
        if outcome != State.SUCCEEDED and data.get("reason"):
            outcome += f": {data['reason']}"
        lines = [outcome]
    else:
        return []
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["ts"]))
    head = f"{stamp} {run['task_id']} (run {run['id']})"
    return [f"{head}: {line}" for line in lines if line.strip()]
