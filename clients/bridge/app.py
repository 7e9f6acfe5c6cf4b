"""duft-bridge: run and watch duftd's data tasks over HTTP, from a browser or DUFT's web UI.

The HTTP server is aiohttp: it is asyncio-native, so the bridge's one event loop serves
HTTP and talks ZeroMQ (``zmq.asyncio``) with no threads in between; its streaming
responses carry Server-Sent Events directly; and it is its own server, so there is no
ASGI framework plus separate ASGI server to install and run.

Routes (JSON in and out; an error is ``{"error": {"code", "message"}}``)::

    GET  /                              the page (static/), nothing fetched from elsewhere
    GET  /api/health                    duftd's health (503 while it is not reachable)
    GET  /api/tasks[?all=1]             visible tasks (all: hidden ones too)
    GET  /api/tasks/{task}              one task, with its parameters
    POST /api/tasks/{task}/runs         body: {param: value}; -> {run, ignored, joined}
    GET  /api/runs[?task=&state=&limit=]
    GET  /api/runs/{run}
    POST /api/runs/{run}/cancel
    GET  /api/runs/{run}/events         SSE, id = sequence number; resumes from
                                        Last-Event-ID (or ?after=N); ends at the final state
    GET  /api/events[?task=&kind=]      SSE of every run's events as they happen
    /api/v2/..., /run-data-task, /sse/dte/   DUFT's web UI: its data-task endpoints
                                        (clients.bridge.legacy), start-up files and log
                                        (duft_api), settings screen (connections_api),
                                        login (login); any other /api/v2/ path goes to
                                        --upstream or answers 501 (upstream)

With ``--ui DIR`` a built web UI is served at ``/`` instead of the bridge's page
(clients.bridge.ui_files). Who may do what: clients.bridge.auth.

Statuses: 401 no or a wrong credential, 403 a permission the user lacks, 429 too many
failed logins, 404 unknown task or run, 422 bad parameters, 400 bad request, 415 a POST
that is not ``application/json`` (so a cross-site HTML form cannot start a run), 403 a
request for a foreign Host (DNS rebinding) or from an origin that is not allowed, 503
duftd not reachable. On DUFT's routes an error is ``{"message", "code"}`` instead, the
shape DUFT's UI reads. The bridge binds loopback by default and never returns a secret:
it relays what duftd gives clients, and masks passwords on the settings screen.

Its size is the route table, the run and event routes, and the middlewares every route
shares (errors, host and origin checks); DUFT's endpoints, connections, uploads and login
live in their own modules.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

from clients.bridge import connections_api, duft_api, legacy, login, ui_files, uploads, upstream
from clients.bridge.accounts import RUN_DATA_TASK
from clients.bridge.async_bus import AsyncBus, DaemonRefused, DaemonUnavailable
from clients.bridge.auth import CREDENTIALS, Credentials, auth_middleware, login_url, require
from clients.bridge.sse import LiveFeed, follow_run, frame, only, tracked_stream
from clients.bridge.web_io import (
    BUS,
    STREAMS,
    HttpError,
    bus_of,
    duft_shaped,
    error_response,
    flag,
    json_body,
    status_for,
    whole_number,
)
from dte_tools import locate
from dte_tools.addresses import hostname, is_loopback
from dte_tools.wire import ErrorCode, Op

log = logging.getLogger("duft.bridge")

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
REQUESTED_BY = "duft-bridge"
MAX_BODY_BYTES = 1024 * 1024
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The page uses only its own files: no inline code, nothing from the internet.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
}

POLICY = web.AppKey("policy", "AccessPolicy")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- access policy ---------------------------------------------------------------------


class AccessPolicy:
    """Which Host names and cross-site origins the bridge answers."""

    def __init__(self, bind_host: str, allowed_origins: Iterable[str] = ()) -> None:
        self.check_host = is_loopback(bind_host)
        self.hosts = LOOPBACK_NAMES | {bind_host.strip("[]").lower()}
        self.origins = {origin.rstrip("/") for origin in allowed_origins}

    def host_allowed(self, request: web.Request) -> bool:
        return not self.check_host or hostname(request.host) in self.hosts

    def origin_allowed(self, request: web.Request, origin: str) -> bool:
        """Same origin, a loopback origin (any port), or one given with --allow-origin."""
        if origin == f"{request.scheme}://{request.host}" or origin in self.origins:
            return True
        scheme, _, netloc = origin.partition("://")
        return scheme in ("http", "https") and hostname(netloc) in LOOPBACK_NAMES


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes ``{"error": {"code", "message"}}`` with its status (on DUFT's
    routes ``{"message", "code"}``, which DUFT's web UI shows)."""
    duft = duft_shaped(request.path)
    try:
        return await handler(request)
    except HttpError as error:
        return error_response(error.status, error.code, error.message, duft)
    except DaemonUnavailable as error:
        message = f"duftd is not reachable: {error}"
        return error_response(503, ErrorCode.DAEMON_UNAVAILABLE, message, duft)
    except DaemonRefused as error:
        return error_response(status_for(error.code), error.code, error.message, duft)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return error_response(error.status, _code_for(error.status), error.reason, duft)
    except Exception as error:
        log.exception("%s %s failed", request.method, request.path)
        message = f"duft-bridge internal error: {error!r}"
        return error_response(500, ErrorCode.INTERNAL, message, duft)


