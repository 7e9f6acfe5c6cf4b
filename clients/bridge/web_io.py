"""Reading requests and writing errors: what every route of the bridge shares."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from clients.bridge.async_bus import AsyncBus
from dte_tools.wire import ErrorCode

BUS = web.AppKey("bus", AsyncBus)
# The handler tasks of open streams, cancelled when the bridge shuts down.
STREAMS = web.AppKey("streams", set)

# The routes of DUFT's own server (its web UI calls them).
DUFT_PREFIXES = ("/api/v2/", "/api/v2", "/run-data-task", "/sse/")

# duftd's error codes -> HTTP status; any other code is a 502 (bad gateway).
STATUS_BY_CODE = {
    ErrorCode.UNKNOWN_TASK: 404,
    ErrorCode.UNKNOWN_RUN: 404,
    ErrorCode.BAD_PARAMETER: 422,
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.AMBIGUOUS_TASK: 400,
    ErrorCode.TASK_NOT_RUNNABLE: 409,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.UNAUTHORIZED: 503,  # the bridge's key is not (yet) the running daemon's
    ErrorCode.UNKNOWN_CONNECTION: 404,
}


class HttpError(Exception):
    """A refusal made by the bridge itself."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def status_for(code: str) -> int:
    return STATUS_BY_CODE.get(code, 502)


def error_response(status: int, code: str, message: str, duft: bool = False) -> web.Response:
    """``{"error": {"code", "message"}}``, or DUFT's shape (a top-level ``message``, which
    DUFT's web UI shows, with our ``code`` beside it) on the routes that UI calls."""
    if duft:
        return web.json_response({"message": message, "code": code}, status=status)
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def duft_shaped(path: str) -> bool:
    """Whether ``path`` is one of DUFT's routes, whose errors take DUFT's shape."""
    return path.startswith(DUFT_PREFIXES)


def bus_of(request: web.Request) -> AsyncBus:
    return request.app[BUS]


def flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise HttpError(400, ErrorCode.BAD_REQUEST, f"{name} must be 1 or 0, got {value!r}")


def whole_number(text: str, name: str, low: int, high: int) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise HttpError(400, ErrorCode.BAD_REQUEST, f"{name} must be a whole number {low}..{high}")
    return int(text)


async def json_body(request: web.Request, empty: Any = None) -> Any:
    """The request's JSON body (``empty`` if there is none); 400 if it is not JSON."""
    raw = await request.read()
    if not raw.strip():
        if empty is None:
            raise HttpError(400, ErrorCode.BAD_REQUEST, "the request needs a JSON body")
        return empty
    try:
        return json.loads(raw)
    except ValueError as error:
        raise HttpError(
            400, ErrorCode.BAD_REQUEST, f"the body is not valid JSON: {error}"
        ) from None
