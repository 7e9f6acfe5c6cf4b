"""``--ui DIR``: serve a built web UI (DUFT's release build) at ``/``, same origin as the API.

A path that names a file inside ``DIR`` gets that file; any other page path gets
``DIR/index.html`` (the history-API fallback: the UI routes ``/dashboard/home`` itself).
Paths under ``/api/`` and ``/sse/`` never fall back: an unknown one stays a 404. The
policy allows what a React build needs (inline style attributes; images, fonts and style
sheets over https) and still nothing but this origin for scripts and connections.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from clients.bridge.web_io import HttpError
from dte_tools.wire import ErrorCode

UI_DIR = web.AppKey("ui_dir", Path)
UI_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline' https:; "
    "img-src 'self' data: https:; font-src 'self' data: https:; connect-src 'self'; "
    "object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
)
NEVER_FALLS_BACK = ("/api/", "/sse/", "/api", "/sse")


def check_ui_dir(folder: Path) -> Path:
    """The resolved folder, if it holds a built UI (an ``index.html``)."""
    folder = folder.expanduser().resolve()
    if not (folder / "index.html").is_file():
        raise ValueError(f"{folder} has no index.html: give the folder of a built web UI")
    return folder


async def ui_file(request: web.Request) -> web.StreamResponse:
    folder = request.app[UI_DIR]
    if request.path.startswith(NEVER_FALLS_BACK):
        raise HttpError(404, ErrorCode.NOT_FOUND, f"no route {request.path}")
    target = (folder / request.match_info["path"]).resolve()
    if not target.is_relative_to(folder) or not target.is_file():
        target = folder / "index.html"
    cache = "no-cache" if target.name == "index.html" else "public, max-age=3600"
    return web.FileResponse(
        target, headers={"Cache-Control": cache, "Content-Security-Policy": UI_CSP}
    )


def add_routes(app: web.Application, folder: Path) -> None:
    """Register last: every GET no other route took."""
    app[UI_DIR] = folder
    app.router.add_get("/{path:.*}", ui_file)