def _code_for(status: int) -> ErrorCode:
    known = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED, 413: ErrorCode.TOO_LARGE}
    return known.get(status, ErrorCode.BAD_REQUEST)


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host, origin and content-type checks, and CORS preflight answers."""
    policy = request.app[POLICY]
    if not policy.host_allowed(request):
        raise HttpError(
            403, ErrorCode.FORBIDDEN_HOST, f"this bridge does not serve host {request.host!r}"
        )
    origin = request.headers.get("Origin")
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        if origin is None or not policy.origin_allowed(request, origin):
            raise HttpError(403, ErrorCode.FORBIDDEN_ORIGIN, f"origin {origin!r} is not allowed")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "Content-Type, Authorization, Last-Event-ID",
                "Access-Control-Max-Age": "600",
            },
        )
    if request.method == "POST":
        if origin is not None and not policy.origin_allowed(request, origin):
            raise HttpError(403, ErrorCode.FORBIDDEN_ORIGIN, f"origin {origin!r} may not post here")
        if request.content_type != "application/json" and not uploads.is_upload(request):
            raise HttpError(
                415,
                ErrorCode.UNSUPPORTED_MEDIA_TYPE,
                "send the request body as JSON with Content-Type: application/json",
            )
    return await handler(request)


async def _response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Security headers on everything; CORS headers for an allowed foreign origin."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    origin = request.headers.get("Origin")
    if origin is not None and request.app[POLICY].origin_allowed(request, origin):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"


# -- request helpers -------------------------------------------------------------------


def run_id_of(request: web.Request) -> int:
    text = request.match_info["run"]
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) < 2**63:
        raise HttpError(404, ErrorCode.UNKNOWN_RUN, f"no run has the id {text!r}")
    return int(text)


def json_response(data: Any, status: int = 200, **headers: str) -> web.Response:
    return web.json_response(data, status=status, headers=headers or None)


# -- handlers --------------------------------------------------------------------------


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def health(request: web.Request) -> web.Response:
    result = await bus_of(request).request(Op.HEALTH)
    return json_response({"daemon": result})


async def list_tasks(request: web.Request) -> web.Response:
    return json_response(await bus_of(request).request(Op.TASKS, all=flag(request, "all")))


async def get_task(request: web.Request) -> web.Response:
    return json_response(await bus_of(request).request(Op.TASK, task=request.match_info["task"]))


async def submit_run(request: web.Request) -> web.Response:
    require(request, RUN_DATA_TASK)
    params = await json_body(request, empty={})
    if not isinstance(params, dict):
        raise HttpError(400, ErrorCode.BAD_REQUEST, "the body must be a JSON object of parameters")
    result = await bus_of(request).request(
        Op.SUBMIT, task=request.match_info["task"], params=params, requested_by=REQUESTED_BY
    )
    location = f"/api/runs/{result['run']['id']}"
    return json_response(result, 200 if result["joined"] else 201, Location=location)


async def list_runs(request: web.Request) -> web.Response:
    args: dict[str, Any] = {}
    for name in ("task", "state"):
        if request.query.get(name):
            args[name] = request.query[name]
    if "limit" in request.query:
        args["limit"] = whole_number(request.query["limit"], "limit", 1, 10_000)
    return json_response(await bus_of(request).request(Op.RUNS, **args))


async def get_run(request: web.Request) -> web.Response:
    return json_response(await bus_of(request).request(Op.RUN, run=run_id_of(request)))


async def cancel_run(request: web.Request) -> web.Response:
    require(request, RUN_DATA_TASK)
    await json_body(request, empty={})  # any body is ignored, but it must be JSON
    return json_response(await bus_of(request).request(Op.CANCEL, run=run_id_of(request)))


async def run_events(request: web.Request) -> web.StreamResponse:
    """SSE of one run: history then live, resuming after ``Last-Event-ID`` (or ``?after=``)."""
    bus = bus_of(request)
    run = (await bus.request(Op.RUN, run=run_id_of(request)))["run"]
    resume = request.headers.get("Last-Event-ID", "").strip()
    after = resume or request.query.get("after", "0")
    after_seq = whole_number(after, "Last-Event-ID / after", 0, 2**63 - 1)
    return await tracked_stream(
        request, follow_run(bus, run, after_seq), lambda event: [frame(event, event["seq"])]
    )


async def all_events(request: web.Request) -> web.StreamResponse:
    """SSE of every run's events as they happen; ``task=`` and ``kind=a,b`` narrow it."""
    task = request.query.get("task") or None
    kinds = {k for k in request.query.get("kind", "").split(",") if k} or None

    def wanted(event: dict[str, Any]) -> bool:
        if task is not None and event["task_id"] != task:
            return False
        return kinds is None or event["kind"] in kinds

    async def listening() -> None:
        return None  # a tick, so the response begins only once the feed is listening

    return await tracked_stream(
        request,
        only(LiveFeed(bus_of(request)).events(first=listening), wanted),
        lambda event: [frame(event)],
    )


