"""Who is asking: the bridge's credentials (issue 12) and DUFT's user logins (issue 14).

Every request that reads runs, starts, cancels or changes anything needs one of:

- the **bridge token**, random per start and printed as a ready-to-open URL
  ``http://HOST:PORT/?token=...``. Opening it stores the token in an HttpOnly,
  SameSite=Strict cookie (as Jupyter does) and redirects to the same page without it;
  API clients send ``Authorization: token ...`` (or ``Bearer ...``). The token's holder is
  the bridge's owner and may do everything;
- a **user's JWT** (``Authorization: Bearer <access>``) from ``POST /api/v2/token/`` for an
  account made with ``duft users add``; a login also sets the cookie to the refresh token,
  because a browser's EventSource (``/sse/dte/``) cannot send headers. A user may read;
  starting and cancelling runs needs ``run_data_task``, changing connection values
  ``change_settings``.

Public without a credential, each by method and path (another method on the same path
needs a credential): the pages (the bridge's own or a ``--ui`` build), ``GET
get-current-config`` (DUFT's UI reads it to learn that it must log in) and ``POST`` to the
two token endpoints. ``POST /api/v2/uploads`` checks HTTP Basic credentials of an account
itself. The ``--upstream`` forwarder refuses any request without an identity as well.
``--no-auth`` turns all of this off for a single-user desktop.

Wrong tokens count as failed logins per client address, wrong passwords per address and
user name; past ``MAX_FAILURES`` within ``FAILURE_WINDOW_S`` more tries get 429 until the
window has passed. Every local user shares 127.0.0.1, so the right bridge token is taken
even then, and one user's guesses lock out no other account. Tokens are compared with
``hmac.compare_digest``; passwords are verified by argon2 (constant time); JWTs are HS256
under a secret made at start, so a restart logs everyone out, and carry a stamp of the
account's password hash, so a new password or a removed account revokes them. A refresh
gives a new access token only: the refresh token keeps its expiry, so a session ends
``REFRESH_LIFETIME_S`` after its login.

Its size is the three ways in (token, login, --no-auth) and the login throttle, kept
together because a request must be judged by all of them in one order.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web

from clients.bridge import accounts
from clients.bridge.web_io import HttpError
from dte_tools.upload import UPLOAD_PATH
from dte_tools.wire import ErrorCode

ACCESS_LIFETIME_S = 5 * 60  # as DUFT's server (djangorestframework-simplejwt) defaults
REFRESH_LIFETIME_S = 24 * 3600
MAX_FAILURES = 5
FAILURE_WINDOW_S = 60.0
MAX_TRACKED_KEYS = 4096
OWNER = "owner"
JWT_ALGORITHM = "HS256"
PASSWORD_CLAIM = "pwd"  # the account's password stamp: a new password revokes old tokens
# Needing a credential (anything outside these prefixes is a page or its files).
PROTECTED_PREFIXES = ("/api/", "/sse/", "/run-data-task")


def _routes(methods: tuple[str, ...], *paths: str) -> frozenset[tuple[str, str]]:
    """``(method, path)`` pairs, each path also with and without its trailing slash."""
    variants = {variant for path in paths for variant in (path.rstrip("/"), path.rstrip("/") + "/")}
    return frozenset((method, path) for method in methods for path in variants)


# Reachable without a credential, by method and path: any other method on these paths
# needs one (else it would fall through to the --upstream catch-all unchecked).
PUBLIC_ROUTES = _routes(("GET", "HEAD"), "/api/v2/get-current-config") | _routes(
    ("POST",), "/api/v2/token/", "/api/v2/token/refresh/"
)
# Routes that check their own credentials: uploads take HTTP Basic of an account
# (clients.bridge.uploads), as DUFT's post_file_to_duft_server sends them.
SELF_AUTHENTICATED = frozenset({("POST", UPLOAD_PATH)})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Identity:
    """Who made a request: the owner (bridge token, or ``--no-auth``) or a user account."""

    name: str
    permissions: frozenset[str]

    def can(self, permission: str) -> bool:
        return permission in self.permissions


OWNER_IDENTITY = Identity(OWNER, frozenset(accounts.PERMISSIONS))
IDENTITY = web.RequestKey("duft.identity", Identity)  # who made the request


class FailedLogins:
    """Recent failed logins per key (a client address for the bridge token, address and
    user name for passwords), to slow down guessing."""

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        times = self._failures.get(key, deque())
        cutoff = time.monotonic() - FAILURE_WINDOW_S
        while times and times[0] < cutoff:
            times.popleft()
        if not times:
            self._failures.pop(key, None)
        return times

    def check(self, key: str) -> None:
        """429 while ``key`` has too many recent failures."""
        times = self._recent(key)
        if len(times) >= MAX_FAILURES:
            wait = int(times[0] + FAILURE_WINDOW_S - time.monotonic()) + 1
            raise HttpError(
                429, ErrorCode.TOO_MANY_ATTEMPTS, f"too many failed logins; try again in {wait} s"
            )

    def failed(self, key: str) -> None:
        if len(self._failures) >= MAX_TRACKED_KEYS:  # bounded memory: forget stale ones
            for stale in list(self._failures):
                self._recent(stale)
        times = self._recent(key)
        times.append(time.monotonic())
        self._failures[key] = times

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)


class Credentials:
    """The bridge token, the JWT secret, the accounts file and the failed-login counter."""

    def __init__(self, state_dir: Path, *, enabled: bool = True, cookie_name: str = "") -> None:
        self.enabled = enabled
        self.state_dir = Path(state_dir)
        self.token = secrets.token_urlsafe(32)
        self.cookie_name = cookie_name or "duft-bridge"
        self._secret = secrets.token_bytes(32)
        self.failures = FailedLogins()

    def users_on(self) -> bool:
        """DUFT's user authentication is on when logins are on and accounts exist."""
        return self.enabled and accounts.has_accounts(self.state_dir)

    def is_token(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self.token.encode())

    async def verify_login(
        self, request: web.Request, username: str, password: str
    ) -> accounts.Account | None:
        """The account if ``password`` is ``username``'s. Failures count per client address
        and user name (429 past the limit), so another local user guessing at one name
        locks out neither the owner nor the other accounts."""
        key = f"{client_address(request)} {username}"
        self.failures.check(key)
        # argon2 takes tens of milliseconds of CPU: keep the event loop (and streams) going.
        account = await asyncio.to_thread(
            accounts.verify_password, self.state_dir, username, password
        )
        if account is None:
            self.failures.failed(key)
        else:
            self.failures.succeeded(key)
        return account

    # -- JWTs ---------------------------------------------------------------------------

    def issue(self, account: accounts.Account) -> dict[str, str]:
        """A fresh ``{"access", "refresh"}`` pair for ``account`` (at login)."""
        return {
            "access": self.access_token(account),
            "refresh": self._encode(account, "refresh", REFRESH_LIFETIME_S),
        }

    def access_token(self, account: accounts.Account) -> str:
        return self._encode(account, "access", ACCESS_LIFETIME_S)

    def _encode(self, account: accounts.Account, kind: str, lifetime_s: int) -> str:
        now = int(time.time())
        claims = {
            "sub": account.name,
            PASSWORD_CLAIM: account.password_stamp,
            "token_type": kind,
            "iat": now,
            "exp": now + lifetime_s,
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._secret, algorithm=JWT_ALGORITHM)

    def account_of(self, token: str, kind: str) -> accounts.Account | None:
        """The live account a valid, unexpired JWT of ``kind`` names, else None (also when
        the account's password changed since the token was issued)."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[JWT_ALGORITHM],
                options={"require": ["exp", "sub", "token_type"]},
            )
        except jwt.InvalidTokenError:
            return None
        if claims.get("token_type") != kind or not isinstance(claims.get("sub"), str):
            return None
        account = accounts.find_account(self.state_dir, claims["sub"])
        if account is None or claims.get(PASSWORD_CLAIM) != account.password_stamp:
            return None
        return account

    # -- who is asking ------------------------------------------------------------------

    def identify(self, request: web.Request) -> Identity | None:
        """The request's identity from its header or cookie; 401 for a wrong credential."""
        header = request.headers.get("Authorization", "").strip()
        if header:
            scheme, _, value = header.partition(" ")
            scheme, value = scheme.lower(), value.strip()
            if scheme == "token" or (scheme == "bearer" and "." not in value):
                return self._owner_token(request, value)
            if scheme == "bearer":
                account = self.account_of(value, "access")
                if account is None:
                    raise HttpError(
                        401,
                        ErrorCode.UNAUTHORIZED,
                        "the access token is invalid or expired; log in again",
                    )
                return _user(account)
            raise HttpError(401, ErrorCode.UNAUTHORIZED, f"unknown Authorization scheme {scheme!r}")
        cookie = request.cookies.get(self.cookie_name)
        if cookie:
            if self.is_token(cookie):
                return OWNER_IDENTITY
            account = self.account_of(cookie, "refresh")
            if account is not None:
                return _user(account)
        return None

    def _owner_token(self, request: web.Request, value: str) -> Identity:
        if self.is_token(value):  # even while throttled: no one guesses 256 bits
            return OWNER_IDENTITY
        self.wrong_token(request)
        raise HttpError(401, ErrorCode.UNAUTHORIZED, "wrong bridge token")

    def wrong_token(self, request: web.Request) -> None:
        """Count a wrong bridge token of the client's address; 429 past the limit."""
        address = client_address(request)
        self.failures.check(address)
        self.failures.failed(address)

    def set_cookie(self, response: web.StreamResponse, value: str, max_age: int | None) -> None:
        response.set_cookie(
            self.cookie_name,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="Strict",
        )


