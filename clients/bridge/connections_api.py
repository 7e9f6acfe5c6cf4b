"""DUFT's settings screen: data connections and the user's values for them.

- ``GET /api/v2/data-connections`` -> the declared connections (``id``, ``name``,
  ``description``, ``params`` with ``name``/``type``/``label``, ``app``);
- ``GET /api/v2/data-connections/{id}/parameters`` -> the values in user/config.json,
  every password (and secret-looking key) as ``********``;
- ``POST`` the same path with ``{param: value}`` -> saved into user/config.json with the
  code ``duft config set-connection`` uses (the declared-connection check, then the
  atomic write that keeps the rest of the file), then duftd reloads. A password sent
  back as ``********`` or empty keeps the stored one. Values are stored as text, as
  DUFT does; an undeclared param or a non-number for an ``integer`` param is refused.

Reading the values and changing them needs ``change_settings`` when logins are on.
The duft-config model and writer are imported where they are used: they are the only
part of the daemon's package the bridge uses, and only here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from clients.bridge.accounts import CHANGE_SETTINGS
from clients.bridge.auth import require
from clients.bridge.duft_api import CONFIG_FILES
from clients.bridge.web_io import HttpError, bus_of, json_body
from dte_tools.redact import MASK, is_secret_key
from dte_tools.wire import ErrorCode, Op


def add_routes(routes: web.UrlDispatcher) -> None:
    for suffix in ("", "/"):
        routes.add_get("/api/v2/data-connections" + suffix, list_connections)
        path = "/api/v2/data-connections/{connection}/parameters" + suffix
        routes.add_get(path, get_parameters)
        routes.add_post(path, set_parameters)


async def _loaded(request: web.Request) -> Any:
    from duftd.config import load_config
    from duftd.errors import ConfigError

    root = await request.app[CONFIG_FILES].root()
    if root is None:
        raise HttpError(
            503, ErrorCode.DAEMON_UNAVAILABLE, "duftd is not reachable: its config is unknown"
        )
    try:
        return await asyncio.to_thread(load_config, root)
    except ConfigError as error:
        raise HttpError(500, ErrorCode.BAD_CONFIG, str(error)) from None


def _spec(config: Any, connection_id: str) -> Any:
    from clients.cli.connections import declared_connection
    from duftd.errors import UnknownConnectionError

    try:
        return declared_connection(config, connection_id)
    except UnknownConnectionError as error:
        raise HttpError(404, ErrorCode.UNKNOWN_CONNECTION, str(error)) from None


def _secret(spec: Any, key: str) -> bool:
    return key in spec.password_fields or is_secret_key(key)


def _masked(spec: Any, values: dict[str, Any]) -> dict[str, Any]:
    return {key: MASK if _secret(spec, key) else value for key, value in values.items()}


async def list_connections(request: web.Request) -> web.Response:
    from duftd.connections import declared_connections

    config = await _loaded(request)
    return web.json_response(
        [
            {
                "id": spec.id,
                "name": spec.name or spec.id,
                "description": spec.description,
                "params": [p.model_dump() for p in spec.params],
                "app": spec.app,
            }
            for spec in declared_connections(config).values()
        ]
    )


async def get_parameters(request: web.Request) -> web.Response:
    require(request, CHANGE_SETTINGS)
    config = await _loaded(request)
    spec = _spec(config, request.match_info["connection"])
    values = config.user.data_connection_parameters.get(spec.id) or {}
    return web.json_response(_masked(spec, dict(values)))


async def set_parameters(request: web.Request) -> web.Response:
    from duftd.config.user_file import set_connection_values
    from duftd.errors import ConfigError

    require(request, CHANGE_SETTINGS)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise HttpError(
            400, ErrorCode.BAD_REQUEST, "send the parameters as a JSON object {name: value}"
        )
    config = await _loaded(request)
    spec = _spec(config, request.match_info["connection"])
    values = _validated(spec, body)
    if values:
        try:
            path = set_connection_values(Path(config.root), spec.id, values)
        except (ConfigError, OSError) as error:
            raise HttpError(409, ErrorCode.BAD_CONFIG, str(error)) from None
        await bus_of(request).request(Op.RELOAD)
    else:
        path = Path(config.root) / "user" / "config.json"
    saved = dict(config.user.data_connection_parameters.get(spec.id) or {}) | values
    return web.json_response(
        {
            "message": f"Parameters of {spec.id} saved in {path}",
            "id": spec.id,
            "parameters": _masked(spec, saved),
        }
    )


def _validated(spec: Any, body: dict[str, Any]) -> dict[str, str]:
    """The values to write, as text; refuses what ``spec`` does not declare."""
    types = {p.name: p.type.lower() for p in spec.params}
    values: dict[str, str] = {}
    for key, value in body.items():
        if types and key not in types:
            raise HttpError(
                422,
                ErrorCode.BAD_PARAMETER,
                f"{spec.id} has no parameter {key!r} (declared: {', '.join(types)})",
            )
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise HttpError(
                422, ErrorCode.BAD_PARAMETER, f"{spec.id}.{key} must be text or a number"
            )
        text = str(value)
        if _secret(spec, key) and text in ("", MASK):
            continue  # the masked value came back unchanged: keep the stored one
        if types.get(key) == "integer" and not text.strip().lstrip("-").isdigit():
            raise HttpError(
                422,
                ErrorCode.BAD_PARAMETER,
                f"{spec.id}.{key} must be a whole number, got {text!r}",
            )
        values[key] = text
    return values