# -- the application -------------------------------------------------------------------


def create_app(
    state_dir: Path | None = None,
    *,
    bind_host: str = DEFAULT_HOST,
    allowed_origins: Iterable[str] = (),
    bus: AsyncBus | None = None,
    auth: bool = True,
    ui_dir: Path | None = None,
    upstream_url: str | None = None,
) -> web.Application:
    """The bridge's aiohttp application; its bus starts and stops with it."""
    app = web.Application(
        middlewares=[errors_middleware, guard_middleware, auth_middleware],
        client_max_size=MAX_BODY_BYTES,
    )
    app[BUS] = bus or AsyncBus(state_dir)
    app[POLICY] = AccessPolicy(bind_host, allowed_origins)
    app[CREDENTIALS] = Credentials(state_dir or locate.default_state_dir(), enabled=auth)
    app[STREAMS] = set()
    app.on_response_prepare.append(_response_headers)
    app.on_startup.append(_start_bus)
    app.on_shutdown.append(_end_streams)
    app.on_cleanup.append(_close_bus)

    routes = app.router
    if ui_dir is None:
        routes.add_get("/", index)
        routes.add_static("/static/", STATIC_DIR, append_version=False)
    routes.add_get("/api/health", health)
    routes.add_get("/api/tasks", list_tasks)
    routes.add_get("/api/tasks/{task}", get_task)
    routes.add_post("/api/tasks/{task}/runs", submit_run)
    routes.add_get("/api/runs", list_runs)
    routes.add_get("/api/runs/{run}", get_run)
    routes.add_post("/api/runs/{run}/cancel", cancel_run)
    routes.add_get("/api/runs/{run}/events", run_events)
    routes.add_get("/api/events", all_events)
    legacy.add_routes(routes)
    duft_api.add_routes(app)
    connections_api.add_routes(routes)
    login.add_routes(routes)
    uploads.register(app)
    upstream.add_routes(app, upstream_url)  # after every other /api/v2/ route
    if ui_dir is not None:
        ui_files.add_routes(app, ui_dir)  # last: it takes every other GET
    return app


