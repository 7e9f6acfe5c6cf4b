"""DUFT's login: ``POST /api/v2/token/`` and ``POST /api/v2/token/refresh/``.

``{"username", "password"}`` -> ``{"access", "refresh"}`` JWTs for an account of
``duft users add``; ``{"refresh"}`` -> a new pair. Both also set the bridge's cookie to the
refresh token, so the page's EventSource (which cannot send headers) is that user too.
A wrong password counts as a failed login of the client's address (see
:mod:`clients.bridge.auth`); the answer never says whether the name exists.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from clients.bridge import accounts
from clients.bridge.auth import CREDENTIALS, REFRESH_LIFETIME_S, Credentials, client_address
from clients.bridge.web_io import HttpError, json_body
from dte_tools.wire import ErrorCode


def add_routes(routes: web.UrlDispatcher) -> None:
    for path in ("/api/v2/token/", "/api/v2/token"):
        routes.add_post(path, obtain_pair)
    for path in ("/api/v2/token/refresh/", "/api/v2/token/refresh"):
        routes.add_post(path, refresh_pair)


def _text_field(body: object, name: str) -> str:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise HttpError(400, ErrorCode.BAD_REQUEST, f"send {name!r} as a non-empty string")
    return value


def _pair_response(credentials: Credentials, account: accounts.Account) -> web.Response:
    pair = credentials.issue(account)
    response = web.json_response(pair)
    credentials.set_cookie(response, pair["refresh"], REFRESH_LIFETIME_S)
    return response


async def obtain_pair(request: web.Request) -> web.Response:
    credentials = request.app[CREDENTIALS]
    body = await json_body(request)
    username, password = _text_field(body, "username"), _text_field(body, "password")
    address = client_address(request)
    credentials.failures.check(address)
    # argon2 takes tens of milliseconds of CPU: keep the event loop (and the streams) going.
    account = await asyncio.to_thread(
        accounts.verify_password, credentials.state_dir, username, password
    )
    if account is None:
        credentials.failures.failed(address)
        raise HttpError(
            401, ErrorCode.UNAUTHORIZED, "no active account found with the given credentials"
        )
    credentials.failures.succeeded(address)
    return _pair_response(credentials, account)


async def refresh_pair(request: web.Request) -> web.Response:
    credentials = request.app[CREDENTIALS]
    account = credentials.account_of(_text_field(await json_body(request), "refresh"), "refresh")
    if account is None:
        message = "the refresh token is invalid or expired; log in again"
        raise HttpError(401, ErrorCode.UNAUTHORIZED, message)
    return _pair_response(credentials, account)
