"""The real PostgreSQL and MariaDB servers of this machine, for tests that need them.

Tests make what they need themselves, idempotently: a server that is down is started
(with the same commands as a developer would use), a password-protected account is
created, and each test gets a fresh database that is dropped afterwards.

PostgreSQL here trusts every local connection (``pg_hba.conf``: ``trust``), so it never
checks a password; its authentication failures in tests come from a role that does not
exist, which the driver reports just as it reports a wrong password.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pymysql

from tests.harness import wait_for

HOST = "127.0.0.1"
PG_PORT = 5432
MARIADB_PORT = 3306
TEST_USER = "duft_test"
TEST_PASSWORD = "S3cret-pw"
START_TIMEOUT_S = 30.0


def _pg_admin() -> psycopg.Connection:
    return psycopg.connect(
        host=HOST,
        port=PG_PORT,
        user="postgres",
        dbname="postgres",
        autocommit=True,
        connect_timeout=3,
    )


def _mariadb_admin(database: str | None = None) -> pymysql.Connection:
    return pymysql.connect(
        host=HOST,
        port=MARIADB_PORT,
        user="root",
        password="",
        database=database,
        connect_timeout=3,
        autocommit=True,
    )


def _up(connect: Any) -> bool:
    try:
        connect().close()
    except Exception:  # any failure means "not up yet"
        return False
    return True


def ensure_postgres() -> None:
    """PostgreSQL answers, started here if it was down."""
    if _up(_pg_admin):
        return
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"]
    subprocess.run(command, check=False, capture_output=True, timeout=START_TIMEOUT_S)
    wait_for(lambda: _up(_pg_admin), START_TIMEOUT_S, "PostgreSQL to accept connections", 0.2)


def ensure_mariadb() -> None:
    """MariaDB answers, started here if it was down."""
    if _up(_mariadb_admin):
        return
    daemon = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    command = ["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", daemon]
    subprocess.run(command, check=False, capture_output=True, timeout=START_TIMEOUT_S)
    wait_for(lambda: _up(_mariadb_admin), START_TIMEOUT_S, "MariaDB to accept connections", 0.2)


def ensure_mariadb_user() -> None:
    """The password-protected account ``duft_test`` (MariaDB checks its password)."""
    ensure_mariadb()
    with closing(_mariadb_admin()) as con, con.cursor() as cursor:
        account = f"'{TEST_USER}'@'%' IDENTIFIED BY '{TEST_PASSWORD}'"  # no %s: '%' is literal
        cursor.execute(f"CREATE USER IF NOT EXISTS {account}")
        cursor.execute(f"ALTER USER {account}")
        cursor.execute(f"GRANT SELECT ON test.* TO '{TEST_USER}'@'%'")


def ensure_postgres_user() -> None:
    """The role ``duft_test`` with a password (not checked here: pg_hba trusts local)."""
    ensure_postgres()
    with closing(_pg_admin()) as con:
        exists = con.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (TEST_USER,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        con.execute(f"{verb} ROLE {TEST_USER} LOGIN PASSWORD '{TEST_PASSWORD}'")


def fresh_name() -> str:
    return f"duft_etl_test_{secrets.token_hex(4)}"


@contextmanager
def mariadb_database() -> Iterator[str]:
    """A new MariaDB database that ``duft_test`` may use fully; dropped afterwards."""
    ensure_mariadb_user()
    name = fresh_name()
    with closing(_mariadb_admin()) as con, con.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
        cursor.execute(f"GRANT ALL PRIVILEGES ON {name}.* TO '{TEST_USER}'@'%'")
    try:
        yield name
    finally:
        with closing(_mariadb_admin()) as con, con.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name}")


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new PostgreSQL database owned by ``duft_test``; dropped afterwards."""
    ensure_postgres_user()
    name = fresh_name()
    with closing(_pg_admin()) as con:
        con.execute(f"CREATE DATABASE {name} OWNER {TEST_USER}")
    try:
        yield name
    finally:
        with closing(_pg_admin()) as con:
            con.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def postgres_rows(database: str, sql: str) -> list[tuple[Any, ...]]:
    connect = psycopg.connect(host=HOST, port=PG_PORT, user="postgres", dbname=database)
    with closing(connect) as con:
        return [tuple(row) for row in con.execute(sql).fetchall()]
