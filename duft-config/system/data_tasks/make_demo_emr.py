"""Demo EMR Setup: creates a synthetic HIV-care EMR, reproducibly, as a SQLite file or
in a PostgreSQL or MySQL/MariaDB database.

Everything comes from ``random.Random(seed)`` and fixed dates, so the same seed always
gives the same table contents wherever they are written; the Demo ETLs and their tests
rely on that. All names and records are invented.

As a data task it writes to the EMR connection's file. From a terminal:

    python make_demo_emr.py --out demo_emr.sqlite --seed 42 --clients 500
    python make_demo_emr.py --connection EMR_SERVER          # the values in user/config.json
    python make_demo_emr.py --url mysql://duft@127.0.0.1:3306/demo_emr   # password asked

On a server the four tables are dropped and recreated in the given database (with DATE
columns and foreign keys), in one go; the database itself must exist.

Its size is the synthetic data's rules, one function per table, sharing one seeded
generator.
"""

from __future__ import annotations

import argparse
import getpass
import os
import random
import sqlite3
import sys
from contextlib import closing
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import data_task_helpers as helpers

from services.dte_tools.data_task_tools import (
    find_json_arg,
    get_resolved_parameters_for_connection,
    initialise_data_task,
)

DEFAULT_SEED = 42
DEFAULT_CLIENTS = 500
FIRST_ENROLMENT = date(2016, 1, 1)
DATA_END = date(2026, 6, 30)  # the day the synthetic EMR was "extracted"

# (facility_id, name, district, facility_type, share of clients)
FACILITIES = [
    (1, "Riverside District Hospital", "Riverside", "hospital", 0.32),
    (2, "Hillview Health Centre", "Riverside", "health centre", 0.22),
    (3, "Lakeside Clinic", "Lakeshore", "clinic", 0.18),
    (4, "Northgate Health Centre", "Northgate", "health centre", 0.16),
    (5, "Mbali Community Clinic", "Lakeshore", "clinic", 0.12),
]

SCHEMA = """
CREATE TABLE facility (
    facility_id   INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    district      TEXT NOT NULL,
    facility_type TEXT NOT NULL
);
CREATE TABLE client (
    client_id      INTEGER PRIMARY KEY,
    sex            TEXT NOT NULL CHECK (sex IN ('F', 'M')),
    birth_date     TEXT NOT NULL,
    facility_id    INTEGER NOT NULL REFERENCES facility (facility_id),
    enrolment_date TEXT NOT NULL,
    art_start_date TEXT
);
CREATE TABLE visit (
    visit_id    INTEGER PRIMARY KEY,
    client_id   INTEGER NOT NULL REFERENCES client (client_id),
    facility_id INTEGER NOT NULL REFERENCES facility (facility_id),
    visit_date  TEXT NOT NULL,
    visit_type  TEXT NOT NULL
);
CREATE TABLE lab_result (
    lab_result_id INTEGER PRIMARY KEY,
    client_id     INTEGER NOT NULL REFERENCES client (client_id),
    facility_id   INTEGER NOT NULL REFERENCES facility (facility_id),
    test_type     TEXT NOT NULL CHECK (test_type IN ('VL', 'CD4')),
    sample_date   TEXT NOT NULL,
    result_value  INTEGER NOT NULL,
    result_unit   TEXT NOT NULL
);
"""


# The same tables on a database server; standard SQL that PostgreSQL and MariaDB/MySQL
# both accept. Dropped children first, so foreign keys never block a rerun.
SERVER_DROP = "DROP TABLE IF EXISTS lab_result, visit, client, facility"
SERVER_SCHEMA = (
    """CREATE TABLE facility (
        facility_id   INTEGER PRIMARY KEY,
        name          VARCHAR(100) NOT NULL,
        district      VARCHAR(100) NOT NULL,
        facility_type VARCHAR(50) NOT NULL
    )""",
    """CREATE TABLE client (
        client_id      INTEGER PRIMARY KEY,
        sex            CHAR(1) NOT NULL CHECK (sex IN ('F', 'M')),
        birth_date     DATE NOT NULL,
        facility_id    INTEGER NOT NULL,
        enrolment_date DATE NOT NULL,
        art_start_date DATE,
        FOREIGN KEY (facility_id) REFERENCES facility (facility_id)
    )""",
    """CREATE TABLE visit (
        visit_id    INTEGER PRIMARY KEY,
        client_id   INTEGER NOT NULL,
        facility_id INTEGER NOT NULL,
        visit_date  DATE NOT NULL,
        visit_type  VARCHAR(20) NOT NULL,
        FOREIGN KEY (client_id) REFERENCES client (client_id),
        FOREIGN KEY (facility_id) REFERENCES facility (facility_id)
    )""",
    """CREATE TABLE lab_result (
        lab_result_id INTEGER PRIMARY KEY,
        client_id     INTEGER NOT NULL,
        facility_id   INTEGER NOT NULL,
        test_type     VARCHAR(3) NOT NULL CHECK (test_type IN ('VL', 'CD4')),
        sample_date   DATE NOT NULL,
        result_value  INTEGER NOT NULL,
        result_unit   VARCHAR(20) NOT NULL,
        FOREIGN KEY (client_id) REFERENCES client (client_id),
        FOREIGN KEY (facility_id) REFERENCES facility (facility_id)
    )""",
)
URL_KINDS = {"postgresql": "postgresql", "postgres": "postgresql", "mysql": "mysql",
             "mariadb": "mariadb"}  # fmt: skip


