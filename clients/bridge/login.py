"""DUFT's login: ``POST /api/v2/token/`` and ``POST /api/v2/token/refresh/``.

``{"username", "password"}`` -> ``{"access", "refresh"}`` JWTs for an account of
``duft users add``; the login also sets the bridge's cookie to the refresh token, so the
page's EventSource (which cannot send headers) is that user too. ``{"refresh"}`` ->
``{"access"}`` only, as DUFT's server (simplejwt without rotation): the refresh token is
not renewed, so a session ends a day after its login; a refused refresh clears the cookie.
A wrong password counts as a failed login (see :mod:`clients.bridge.auth`); the answer
never says whether the name exists.
"""

from __future__ import annotations

from aiohttp import web

from clients.bridge.auth import CREDENTIALS, REFRESH_LIFETIME_S
from clients.bridge.web_io import HttpError, error_response, json_body
from dte_tools.wire import ErrorCode


def add_routes(routes: web.UrlDispatcher) -> None:
    for path in ("/api/v2/token/", "/api/v2/token"):
        routes.add_post(path, obtain_pair)
    for path in ("/api/v2/token/refresh/", "/api/v2/token/refresh"):
        routes.add_post(path, refresh_access)


def _text_field(body: object, name: str) -> str:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise HttpError(400, ErrorCode.BAD_REQUEST, f"send {name!r} as a non-empty string")
    return value


async def obtain_pair(request: web.Request) -> web.Response:
    credentials = request.app[CREDENTIALS]
    body = await json_body(request)
    username, password = _text_field(body, "username"), _text_field(body, "password")
    account = await credentials.verify_login(request, username, password)
    if account is None:
        raise HttpError(
            401, ErrorCode.UNAUTHORIZED, "no active account found with the given credentials"
        )
    pair = credentials.issue(account)
    response = web.json_response(pair)
    credentials.set_cookie(response, pair["refresh"], REFRESH_LIFETIME_S)
    return response


async def refresh_access(request: web.Request) -> web.Response:
    credentials = request.app[CREDENTIALS]
    account = credentials.account_of(_text_field(await json_body(request), "refresh"), "refresh")
    if account is None:
        message = "the refresh token is invalid or expired; log in again"
        response = error_response(401, ErrorCode.UNAUTHORIZED, message, duft=True)
        response.del_cookie(credentials.cookie_name, path="/")
        return response
    return web.json_response({"access": credentials.access_token(account)})
