"""The Demo ETL's logic, one function per stage, so the DEMO-ETL notebook stays readable.

Every stage builds a ``staging_<table>`` table in the analysis database, reading the EMR
attached read-only; :func:`publish` then swaps all of them in at once, in one
transaction. So a failed run leaves yesterday's tables intact, a dashboard never sees a
half-built set, and running the ETL again gives identical tables.

When the EMR is on a database server (the DEMO-ETL-SERVER task), :func:`extract_emr`
first copies its tables into a private SQLite file through any DB-API connection, so
the transformations are the same SQL whatever the source; and when the analysis
database is a server (PostgreSQL), :func:`publish_to_server` loads the finished staging
tables there in one transaction instead of :func:`publish`.

Only the standard library is used: the demo must work on a fresh machine (the server
paths take connections opened by the caller).

Its size is the demo's stages, one function each; they share the staging and publishing
helpers here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

STAGING = "staging_"
ANALYSIS_TABLES = ("dim_client", "fact_visit", "fact_lab_result", "vl_suppression_by_month")
VL_SUPPRESSED_BELOW = 1000  # copies/mL, the WHO threshold for viral suppression
AGE_BANDS = ((1, "<1"), (5, "1-4"), (10, "5-9"), (15, "10-14"), (20, "15-19"), (25, "20-24"),
             (30, "25-29"), (35, "30-34"), (40, "35-39"), (45, "40-44"), (50, "45-49"))  # fmt: skip

# The EMR tables the ETL reads, with the columns it needs (their SQLite types).
EMR_TABLES = {
    "facility": "facility_id INTEGER PRIMARY KEY, name TEXT, district TEXT, facility_type TEXT",
    "client": "client_id INTEGER PRIMARY KEY, sex TEXT, birth_date TEXT, facility_id INTEGER, "
    "enrolment_date TEXT, art_start_date TEXT",
    "visit": "visit_id INTEGER PRIMARY KEY, client_id INTEGER, facility_id INTEGER, "
    "visit_date TEXT, visit_type TEXT",
    "lab_result": "lab_result_id INTEGER PRIMARY KEY, client_id INTEGER, facility_id INTEGER, "
    "test_type TEXT, sample_date TEXT, result_value INTEGER, result_unit TEXT",
}
BATCH = 5000
PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}
# SQLite column types of the analysis tables -> a server's (PostgreSQL's) types.
SERVER_TYPES = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "TEXT": "TEXT"}

INDEXES = (
    "CREATE INDEX IF NOT EXISTS ix_fact_visit_client ON fact_visit (client_id)",
    "CREATE INDEX IF NOT EXISTS ix_fact_lab_result_client ON fact_lab_result (client_id)",
)


def parse_reporting_date(value: object) -> date:
    """The ``reporting_date`` parameter as a date; a clear error for anything else."""
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise ValueError(f"reporting_date must look like 2026-06-30, not {value!r}") from None


def age_group(birth_date: str | None, on: str) -> str:
    """The five-year age band (as in PEPFAR reporting) of someone born on ``birth_date``."""
    if not birth_date:
        return "Unknown"
    born, day = date.fromisoformat(birth_date), date.fromisoformat(on)
    age = day.year - born.year - ((day.month, day.day) < (born.month, born.day))
    return next((band for limit, band in AGE_BANDS if age < limit), "50+")


def open_analysis(target: Path, source: Path) -> sqlite3.Connection:
    """The analysis database, with the EMR attached read-only as ``emr``.

    Autocommit mode, because each stage opens its own explicit transaction.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(Path(target).resolve().as_uri(), uri=True, isolation_level=None)
    con.execute("ATTACH DATABASE ? AS emr", (Path(source).resolve().as_uri() + "?mode=ro",))
    con.create_function("age_group", 2, age_group, deterministic=True)
    # Swap tables by name without SQLite re-checking users' views mid-swap (see publish).
    con.execute("PRAGMA legacy_alter_table = ON")
    for (name,) in con.execute(
        "SELECT name FROM main.sqlite_master WHERE type = 'table' AND name LIKE 'staging\\_%' "
        "ESCAPE '\\'"
    ).fetchall():
        con.execute(f'DROP TABLE "{name}"')  # left over from a run that failed
    return con


