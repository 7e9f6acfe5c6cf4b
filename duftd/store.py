"""The run store: every run and every event, in one SQLite file (WAL) behind aiosqlite.

This is the only module that speaks SQL. The schema is versioned with
``PRAGMA user_version`` and migrated in place on open.

Its size is the schema's migrations and the queries, kept together because this is the
one module that speaks SQL.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple

import aiosqlite

from dte_tools.wire import ACTIVE_STATES, State

# Each entry moves the schema from version i to i + 1; never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id TEXT NOT NULL,
        state TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        params TEXT NOT NULL,
        ignored TEXT NOT NULL,
        spec TEXT NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        ended_at REAL,
        exit_code INTEGER,
        reason TEXT,
        error_count INTEGER NOT NULL DEFAULT 0,
        warning_count INTEGER NOT NULL DEFAULT 0,
        pid INTEGER
    );
    CREATE INDEX runs_by_task ON runs (task_id, id);
    CREATE INDEX runs_by_state ON runs (state);
    CREATE TABLE events (
        run_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID;
    """,
    # 2: where a notebook run's executed copy is kept, and the worker id its processes
    # carry, so a restarted daemon can recognise (and stop) the orphans of a lost run.
    """
    ALTER TABLE runs ADD COLUMN output TEXT;
    ALTER TABLE runs ADD COLUMN worker_id TEXT;
    """,
    # 3: indexes that keep queries flat as history grows: runs of a task in one state,
    # and retention finding old runs without reading every run.
    """
    CREATE INDEX runs_by_task_state ON runs (task_id, state, id);
    CREATE INDEX runs_by_created ON runs (created_at);
    """,
    # 4: the number of runs in each state, kept by triggers, so health need not count them.
    """
    CREATE TABLE run_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO run_counts SELECT state, COUNT(*) FROM runs GROUP BY state;
    CREATE TRIGGER run_counts_insert AFTER INSERT ON runs BEGIN
        INSERT INTO run_counts VALUES (NEW.state, 1)
            ON CONFLICT (state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER run_counts_update AFTER UPDATE OF state ON runs
    WHEN OLD.state IS NOT NEW.state BEGIN
        UPDATE run_counts SET n = n - 1 WHERE state = OLD.state;
        INSERT INTO run_counts VALUES (NEW.state, 1)
            ON CONFLICT (state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER run_counts_delete AFTER DELETE ON runs BEGIN
        UPDATE run_counts SET n = n - 1 WHERE state = OLD.state;
    END;
    """,
    # 5: how many of a run's events could not be stored (the reason says why).
    """
    ALTER TABLE runs ADD COLUMN events_lost INTEGER NOT NULL DEFAULT 0;
    """,
    # 6: the Dask worker and host a run placed on a cluster ran on (--launcher dask).
    """
    ALTER TABLE runs ADD COLUMN dask_worker TEXT;
    ALTER TABLE runs ADD COLUMN host TEXT;
    """,
)
# Retention deletes at most this many events per transaction, so the event writer and
# submits wait for one short batch at a time, never for a whole pass.
RETENTION_BATCH_EVENTS = 5_000
RETENTION_BATCH_RUNS = 100

RUN_COLUMNS = (
    "id, task_id, state, requested_by, params, ignored, created_at, started_at, ended_at, "
    "exit_code, reason, error_count, warning_count, pid, output, worker_id, events_lost, "
    "dask_worker, host"
)
UPDATABLE = frozenset(
    {
        "dask_worker",
        "host",
        "state",
        "started_at",
        "ended_at",
        "exit_code",
        "reason",
        "error_count",
        "warning_count",
        "pid",
        "output",
        "worker_id",
        "events_lost",
    }
)
EventRow = tuple[int, int, float, str, str]
# Event rows per INSERT statement (the pipeline's whole batch). sqlite3 lets go of the GIL
# for every statement step and then waits to take it back from a busy event loop (up to
# the 5 ms switch interval), so executemany, one step per row, made a 500-event batch
# crawl under a flood; one statement steps once, and is one hand-over to the store's
# thread. A flood's full batches reuse one cached statement.
ROWS_PER_INSERT = 500


