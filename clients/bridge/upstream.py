"""Every other ``/api/v2/`` request: forwarded to DUFT's server (``--upstream URL``) or 501.

This engine runs data tasks; queries (``run-query``, ``run-server-query``) and
dashboards' data are DUFT server's. With ``--upstream http://duft-server:8000`` the bridge
passes such requests on, method, path, query and body, streaming the body both ways with
no buffering and no size limit here (the bridge's ``client_max_size`` bounds only bodies it
reads whole; DUFT's server applies its own), so a site can put this engine in front of the
server it has. The bridge's own credentials (its cookie, an
``Authorization`` header) are not passed on: they mean nothing to DUFT's server and must
not leave the bridge. Without ``--upstream`` the answer is 501, saying so.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from clients.bridge.auth import CREDENTIALS, identity_of
from clients.bridge.web_io import HttpError
from dte_tools.wire import ErrorCode

UPSTREAM = web.AppKey("upstream", "Upstream")
# Not passed on: per-connection headers (RFC 9110 section 7.6.1), the bridge's own
# credentials, and Host (aiohttp sets it). Content-Length is kept, so a body of known size
# streams through as such (a WSGI server such as DUFT's may not take chunked bodies).
DROPPED_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "cookie",
        "authorization",
    }
)
CHUNK = 64 * 1024


class Upstream:
    """The DUFT server requests are forwarded to, with one client session for all."""

    def __init__(self, base_url: str | None) -> None:
        self.base_url = base_url.rstrip("/") if base_url else None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self.base_url:
            # No total timeout: a long query answers when it answers; connecting is bounded.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
            self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def forward(self, request: web.Request) -> web.StreamResponse:
        if request.app[CREDENTIALS].enabled and identity_of(request) is None:
            # Defence in depth: the auth middleware lets no such request here.
            raise HttpError(401, "unauthorized", "forwarding to DUFT's server needs a credential")
        if self._session is None:
            raise HttpError(
                501,
                ErrorCode.NOT_SERVED,
                f"{request.path} is DUFT server's (queries, dashboards' data): this engine "
                "runs data tasks and does not serve queries; start duft-bridge with "
                "--upstream URL of your DUFT server to pass such requests on",
            )
        headers = _kept(request.headers)
        body = request.content if request.body_exists else None
        try:
            upstream = await self._session.request(
                request.method,
                f"{self.base_url}{request.rel_url}",
                headers=headers,
                data=body,
                allow_redirects=False,
            )
        except aiohttp.ClientError as error:
            raise HttpError(
                502, ErrorCode.UPSTREAM_UNAVAILABLE, f"DUFT server at {self.base_url}: {error}"
            ) from None
        async with upstream:
            response = web.StreamResponse(status=upstream.status, headers=_kept(upstream.headers))
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(CHUNK):
                await response.write(chunk)
            await response.write_eof()
            return response


def _kept(headers: CIMultiDict[str] | object) -> CIMultiDict[str]:
    return CIMultiDict(
        (name, value) for name, value in headers.items() if name.lower() not in DROPPED_HEADERS
    )


async def forward(request: web.Request) -> web.StreamResponse:
    return await request.app[UPSTREAM].forward(request)


def add_routes(app: web.Application, base_url: str | None) -> None:
    """Register last: every ``/api/v2/`` path no other route took."""
    app[UPSTREAM] = Upstream(base_url)
    app.router.add_route("*", "/api/v2/{tail:.*}", forward)
    app.on_startup.append(_start)
    app.on_cleanup.append(_close)


async def _start(app: web.Application) -> None:
    await app[UPSTREAM].start()


async def _close(app: web.Application) -> None:
    await app[UPSTREAM].close()