def generate(seed: int = DEFAULT_SEED, clients: int = DEFAULT_CLIENTS) -> dict[str, list[tuple]]:
    """The rows of every table, derived only from ``seed`` (no clock, no global random)."""
    rng = random.Random(seed)
    facility_ids = [f[0] for f in FACILITIES]
    shares = [f[4] for f in FACILITIES]
    rows: dict[str, list[tuple]] = {
        "facility": [f[:4] for f in FACILITIES],
        "client": [],
        "visit": [],
        "lab_result": [],
    }
    visits, labs = rows["visit"], rows["lab_result"]
    enrolment_days = (DATA_END - timedelta(days=90) - FIRST_ENROLMENT).days

    for client_id in range(1, clients + 1):
        facility_id = rng.choices(facility_ids, weights=shares)[0]
        sex = "F" if rng.random() < 0.62 else "M"
        enrolled = FIRST_ENROLMENT + timedelta(days=rng.randrange(enrolment_days))
        age = rng.randint(0, 14) if rng.random() < 0.06 else int(rng.triangular(15, 70, 30))
        birth = enrolled - timedelta(days=int(age * 365.25) + rng.randrange(365))
        art_start = enrolled + timedelta(days=rng.randrange(30)) if rng.random() < 0.94 else None
        # About one client in seven stops coming (lost to follow-up, moved, died).
        last_day = DATA_END
        if rng.random() < 0.14:
            last_day = min(DATA_END, enrolled + timedelta(days=rng.randint(90, 1500)))
        rows["client"].append(
            (client_id, sex, birth.isoformat(), facility_id, enrolled.isoformat(), _iso(art_start))
        )

        # Visits about every three months.
        visit_date, visit_type = enrolled, "enrolment"
        while visit_date <= last_day:
            _add(visits, client_id, facility_id, visit_date.isoformat(), visit_type)
            visit_date += timedelta(days=rng.randint(80, 100))
            visit_type = "refill" if rng.random() < 0.4 else "clinical"

        # A baseline CD4 count, then viral loads 6 months after ART start and every 6-12 months.
        cd4 = max(5, int(rng.gauss(380, 170)))
        _add(labs, client_id, facility_id, "CD4", enrolled.isoformat(), cd4, "cells/uL")
        if art_start is None:
            continue
        adherence = 0.93 if rng.random() < 0.85 else 0.45  # ~85% of tests suppressed overall
        sample_date = art_start + timedelta(days=rng.randint(170, 200))
        while sample_date <= last_day:
            if rng.random() < adherence:
                # 20 copies/mL stands for "below the detection limit".
                copies = 20 if rng.random() < 0.55 else rng.randint(21, 999)
            else:
                copies = int(10 ** rng.uniform(3, 5.7))
            _add(labs, client_id, facility_id, "VL", sample_date.isoformat(), copies, "copies/mL")
            sample_date += timedelta(days=rng.randint(180, 365))
    return rows