@functools.cache
def _insert_events_sql(rows: int) -> str:
    return "INSERT INTO events (run_id, seq, ts, kind, data) VALUES " + ",".join(
        ["(?, ?, ?, ?, ?)"] * rows
    )


# Runs per INSERT statement of create_runs: 7 parameters each, as many as the events'.
RUNS_PER_INSERT = 500


@functools.cache
def _insert_runs_sql(rows: int) -> str:
    return (
        "INSERT INTO runs (task_id, state, requested_by, params, ignored, spec, created_at) "
        f"VALUES {','.join(['(?, ?, ?, ?, ?, ?, ?)'] * rows)}"
    )


class NewRun(NamedTuple):
    """A run to create: its task, who asked, its parameters and its task's spec (JSON)."""

    task_id: str
    requested_by: str
    params: dict[str, Any]
    ignored: dict[str, str]
    spec: str


# Runs one write (a coroutine function) and returns its result: the daemon passes its one
# writer's, so that retention's transactions take turns with the events'.
Writer = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


async def _at_once(do: Callable[[], Awaitable[Any]]) -> Any:
    return await do()


def _run_dict(row: aiosqlite.Row) -> dict[str, Any]:
    run = dict(row)
    run["params"] = json.loads(run["params"])
    run["ignored"] = json.loads(run["ignored"])
    return run