@contextmanager
def transaction(con: sqlite3.Connection) -> Iterator[None]:
    """BEGIN ... COMMIT, or ROLLBACK when the block raises."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def source_counts(con: sqlite3.Connection) -> dict[str, int]:
    """Rows per EMR table, logged by the notebook and kept in ``etl_run_info``."""
    return {
        table: con.execute(f"SELECT COUNT(*) FROM emr.{table}").fetchone()[0]
        for table in ("facility", "client", "visit", "lab_result")
    }


def _stage(con: sqlite3.Connection, table: str, columns: str, select: str, **params) -> int:
    """Rebuild ``staging_<table>`` from ``select`` and return its row count."""
    staging = STAGING + table
    with transaction(con):
        con.execute(f"DROP TABLE IF EXISTS {staging}")
        con.execute(f"CREATE TABLE {staging} ({columns})")
        con.execute(f"INSERT INTO {staging} {select}", params)
    return con.execute(f"SELECT COUNT(*) FROM {staging}").fetchone()[0]


def build_dim_client(con: sqlite3.Connection, reporting_date: date) -> int:
    """One row per client enrolled by the reporting date, with the age group on that date."""
    return _stage(
        con,
        "dim_client",
        """client_id INTEGER PRIMARY KEY, sex TEXT NOT NULL, birth_date TEXT NOT NULL,
        age_group TEXT NOT NULL, facility TEXT NOT NULL, district TEXT NOT NULL,
        enrolment_date TEXT NOT NULL, art_start_date TEXT""",
        """SELECT c.client_id,
                  CASE c.sex WHEN 'F' THEN 'Female' WHEN 'M' THEN 'Male' ELSE 'Unknown' END,
                  c.birth_date, age_group(c.birth_date, :rd),
                  COALESCE(f.name, 'Unknown'), COALESCE(f.district, 'Unknown'),
                  c.enrolment_date,
                  CASE WHEN c.art_start_date <= :rd THEN c.art_start_date END
           FROM emr.client c LEFT JOIN emr.facility f USING (facility_id)
           WHERE c.enrolment_date <= :rd
           ORDER BY c.client_id""",
        rd=reporting_date.isoformat(),
    )


def build_fact_visit(con: sqlite3.Connection, reporting_date: date) -> int:
    """One row per visit up to the reporting date."""
    return _stage(
        con,
        "fact_visit",
        """visit_id INTEGER PRIMARY KEY, client_id INTEGER NOT NULL, visit_date TEXT NOT NULL,
        visit_month TEXT NOT NULL, visit_type TEXT NOT NULL, facility TEXT NOT NULL""",
        """SELECT v.visit_id, v.client_id, v.visit_date, substr(v.visit_date, 1, 7),
                  v.visit_type, COALESCE(f.name, 'Unknown')
           FROM emr.visit v LEFT JOIN emr.facility f USING (facility_id)
           WHERE v.visit_date <= :rd
           ORDER BY v.visit_id""",
        rd=reporting_date.isoformat(),
    )


def build_fact_lab_result(con: sqlite3.Connection, reporting_date: date) -> int:
    """One row per lab result up to the reporting date; viral loads get a suppressed flag."""
    return _stage(
        con,
        "fact_lab_result",
        """lab_result_id INTEGER PRIMARY KEY, client_id INTEGER NOT NULL,
        test_type TEXT NOT NULL, sample_date TEXT NOT NULL, sample_month TEXT NOT NULL,
        result_value INTEGER NOT NULL, result_unit TEXT NOT NULL, suppressed INTEGER,
        facility TEXT NOT NULL""",
        """SELECT l.lab_result_id, l.client_id, l.test_type, l.sample_date,
                  substr(l.sample_date, 1, 7), l.result_value, l.result_unit,
                  CASE WHEN l.test_type = 'VL' THEN l.result_value < :threshold END,
                  COALESCE(f.name, 'Unknown')
           FROM emr.lab_result l LEFT JOIN emr.facility f USING (facility_id)
           WHERE l.sample_date <= :rd
           ORDER BY l.lab_result_id""",
        rd=reporting_date.isoformat(),
        threshold=VL_SUPPRESSED_BELOW,
    )


def build_vl_suppression_by_month(con: sqlite3.Connection) -> int:
    """Viral load tests and suppressed results (< 1000 copies/mL) per month."""
    return _stage(
        con,
        "vl_suppression_by_month",
        """month TEXT PRIMARY KEY, tested INTEGER NOT NULL, suppressed INTEGER NOT NULL,
        suppression_rate REAL NOT NULL""",
        f"""SELECT sample_month, COUNT(*), SUM(suppressed),
                   ROUND(1.0 * SUM(suppressed) / COUNT(*), 4)
            FROM {STAGING}fact_lab_result
            WHERE test_type = 'VL'
            GROUP BY sample_month
            ORDER BY sample_month""",
    )


def publish(
    con: sqlite3.Connection, reporting_date: date, source_file: str, counts: dict[str, int]
) -> None:
    """Replace every analysis table with its staging table, and record the run, atomically."""
    with transaction(con):
        for table in ANALYSIS_TABLES:
            con.execute(f"DROP TABLE IF EXISTS {table}")
            con.execute(f"ALTER TABLE {STAGING}{table} RENAME TO {table}")
        for statement in INDEXES:
            con.execute(statement)
        con.execute("DROP TABLE IF EXISTS etl_run_info")
        con.execute(
            """CREATE TABLE etl_run_info (run_at TEXT NOT NULL, reporting_date TEXT NOT NULL,
            source_file TEXT NOT NULL, source_facilities INTEGER NOT NULL,
            source_clients INTEGER NOT NULL, source_visits INTEGER NOT NULL,
            source_lab_results INTEGER NOT NULL)"""
        )
        con.execute(
            "INSERT INTO etl_run_info VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                datetime.now(UTC).isoformat(timespec="seconds"),
                reporting_date.isoformat(),
                source_file,
                counts["facility"],
                counts["client"],
                counts["visit"],
                counts["lab_result"],
            ),
        )


# -- sources and targets on database servers -------------------------------------------


def _plain(value: Any) -> Any:
    """A driver's value as SQLite stores the demo EMR: ISO text dates, plain numbers."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def extract_emr(source: Any, path: Path) -> dict[str, int]:
    """Copy the EMR tables from ``source`` (any DB-API connection) into a new SQLite file.

    Returns the row count per table. The file is built beside ``path`` and moved into
    place at the end, like the demo EMR itself.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    building = path.with_name(path.name + ".building")
    building.unlink(missing_ok=True)
    counts: dict[str, int] = {}
    with closing(sqlite3.connect(building)) as con:
        for table, columns in EMR_TABLES.items():
            names = [column.split()[0] for column in columns.split(", ")]
            con.execute(f"CREATE TABLE {table} ({columns})")
            insert = f"INSERT INTO {table} VALUES ({', '.join('?' * len(names))})"
            cursor = source.cursor()
            try:
                cursor.execute(f"SELECT {', '.join(names)} FROM {table} ORDER BY {names[0]}")
                counts[table] = 0
                while batch := cursor.fetchmany(BATCH):
                    con.executemany(insert, [tuple(_plain(v) for v in row) for row in batch])
                    counts[table] += len(batch)
            finally:
                cursor.close()
        con.commit()
    source.rollback()  # end the read transaction a server driver may have opened
    building.replace(path)
    return counts


def _server_column(info: Sequence[Any]) -> str:
    """A server column definition from SQLite's ``PRAGMA table_info`` row."""
    _, name, kind, not_null, _, primary_key = info
    server_type = "DATE" if name.endswith("_date") else SERVER_TYPES.get(kind.upper(), "TEXT")
    return (
        f"{name} {server_type}"
        + (" NOT NULL" if not_null else "")
        + (" PRIMARY KEY" if primary_key else "")
    )


