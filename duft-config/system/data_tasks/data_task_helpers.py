"""Small helpers shared by the data tasks in this folder.

Tasks import this module by name (``import data_task_helpers``): a task runs with its
own folder on ``sys.path``, so helpers can live beside the tasks that use them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from services.dte_tools.data_task_tools import get_data_dir


def sqlite_path(connection_params: dict[str, Any]) -> Path:
    """The SQLite file of a connection; a relative ``sqlite3file`` lives in the data folder.

    Raises ``ValueError`` for a connection that is not SQLite, so a task fails with a
    message the user can act on instead of a confusing driver error.
    """
    kind = str(connection_params.get("type") or "").lower()
    file_name = connection_params.get("sqlite3file")
    if kind != "sqlite3" or not file_name:
        raise ValueError(
            f"this task needs a sqlite3 connection with a sqlite3file (got type {kind!r}); "
            "set it in duft-config/user/config.json"
        )
    path = Path(file_name).expanduser()
    return path if path.is_absolute() else Path(get_data_dir()) / path


def connect_sqlite(connection_params: dict[str, Any]) -> sqlite3.Connection:
    """An open connection to a connection's SQLite file (created if missing)."""
    path = sqlite_path(connection_params)
    path.parent.mkdir(parents=True, exist_ok=True)
    return sqlite3.connect(path)


KINDS = {
    "sqlite3": "sqlite3",
    "sqlite": "sqlite3",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mariadb",
}
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}


def connection_kind(connection_params: dict[str, Any]) -> str:
    """The connection's ``type``, normalised: sqlite3, postgresql, mysql or mariadb."""
    kind = str(connection_params.get("type") or "").strip()
    found = KINDS.get(kind.lower())
    if found is None:
        raise ValueError(
            f"connection type {kind or '(not set)'!r} is not one of sqlite3, postgresql, "
            "mysql, mariadb; set type in duft-config/user/config.json"
        )
    return found


def connect(connection_params: dict[str, Any], timeout: int = 30) -> Any:
    """An open DB-API connection to a connection of any supported type.

    Server drivers (psycopg, PyMySQL) are imported only when used. Close it when done
    (``contextlib.closing``); nothing is committed for you.
    """
    kind = connection_kind(connection_params)
    if kind == "sqlite3":
        return connect_sqlite(connection_params)
    server = connection_params.get("server")
    if not server:
        raise ValueError("this connection has no server; set it in duft-config/user/config.json")
    port = int(connection_params.get("port") or DEFAULT_PORTS[kind])
    user = connection_params.get("username") or None
    password = connection_params.get("password")
    database = connection_params.get("database") or None
    if kind == "postgresql":
        import psycopg

        return psycopg.connect(
            host=server,
            port=port,
            user=user,
            password=password,
            dbname=database,
            connect_timeout=timeout,
        )
    import pymysql

    return pymysql.connect(
        host=server,
        port=port,
        user=user,
        password=password or "",
        database=database,
        connect_timeout=timeout,
        charset="utf8mb4",
    )


def paramstyle(connection_params: dict[str, Any]) -> str:
    """The DB-API paramstyle of :func:`connect`'s connection: ``qmark`` or ``format``."""
    return "qmark" if connection_kind(connection_params) == "sqlite3" else "format"


def describe_connection(connection_params: dict[str, Any]) -> str:
    """A one-line description of a connection that is safe to log (never the password)."""
    kind = connection_params.get("type") or "unknown type"
    if str(kind).lower() == "sqlite3":
        return f"{kind} file {connection_params.get('sqlite3file') or '(not set)'}"
    where = connection_params.get("server") or "(no server)"
    port = connection_params.get("port")
    database = connection_params.get("database") or "(no database)"
    return f"{kind} database {database} on {where}{f':{port}' if port else ''}"


def as_bool(value: Any) -> bool:
    """A parameter as a boolean; forms and command lines often send "true"/"false" strings."""
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)
