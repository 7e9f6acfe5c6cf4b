"""DEMO-ETL-SERVER through a real daemon, from real MariaDB and PostgreSQL sources.

Each test creates fresh databases (``duft_etl_test_<random>``), fills the source with
``make_demo_emr.py`` from a seed, runs the ETL twice and compares the analysis tables
with what the SQLite Demo ETL builds from the same seed: the same rows, both times.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from tests.harness import EMBEDDED_CONFIG, DaemonProcess
from tests.servers import (
    HOST,
    MARIADB_PORT,
    PG_PORT,
    TEST_PASSWORD,
    TEST_USER,
    mariadb_database,
    postgres_database,
    postgres_rows,
)

DATA_TASKS = EMBEDDED_CONFIG / "system" / "data_tasks"
sys.path.insert(0, str(DATA_TASKS))  # the task modules, to build the expected tables

import demo_etl_lib as etl  # noqa: E402
import make_demo_emr  # noqa: E402

SEED, CLIENTS, REPORTING_DATE = 7, 150, date(2026, 6, 30)
TABLES = (*etl.ANALYSIS_TABLES,)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def expected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[Any, ...]]]:
    """The analysis tables the SQLite Demo ETL builds from the same seeded EMR."""
    folder = tmp_path_factory.mktemp("expected")
    emr, ana = folder / "emr.sqlite", folder / "ana.sqlite"
    make_demo_emr.create_demo_emr(emr, seed=SEED, clients=CLIENTS)
    con = etl.open_analysis(ana, emr)
    etl.build_dim_client(con, REPORTING_DATE)
    etl.build_fact_visit(con, REPORTING_DATE)
    etl.build_fact_lab_result(con, REPORTING_DATE)
    etl.build_vl_suppression_by_month(con)
    etl.publish(con, REPORTING_DATE, "emr.sqlite", etl.source_counts(con))
    con.close()
    return sqlite_tables(ana)


def sqlite_tables(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with closing(sqlite3.connect(path)) as con:
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in TABLES}


def postgres_tables(database: str) -> dict[str, list[tuple[Any, ...]]]:
    """Like :func:`sqlite_tables`, with DATE values as the ISO text SQLite keeps."""

    def plain(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(v.isoformat() if isinstance(v, date) else v for v in row)

    return {
        t: [plain(row) for row in postgres_rows(database, f"SELECT * FROM {t} ORDER BY 1")]
        for t in TABLES
    }


def set_user_values(config_dir: Path, **connections: dict[str, Any]) -> None:
    path = config_dir / "user" / "config.json"
    user = json.loads(path.read_text(encoding="utf-8"))
    user["dataConnectionParameters"].update(connections)
    path.write_text(json.dumps(user, indent=2), encoding="utf-8")


def fill_source(*args: str, env: dict[str, str] | None = None) -> None:
    """Run make_demo_emr.py as a user would, to put the seeded EMR on a server."""
    script = str(DATA_TASKS / "make_demo_emr.py")
    command = [sys.executable, script, *args, "--seed", str(SEED), "--clients", str(CLIENTS)]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stderr
    assert TEST_PASSWORD not in result.stdout + result.stderr


def run_etl(daemon: DaemonProcess) -> list[dict[str, Any]]:
    """One DEMO-ETL-SERVER run to its end; returns its events after checking it succeeded."""
    reply = daemon.submit("DEMO-ETL-SERVER")
    run = daemon.wait_final(reply["run"]["id"], timeout=90)
    events = daemon.events(run["id"])
    assert run["state"] == "succeeded", (run, events[-5:])
    assert run["error_count"] == 0
    assert TEST_PASSWORD not in json.dumps(events) + json.dumps(run)
    return events


def server_values(kind: str, database: str) -> dict[str, Any]:
    port = MARIADB_PORT if kind == "mariadb" else PG_PORT
    return {
        "type": kind,
        "server": HOST,
        "port": str(port),
        "username": TEST_USER,
        "password": TEST_PASSWORD,
        "database": database,
    }


def test_etl_from_mariadb_into_sqlite_gives_the_same_rows_twice(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess], expected: dict[str, Any]
) -> None:
    """With a MariaDB EMR (filled by make_demo_emr.py --url) the ETL builds in the SQLite
    analysis file exactly the tables the SQLite Demo ETL builds from the same seed, and a
    second run leaves the same rows and one etl_run_info row."""
    with mariadb_database() as database:
        url = f"mysql://{TEST_USER}:{TEST_PASSWORD}@{HOST}:{MARIADB_PORT}/{database}"
        fill_source("--url", url)
        set_user_values(config_dir, EMR_SERVER=server_values("mariadb", database))
        daemon = daemon_factory(config_dir)
        analysis = daemon.data_dir / "analysis.sqlite"

        events = run_etl(daemon)
        first = sqlite_tables(analysis)
        run_etl(daemon)

        assert first == expected
        assert sqlite_tables(analysis) == expected
        with closing(sqlite3.connect(analysis)) as con:
            info = con.execute("SELECT source_file, source_clients FROM etl_run_info").fetchall()
        assert info == [(f"mariadb database {database} on {HOST}:{MARIADB_PORT}", CLIENTS)]
        messages = [e["data"].get("message", "") for e in events if e["kind"] == "log"]
        assert any(m.startswith("Source rows: 5 facility, 150 client") for m in messages)
        assert not (daemon.data_dir / "temp" / "demo_etl_server").exists()


def test_etl_from_postgresql_into_postgresql_gives_the_same_rows_twice(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess], expected: dict[str, Any]
) -> None:
    """With the EMR in one PostgreSQL database (filled by make_demo_emr.py --connection)
    and ANA of type postgresql, the ETL loads the expected tables (dates as DATE) into the
    analysis database, and a second run replaces them with the same rows."""
    with postgres_database() as source, postgres_database() as target:
        set_user_values(
            config_dir,
            EMR_SERVER=server_values("postgresql", source),
            ANA=server_values("postgresql", target),
        )
        daemon = daemon_factory(config_dir)
        fill_source(
            "--connection", "EMR_SERVER", env={**daemon.env, "DUFT_CONFIG_DIR": str(config_dir)}
        )

        run_etl(daemon)
        first = postgres_tables(target)
        run_etl(daemon)

        assert first == expected
        assert postgres_tables(target) == expected
        assert postgres_rows(target, "SELECT source_clients FROM etl_run_info") == [(CLIENTS,)]
        types = postgres_rows(
            target,
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'dim_client' AND column_name = 'birth_date'",
        )
        assert types == [("date",)]
        assert not (daemon.data_dir / "analysis.sqlite").exists()
