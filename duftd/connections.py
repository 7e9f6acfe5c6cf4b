"""Testing a data connection: open it with its driver, run its test query, time it.

Pure and synchronous, so ``duft test-connection`` can run it in-process without a
daemon and duftd runs it in a thread (``asyncio.to_thread``) with a timeout around it.
The connection's ``type`` (from the user's values, as in DUFT) picks the driver:

========================  ==============================================
``sqlite3``               the standard library; ``sqlite3file`` relative to the data folder
``postgresql``            psycopg 3
``mysql``, ``mariadb``    PyMySQL
``mssql``                 python-tds (pure Python, no ODBC driver to install)
========================  ==============================================

Decisions where DUFT is silent:

- The query is the connection's ``testquery``, else ``SELECT 1``.
- A failure is a result (``ok: false`` with the driver's message), not an exception:
  only an id that is neither declared nor has user values is refused outright. Ids with
  values but no declaration (common in real configs) can be tested.
- Every secret (password-type params, and values whose key looks secret) is masked as
  ``********`` in every message, in every form :mod:`dte_tools.redact` knows (raw,
  JSON-escaped, repr, URL-encoded, base64) a driver might echo.
- SQLite is opened read-write but never created: testing a connection must not leave a
  new empty database behind. The query runs in a transaction that is rolled back.
- ``timeout_s`` bounds connecting and the query, through each driver's own timeouts.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dte_tools.redact import Redactor, secret_values
from duftd.config import ConnectionSpec, LoadedConfig
from duftd.errors import UnknownConnectionError

DEFAULT_QUERY = "SELECT 1"
KINDS = {
    "sqlite3": "sqlite3",
    "sqlite": "sqlite3",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "posgtressql": "postgresql",  # the spelling in DUFT's own connection labels
    "pgsql": "postgresql",
    "mysql": "mysql",
    "mariadb": "mariadb",
    "mssql": "mssql",
    "sqlserver": "mssql",
}
SUPPORTED = "sqlite3, postgresql, mysql, mariadb, mssql"
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433}


class ConnectionProblem(ValueError):
    """The user's values cannot make a connection (no type, bad port...)."""


@dataclass(frozen=True)
class Target:
    """One connection to test: its id, spec (None when undeclared) and user values."""

    id: str
    spec: ConnectionSpec | None
    values: dict[str, Any]
    data_dir: Path

    @property
    def redactor(self) -> Redactor:
        fields = self.spec.password_fields if self.spec is not None else set()
        return Redactor(secret_values(self.values, fields))

    @property
    def query(self) -> str:
        query = self.spec.testquery if self.spec is not None else None
        return query.strip() if query and query.strip() else DEFAULT_QUERY


@dataclass(frozen=True)
class ConnectionTestResult:
    """What a test found; ``message`` is safe to show (secrets masked)."""

    id: str
    type: str | None
    target: str
    query: str
    ok: bool
    seconds: float
    message: str
    result: str | None = None  # the first row the query returned, shortened

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def declared_connections(config: LoadedConfig) -> dict[str, ConnectionSpec]:
    """Every declared connection by id: system ones, then apps' (the first app wins)."""
    found = dict(config.system_connections)
    for app in sorted(config.app_connections):
        for cid, spec in config.app_connections[app].items():
            found.setdefault(cid, spec)
    return found


def find_target(config: LoadedConfig, connection_id: str, data_dir: Path) -> Target:
    """The connection to test; refuses an id with neither a declaration nor values."""
    declared = declared_connections(config)
    values = config.user.data_connection_parameters.get(connection_id)
    if connection_id not in declared and values is None:
        known = ", ".join(sorted(declared)) or "none"
        raise UnknownConnectionError(
            f"no connection {connection_id!r}: it is not declared in any "
            f"data_connections.json and has no values in user/config.json (declared: {known})"
        )
    return Target(connection_id, declared.get(connection_id), dict(values or {}), data_dir)


def kind_of(values: dict[str, Any]) -> str:
    """The normalised driver kind of a connection's ``type``; raises ConnectionProblem."""
    raw = str(values.get("type") or "").strip()
    if not raw:
        raise ConnectionProblem(f"no type set; set type to one of {SUPPORTED}")
    kind = KINDS.get(raw.lower().replace(" ", ""))
    if kind is None:
        raise ConnectionProblem(f"type {raw!r} is not supported; use one of {SUPPORTED}")
    return kind


def describe(values: dict[str, Any]) -> str:
    """A one-line description that is safe to show (never the password)."""
    kind = str(values.get("type") or "unknown type")
    if KINDS.get(kind.lower()) == "sqlite3":
        return f"{kind} file {values.get('sqlite3file') or '(not set)'}"
    server = values.get("server") or "(no server)"
    port = values.get("port")
    database = values.get("database") or "(no database)"
    return f"{kind} database {database} on {server}{f':{port}' if port else ''}"