def publish_to_server(
    target: Any,
    paramstyle: str,
    con: sqlite3.Connection,
    reporting_date: date,
    source_name: str,
    counts: dict[str, int],
) -> None:
    """Replace every analysis table in a server database with the staging tables built in
    the SQLite workspace ``con``, and record the run, in one transaction.

    ``target`` is a DB-API connection whose DDL is transactional (PostgreSQL), so a
    failure leaves the previous tables and readers never see a half-loaded set.
    ``paramstyle`` is its driver's (``format`` for psycopg). Dates become DATE columns.
    """
    mark = PLACEHOLDERS.get(paramstyle)
    if mark is None:
        raise ValueError(f"paramstyle {paramstyle!r} is not one of {', '.join(PLACEHOLDERS)}")
    cursor = target.cursor()
    try:
        for table in ANALYSIS_TABLES:
            columns = con.execute(f"PRAGMA table_info({STAGING}{table})").fetchall()
            dates = [i for i, column in enumerate(columns) if column[1].endswith("_date")]
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
            cursor.execute(f"CREATE TABLE {table} ({', '.join(map(_server_column, columns))})")
            insert = f"INSERT INTO {table} VALUES ({', '.join([mark] * len(columns))})"
            rows = con.execute(f"SELECT * FROM {STAGING}{table}")
            while batch := rows.fetchmany(BATCH):
                cursor.executemany(insert, [_as_dates(row, dates) for row in batch])
        for statement in INDEXES:
            cursor.execute(statement)
        cursor.execute("DROP TABLE IF EXISTS etl_run_info")
        cursor.execute(
            """CREATE TABLE etl_run_info (run_at TEXT NOT NULL, reporting_date DATE NOT NULL,
            source_file TEXT NOT NULL, source_facilities BIGINT NOT NULL,
            source_clients BIGINT NOT NULL, source_visits BIGINT NOT NULL,
            source_lab_results BIGINT NOT NULL)"""
        )
        cursor.execute(
            f"INSERT INTO etl_run_info VALUES ({', '.join([mark] * 7)})",
            (
                datetime.now(UTC).isoformat(timespec="seconds"),
                reporting_date,
                source_name,
                counts["facility"],
                counts["client"],
                counts["visit"],
                counts["lab_result"],
            ),
        )
        target.commit()
    except BaseException:
        target.rollback()
        raise
    finally:
        cursor.close()


def _as_dates(row: Sequence[Any], dates: list[int]) -> tuple[Any, ...]:
    values = list(row)
    for i in dates:
        if values[i] is not None:
            values[i] = date.fromisoformat(values[i])
    return tuple(values)