async def _start_bus(app: web.Application) -> None:
    await app[BUS].start()


async def _end_streams(app: web.Application) -> None:
    for task in list(app[STREAMS]):
        task.cancel()


async def _close_bus(app: web.Application) -> None:
    await app[BUS].close()


# -- command line ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duft-bridge",
        description="Serve duftd's tasks and runs over HTTP: a page, a JSON API with SSE, "
        "and the endpoints DUFT's web UI calls.",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks one)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="duftd's state folder with its connection file (default: $DUFT_STATE_DIR or ./.duftd)",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (anyone who reaches it can try to log in; use "
        "HTTPS in front of it)",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="no credentials at all: anyone who can reach the port may read runs and start "
        "and cancel them (only for a single-user desktop; refused with a non-loopback --host)",
    )
    parser.add_argument(
        "--ui",
        type=Path,
        metavar="DIR",
        help="serve this built web UI (e.g. DUFT's release build) at / instead of the "
        "bridge's own page",
    )
    parser.add_argument(
        "--upstream",
        metavar="URL",
        help="DUFT server to pass other /api/v2/ requests (queries, dashboards' data) to, "
        "e.g. http://127.0.0.1:8000; without it they answer 501",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin (e.g. http://duft.local:8000) whose pages may call the bridge; "
        "loopback origins always may",
    )
    return parser


async def serve(args: argparse.Namespace) -> None:
    """Start-up, serve until SIGINT/SIGTERM, then shut down within a bound."""
    state_dir = args.state_dir or locate.default_state_dir()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(
        state_dir,
        bind_host=args.host,
        allowed_origins=args.allow_origin,
        auth=not args.no_auth,
        ui_dir=args.ui,
        upstream_url=args.upstream,
    )
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=2.0, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        credentials = app[CREDENTIALS]
        credentials.cookie_name = f"duft-bridge-{port}"  # cookies are per host, not port
        url = login_url(f"http://{shown}:{port}/", credentials)
        print(f"duft-bridge: serving {url} for duftd in {state_dir}", flush=True)
        if args.no_auth:
            print(
                "duft-bridge: WARNING: --no-auth: NO CREDENTIALS ARE CHECKED. Anyone who can "
                f"reach port {port} (every local user) can read every run and start or "
                "cancel runs.",
                flush=True,
            )
        else:
            print("duft-bridge: open the URL above (it logs this browser in)", flush=True)
        if not app[BUS].available:
            print(f"duft-bridge: {app[BUS].unavailable_reason}; waiting for it", flush=True)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)  # a second Ctrl-C now interrupts the shutdown
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not is_loopback(args.host) and not args.allow_remote:
        parser.error(
            f"--host {args.host} is not a loopback address; anyone who reaches it could try "
            "to log in. Add --allow-remote if that is intended."
        )
    if not is_loopback(args.host) and args.no_auth:
        parser.error("--no-auth is for a single-user desktop: it needs a loopback --host")
    if args.ui is not None:
        try:
            args.ui = ui_files.check_ui_dir(args.ui)
        except ValueError as error:
            parser.error(f"--ui: {error}")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.umask(0o077)  # what the bridge writes (uploads, accounts) is its owner's alone
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 130
    except OSError as error:
        print(f"duft-bridge: cannot serve on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    return 0