def sqlite_path(values: dict[str, Any], data_dir: Path) -> Path:
    """A connection's SQLite file; a relative ``sqlite3file`` is in the data folder."""
    name = str(values.get("sqlite3file") or "").strip()
    if not name:
        raise ConnectionProblem("no sqlite3file set; name the SQLite file (in the data folder)")
    path = Path(name).expanduser()
    return path if path.is_absolute() else data_dir / path


def _server(values: dict[str, Any], kind: str) -> tuple[str, int]:
    server = str(values.get("server") or "").strip()
    if not server:
        raise ConnectionProblem("no server set; set server to the database host")
    port = values.get("port")
    if port in (None, ""):
        return server, DEFAULT_PORTS[kind]
    try:
        number = int(str(port).strip())
    except ValueError:
        raise ConnectionProblem(f"port {port!r} is not a number") from None
    if not 0 < number < 65536:
        raise ConnectionProblem(f"port {number} is out of range")
    return server, number


def connect(kind: str, values: dict[str, Any], data_dir: Path, timeout_s: float) -> Any:
    """An open DB-API connection; drivers are imported only when used."""
    user, password = values.get("username") or None, values.get("password")
    password = None if password is None else str(password)
    database = values.get("database") or None
    if kind == "sqlite3":
        path = sqlite_path(values, data_dir)
        if not path.is_file():
            raise ConnectionProblem(
                f"SQLite file {path} does not exist (a task that writes to it creates it)"
            )
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        con.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)  # interrupts
        return con
    host, port = _server(values, kind)
    if kind == "postgresql":
        import psycopg

        statement_ms = int(timeout_s * 1000)
        return psycopg.connect(
            host=host,
            port=port,
            user=user,
            password=password,
            dbname=database,
            connect_timeout=max(2, round(timeout_s)),  # libpq's minimum is 2 s
            options=f"-c statement_timeout={statement_ms}",
        )
    if kind in ("mysql", "mariadb"):
        import pymysql

        return pymysql.connect(
            host=host,
            port=port,
            user=user,
            password=password or "",
            database=database,
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            write_timeout=timeout_s,
        )
    import pytds

    return pytds.connect(
        dsn=host,
        port=port,
        user=user,
        password=password,
        database=database,
        login_timeout=timeout_s,
        timeout=timeout_s,
    )


def error_text(error: BaseException) -> str:
    """A driver error as one readable line, with its causes when its own text is empty."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join(str(current).split())
        parts.append(f"{type(current).__name__}: {text}" if text else type(current).__name__)
        if text:
            break
        current = current.__cause__ or current.__context__
    return " (caused by ".join(parts) + ")" * (len(parts) - 1)


def run_test(target: Target, timeout_s: float = 10.0) -> ConnectionTestResult:
    """Connect, run the test query, report; never raises for a connection's failure."""
    values, query = target.values, target.query
    started = time.monotonic()
    kind: str | None = None
    first_row: str | None = None
    try:
        kind = kind_of(values)
        con = connect(kind, values, target.data_dir, timeout_s)
        try:
            cursor = con.cursor()
            cursor.execute(query)
            row = cursor.fetchone() if cursor.description else None
            if row is not None:
                shown = ", ".join(str(v) for v in row)
                first_row = shown if len(shown) <= 100 else shown[:97] + "..."
            con.rollback()
        finally:
            con.close()
    except Exception as error:  # every driver failure is the answer here
        seconds = time.monotonic() - started
        message = error_text(error) if not isinstance(error, ConnectionProblem) else str(error)
        return _result(target, kind, False, seconds, message, None)
    seconds = time.monotonic() - started
    message = f"connected and ran {query} in {seconds * 1000:.0f} ms"
    return _result(target, kind, True, seconds, message, first_row)


def timed_out(target: Target, seconds: float) -> ConnectionTestResult:
    """The result when the driver did not answer within the caller's bound."""
    message = f"no answer within {seconds:.0f} s (the server or network may be down)"
    try:
        kind: str | None = kind_of(target.values)
    except ConnectionProblem:
        kind = None
    return _result(target, kind, False, seconds, message, None)


def _result(
    target: Target, kind: str | None, ok: bool, seconds: float, message: str, row: str | None
) -> ConnectionTestResult:
    mask = target.redactor.mask
    return ConnectionTestResult(
        id=target.id,
        type=kind,
        target=mask(describe(target.values)),
        query=mask(target.query),
        ok=ok,
        seconds=round(seconds, 4),
        message=mask(message),
        result=mask(row) if row is not None else None,
    )