def _user(account: accounts.Account) -> Identity:
    return Identity(account.name, account.permissions)


def client_address(request: web.Request) -> str:
    return request.remote or "unknown"


CREDENTIALS = web.AppKey("credentials", Credentials)


def identity_of(request: web.Request) -> Identity | None:
    return request.get(IDENTITY)


def require(request: web.Request, permission: str) -> Identity:
    """The caller, if allowed ``permission``; 403 names what is missing."""
    who = identity_of(request)
    if who is None:
        raise HttpError(401, ErrorCode.UNAUTHORIZED, "log in first")
    if not who.can(permission):
        raise HttpError(
            403, ErrorCode.FORBIDDEN, f"user {who.name!r} does not have the {permission} permission"
        )
    return who


def protected(request: web.Request) -> bool:
    return (
        request.path.startswith(PROTECTED_PREFIXES)
        and (request.method, request.path) not in PUBLIC_ROUTES
    )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Identify the caller; refuse protected paths without a credential; take ``?token=``."""
    credentials = request.app[CREDENTIALS]
    if (request.method, request.path) in SELF_AUTHENTICATED:
        return await handler(request)
    if not credentials.enabled:
        request[IDENTITY] = OWNER_IDENTITY
        return await handler(request)
    if "token" in request.query and request.method == "GET" and not protected(request):
        return _login_by_url(request, credentials)
    who = credentials.identify(request)
    request[IDENTITY] = who
    if who is None and protected(request):
        raise HttpError(
            401,
            ErrorCode.UNAUTHORIZED,
            "this bridge needs a credential: open the URL duft-bridge printed at start "
            "(it has ?token=...), send 'Authorization: token ...', or log in",
        )
    return await handler(request)


def _login_by_url(request: web.Request, credentials: Credentials) -> web.StreamResponse:
    """``GET /page?token=T``: store the token in the cookie and reload without it."""
    if not credentials.is_token(request.query["token"]):
        credentials.wrong_token(request)
        raise HttpError(401, ErrorCode.UNAUTHORIZED, "wrong bridge token in the URL")
    query = {k: v for k, v in request.query.items() if k != "token"}
    location = str(request.rel_url.with_query(query))
    response = web.Response(status=302, headers={"Location": location})
    credentials.set_cookie(response, credentials.token, None)
    return response


def login_url(base: str, credentials: Credentials) -> str:
    return f"{base}?token={credentials.token}" if credentials.enabled else base


def describe(identity: Identity | None, users_on: bool) -> dict[str, Any]:
    """``currentUser``, its permissions and roles as DUFT's get-current-config gives them:
    a user only while user authentication is on (the owner then shows as ``owner``)."""
    user = None
    if users_on and identity is not None:
        user = {"id": identity.name, "username": identity.name, "email": ""}
    return {
        "currentUser": user,
        "currentUserPermissions": sorted(identity.permissions) if identity else [],
        "currentUserRoles": [],
    }
