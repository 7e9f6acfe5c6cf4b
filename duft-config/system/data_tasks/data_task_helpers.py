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