class Store:
    """One owner of the database connection; use ``async with await Store.open(path)``."""

    def __init__(self, db: aiosqlite.Connection, reader: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        # Queries get their own connection (and thread): under WAL they read committed data
        # without queueing behind the event writer's batches.
        self._read = reader
        # One run by its id is read on the loop itself: the lookup takes tens of
        # microseconds, where the hand-over to the reader's thread and back waited for the
        # GIL and a loop turn (get-run p99 10-30 ms while two tasks flood events).
        self._lookup = sqlite3.connect(path, check_same_thread=False)
        self._lookup.row_factory = sqlite3.Row
        self.path = path
        # Runs from this id on may have finished since the last retention pass.
        self._retention_from_id = 0

    @classmethod
    async def open(cls, path: Path) -> Store:
        db = await aiosqlite.connect(path)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives a daemon crash; only an OS crash may lose the tail.
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA foreign_keys=ON")
        await cls._migrate_connection(db, path)
        reader = await aiosqlite.connect(path)
        reader.row_factory = aiosqlite.Row
        return cls(db, reader, path)

    @staticmethod
    async def _migrate_connection(db: aiosqlite.Connection, path: Path) -> None:
        async with db.execute("PRAGMA user_version") as cursor:
            (version,) = await cursor.fetchone()  # type: ignore[misc]
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"run store {path} has schema version {version}, newer than this duftd "
                f"knows ({len(MIGRATIONS)}); upgrade duftd or use another --state-dir"
            )
        for number in range(version, len(MIGRATIONS)):
            await db.executescript(
                f"BEGIN; {MIGRATIONS[number]} PRAGMA user_version = {number + 1}; COMMIT;"
            )

    async def close(self) -> None:
        self._lookup.close()
        await self._read.close()
        await self._db.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def create_runs(self, runs: Sequence[NewRun]) -> list[dict[str, Any]]:
        """Insert queued runs in one transaction; returns them as dicts, in the same order.

        Submits arriving together are stored together: a multi-row ``INSERT``, the rows
        read back, one commit; three hand-overs to the writer's thread for the lot, where
        each run alone took five. (Not ``RETURNING``: SQLite has it only from 3.35.)"""
        if not runs:
            return []
        now = time.time()
        try:
            for first in range(0, len(runs), RUNS_PER_INSERT):
                chunk = runs[first : first + RUNS_PER_INSERT]
                args = chain.from_iterable(
                    (
                        run.task_id,
                        State.QUEUED,
                        run.requested_by,
                        json.dumps(run.params),
                        json.dumps(run.ignored),
                        run.spec,
                        now,
                    )
                    for run in chunk
                )
                cursor = await self._db.execute(_insert_runs_sql(len(chunk)), list(args))
            # One writer, in one transaction: the rows took the ids after the table's
            # largest, one by one in the order of the VALUES, so the last id says them all.
            last = cursor.lastrowid or 0
            rows = await self._db.execute_fetchall(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE id > ? ORDER BY id", (last - len(runs),)
            )
            await self._db.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                await self._db.rollback()
            raise
        created = [_run_dict(row) for row in rows]
        assert [run["task_id"] for run in created] == [run.task_id for run in runs]
        return created

    async def update_run(self, run_id: int, **fields: Any) -> None:
        unknown = set(fields) - UPDATABLE
        if unknown:
            raise ValueError(f"cannot update run columns {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        await self._commit(
            f"UPDATE runs SET {assignments} WHERE id = ?", (*fields.values(), run_id)
        )

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writing connection for one transaction: committed at the end, rolled back if
        anything in it fails (a full disk), so the next write starts clean. Only the
        pipeline's writer task calls the writers."""
        try:
            yield self._db
            await self._db.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                await self._db.rollback()
            raise

    async def _commit(self, sql: str, args: Sequence[Any]) -> Any:
        """One statement in its own transaction."""
        async with self._transaction() as db:
            return await db.execute(sql, args)

    async def _commit_all(self, statements: list[tuple[str, Sequence[Any]]]) -> None:
        """Several statements in one transaction."""
        async with self._transaction() as db:
            for sql, args in statements:
                await db.execute(sql, args)

    async def get_run(self, run_id: int) -> dict[str, Any] | None:
        row = self._lookup.execute(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
        return _run_dict(row) if row else None

    async def list_runs(
        self, task_id: str | None = None, state: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Newest first."""
        where, args = [], []
        if task_id is not None:
            where.append("task_id = ?")
            args.append(task_id)
        if state is not None:
            where.append("state = ?")
            args.append(state)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        async with self._read.execute(
            f"SELECT {RUN_COLUMNS} FROM runs {clause} ORDER BY id DESC LIMIT ?", (*args, limit)
        ) as cursor:
            return [_run_dict(row) for row in await cursor.fetchall()]

    async def unfinished_runs(self) -> list[dict[str, Any]]:
        """Runs left queued, starting or running."""
        marks = ", ".join("?" for _ in ACTIVE_STATES)
        async with self._db.execute(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE state IN ({marks}) ORDER BY id",
            tuple(ACTIVE_STATES),
        ) as cursor:
            return [_run_dict(row) for row in await cursor.fetchall()]

    async def counts_by_state(self) -> dict[str, int]:
        async with self._read.execute("SELECT state, n FROM run_counts WHERE n > 0") as cursor:
            return {state: count for state, count in await cursor.fetchall()}

    async def insert_events(self, rows: Sequence[EventRow]) -> None:
        """Store a batch of ``(run_id, seq, ts, kind, data_json)`` rows in one commit."""
        statements = [
            (_insert_events_sql(len(chunk)), list(chain.from_iterable(chunk)))
            for chunk in (
                rows[i : i + ROWS_PER_INSERT] for i in range(0, len(rows), ROWS_PER_INSERT)
            )
        ]
        await self._commit_all(statements)

    async def events_after(self, run_id: int, after: int, limit: int) -> list[dict[str, Any]]:
        async with self._read.execute(
            "SELECT seq, ts, kind, data FROM events WHERE run_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (run_id, after, limit),
        ) as cursor:
            rows = await cursor.fetchall()
        return [
            {"seq": seq, "ts": ts, "kind": kind, "data": json.loads(data)}
            for seq, ts, kind, data in rows
        ]

    async def max_seq(self, run_id: int) -> int:
        async with self._read.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?", (run_id,)
        ) as cursor:
            (seq,) = await cursor.fetchone()  # type: ignore[misc]
        return int(seq)

    async def prune(
        self, older_than: float | None, keep_per_task: int | None, write: Writer | None = None
    ) -> list[int]:
        """Delete finished runs (and their events) past the retention policy; returns their ids.

        Indexes find them (old runs by creation time; for the count per task, only the
        tasks of runs created or still active at the last pass, since only a run finishing
        adds to a task's count), so a pass costs what it deletes, not the history's size.
        """
        active = f"state IN ({', '.join('?' for _ in ACTIVE_STATES)})"
        finished = f"NOT {active}"
        doomed: set[int] = set()
        if older_than is not None:
            async with self._read.execute(
                f"SELECT id FROM runs WHERE created_at < ? AND {finished}",
                (older_than, *ACTIVE_STATES),
            ) as cursor:
                doomed.update(row[0] for row in await cursor.fetchall())
        if keep_per_task is not None:
            async with self._read.execute(
                # Taken first: a run finishing later than this is active now or newer.
                f"SELECT COALESCE(MIN(id), (SELECT COALESCE(MAX(id), 0) + 1 FROM runs)) "
                f"FROM runs WHERE {active}",
                tuple(ACTIVE_STATES),
            ) as cursor:
                (next_from_id,) = await cursor.fetchone()  # type: ignore[misc]
            # The first pass looks at every task, through an index of tasks; later ones at
            # the tasks of runs from the mark on (not DISTINCT: SQLite would answer that by
            # walking the whole index).
            since = self._retention_from_id
            async with (
                self._read.execute("SELECT DISTINCT task_id FROM runs")
                if since == 0
                else self._read.execute("SELECT task_id FROM runs WHERE id >= ?", (since,))
            ) as cursor:
                tasks = {row[0] for row in await cursor.fetchall()}
            for task_id in sorted(tasks):
                async with self._read.execute(
                    # Only finished runs count towards the N kept per task. The index has
                    # each run's state: ten times faster than looking up every run's row.
                    f"SELECT id FROM runs INDEXED BY runs_by_task_state "
                    f"WHERE task_id = ? AND {finished} ORDER BY id DESC LIMIT -1 OFFSET ?",
                    (task_id, *ACTIVE_STATES, keep_per_task),
                ) as cursor:
                    doomed.update(row[0] for row in await cursor.fetchall())
        pruned = sorted(doomed)
        await self._delete_runs(pruned, write or _at_once)
        if keep_per_task is not None:  # only now: a failed delete is looked for again
            self._retention_from_id = next_from_id
        return pruned

    async def _delete_runs(self, run_ids: Sequence[int], write: Writer) -> None:
        """Delete runs and their events in transactions of a bounded number of events, each
        done through ``write`` (the daemon's one writer, in order with the events)."""
        for first in range(0, len(run_ids), RETENTION_BATCH_RUNS):
            batch = run_ids[first : first + RETENTION_BATCH_RUNS]
            marks = ", ".join("?" for _ in batch)
            while await write(lambda batch=batch, marks=marks: self._delete_some(batch, marks)):
                pass

    async def _delete_some(self, batch: Sequence[int], marks: str) -> bool:
        """Delete up to RETENTION_BATCH_EVENTS events of ``batch``, and the runs once none
        is left, in one transaction; True if events are left.

        One commit for a run whose events fit in a batch: the commit, not the rows, was
        the larger part of a pass on a large store."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "DELETE FROM events WHERE (run_id, seq) IN (SELECT run_id, seq FROM events "
                f"WHERE run_id IN ({marks}) LIMIT ?)",
                (*batch, RETENTION_BATCH_EVENTS),
            )
            more = cursor.rowcount >= RETENTION_BATCH_EVENTS
            if not more:
                await db.execute(f"DELETE FROM runs WHERE id IN ({marks})", batch)
        return more