def create_demo_emr(
    path: str | os.PathLike, seed: int = DEFAULT_SEED, clients: int = DEFAULT_CLIENTS
) -> dict[str, int]:
    """Write a fresh demo EMR to ``path`` and return its row counts per table.

    The file is built beside the target and moved into place at the end, so a reader
    never sees a half-written database and an old one survives a failed run.
    """
    if clients < 1:
        raise ValueError(f"clients must be at least 1, not {clients}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    building = path.with_name(path.name + ".building")
    building.unlink(missing_ok=True)
    rows = generate(seed, clients)
    con = sqlite3.connect(building)
    try:
        con.executescript(SCHEMA)
        with con:
            for table, table_rows in rows.items():
                marks = ", ".join("?" * len(table_rows[0]))
                con.executemany(f"INSERT INTO {table} VALUES ({marks})", table_rows)
    finally:
        con.close()
    building.replace(path)
    return {table: len(table_rows) for table, table_rows in rows.items()}


def create_demo_emr_on_server(
    con: Any, seed: int = DEFAULT_SEED, clients: int = DEFAULT_CLIENTS
) -> dict[str, int]:
    """(Re)create the demo EMR's tables in a server database through a DB-API connection
    whose driver uses ``%s`` placeholders (psycopg, PyMySQL); returns row counts.

    PostgreSQL does it in one transaction; MySQL commits each DDL statement by itself,
    so there a failed run can leave empty tables (run it again).
    """
    if clients < 1:
        raise ValueError(f"clients must be at least 1, not {clients}")
    rows = generate(seed, clients)
    cursor = con.cursor()
    try:
        cursor.execute(SERVER_DROP)
        for statement in SERVER_SCHEMA:
            cursor.execute(statement)
        for table, table_rows in rows.items():
            marks = ", ".join(["%s"] * len(table_rows[0]))
            cursor.executemany(f"INSERT INTO {table} VALUES ({marks})", table_rows)
        con.commit()
    except BaseException:
        con.rollback()
        raise
    finally:
        cursor.close()
    return {table: len(table_rows) for table, table_rows in rows.items()}


def connection_from_url(url: str) -> dict[str, Any]:
    """``postgresql://user:pw@host:5432/db`` as connection values (like user/config.json)."""
    parts = urlsplit(url)
    kind = URL_KINDS.get(parts.scheme.lower())
    database = parts.path.lstrip("/")
    if kind is None or not parts.hostname or not database:
        raise ValueError(
            f"{parts.scheme or url!r}: give a URL like postgresql://user@host:5432/database "
            "or mysql://user@host:3306/database"
        )
    values: dict[str, Any] = {"type": kind, "server": parts.hostname, "database": unquote(database)}
    if parts.port:
        values["port"] = parts.port
    if parts.username:
        values["username"] = unquote(parts.username)
    if parts.password is not None:
        values["password"] = unquote(parts.password)
    return values


def _add(table_rows: list[tuple], *values: object) -> None:
    """Append a row whose id is its position, so ids follow generation order."""
    table_rows.append((len(table_rows) + 1, *values))


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None


def _command_line(argv: list[str]) -> dict:
    """Options given as ``--out/--seed/--clients`` when the task is run by hand."""
    parser = argparse.ArgumentParser(description="Create the synthetic demo EMR.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", help="SQLite file to write (default: the EMR connection's file)")
    where.add_argument("--url", help="a server database: postgresql://... or mysql://...")
    where.add_argument("--connection", help="a connection id whose values to use (EMR_SERVER)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS)
    return vars(parser.parse_args([a for a in argv if not a.lstrip().startswith("{")]))


def main() -> None:
    # Run by hand with --flags, those decide; else the task's parameters (duftd's, or
    # standalone the JSON argument resolved against the task's defaults).
    by_hand = any(arg.startswith("--") for arg in sys.argv[1:])
    params = _command_line(sys.argv[1:]) if by_hand else find_json_arg(sys.argv)
    environment = initialise_data_task("Demo EMR Setup", params=params)
    seed = int(params.get("seed", DEFAULT_SEED))
    clients = int(params.get("clients", DEFAULT_CLIENTS))
    out = params.get("out")
    if params.get("url") or params.get("connection"):
        _fill_server(environment, params, seed, clients)
        return
    path = Path(out) if out else helpers.sqlite_path(get_resolved_parameters_for_connection("EMR"))

    environment.log_message(f"Creating the demo EMR with {clients} clients (seed {seed}) in {path}")
    environment.report_progress(0, 1, "generating")
    counts = create_demo_emr(path, seed=seed, clients=clients)
    summary = ", ".join(f"{n} {table} rows" for table, n in counts.items())
    environment.log_message(f"Demo EMR created: {summary}")
    environment.report_progress(1, 1, "done")


def _fill_server(environment: Any, params: dict, seed: int, clients: int) -> None:
    """The ``--url`` / ``--connection`` path: fill a server database."""
    if params.get("url"):
        values = connection_from_url(params["url"])
        if "password" not in values and sys.stdin.isatty():
            values["password"] = getpass.getpass(f"password for {values.get('username')}: ")
    else:
        values = get_resolved_parameters_for_connection(params["connection"])
    if helpers.connection_kind(values) == "sqlite3":
        path = helpers.sqlite_path(values)
        environment.log_message(f"Creating the demo EMR with {clients} clients in {path}")
        counts = create_demo_emr(path, seed=seed, clients=clients)
    else:
        where = helpers.describe_connection(values)
        environment.log_message(
            f"Creating the demo EMR with {clients} clients (seed {seed}) in {where}"
        )
        environment.report_progress(0, 1, "generating")
        with closing(helpers.connect(values)) as con:
            counts = create_demo_emr_on_server(con, seed=seed, clients=clients)
    summary = ", ".join(f"{n} {table} rows" for table, n in counts.items())
    environment.log_message(f"Demo EMR created: {summary}")
    environment.report_progress(1, 1, "done")


if __name__ == "__main__":
    main()
