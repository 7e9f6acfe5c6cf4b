"""The run store: every run and every event, in one SQLite file (WAL) behind aiosqlite.

This is the only module that speaks SQL. The schema is versioned with
``PRAGMA user_version`` and migrated in place on open.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from dte_tools.wire import ACTIVE_STATES

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
    # 3: how many of a run's events could not be stored (the reason says why).
    """
    ALTER TABLE runs ADD COLUMN events_lost INTEGER NOT NULL DEFAULT 0;
    """,
)

RUN_COLUMNS = (
    "id, task_id, state, requested_by, params, ignored, created_at, started_at, ended_at, "
    "exit_code, reason, error_count, warning_count, pid, output, worker_id, events_lost"
)
UPDATABLE = frozenset(
    {
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
        self.path = path

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
        await self._read.close()
        await self._db.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def create_run(
        self,
        task_id: str,
        requested_by: str,
        params: dict[str, Any],
        ignored: dict[str, str],
        spec: dict[str, Any],
    ) -> dict[str, Any]:
        """Insert a queued run and return it as a dict."""
        now = time.time()
        cursor = await self._commit(
            "INSERT INTO runs (task_id, state, requested_by, params, ignored, spec, created_at) "
            "VALUES (?, 'queued', ?, ?, ?, ?, ?)",
            (task_id, requested_by, json.dumps(params), json.dumps(ignored), json.dumps(spec), now),
        )
        # Read back on the writing connection: the reader may hold an older snapshot.
        run = await self._fetch_run(self._db, cursor.lastrowid or 0)
        assert run is not None
        return run

    async def update_run(self, run_id: int, **fields: Any) -> None:
        unknown = set(fields) - UPDATABLE
        if unknown:
            raise ValueError(f"cannot update run columns {sorted(unknown)}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        await self._commit(
            f"UPDATE runs SET {assignments} WHERE id = ?", (*fields.values(), run_id)
        )

    async def _commit(self, sql: str, args: Sequence[Any], many: bool = False) -> Any:
        """One statement in its own transaction, rolled back if it fails (a full disk), so
        the next write starts clean. Only the pipeline's writer task calls the writers."""
        try:
            if many:
                cursor = await self._db.executemany(sql, args)
            else:
                cursor = await self._db.execute(sql, args)
            await self._db.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                await self._db.rollback()
            raise
        return cursor

    async def get_run(self, run_id: int) -> dict[str, Any] | None:
        return await self._fetch_run(self._read, run_id)

    @staticmethod
    async def _fetch_run(db: aiosqlite.Connection, run_id: int) -> dict[str, Any] | None:
        async with db.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)) as cursor:
            row = await cursor.fetchone()
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
        async with self._read.execute("SELECT state, COUNT(*) FROM runs GROUP BY state") as cursor:
            return {state: count for state, count in await cursor.fetchall()}

    async def insert_events(self, rows: Sequence[EventRow]) -> None:
        """Store a batch of ``(run_id, seq, ts, kind, data_json)`` rows in one commit."""
        await self._commit(
            "INSERT INTO events (run_id, seq, ts, kind, data) VALUES (?, ?, ?, ?, ?)",
            rows,
            many=True,
        )

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

    async def prune(self, older_than: float | None, keep_per_task: int | None) -> list[int]:
        """Delete finished runs (and their events) past the retention policy; returns their ids."""
        doomed: set[int] = set()
        marks = ", ".join("?" for _ in ACTIVE_STATES)
        if older_than is not None:
            async with self._db.execute(
                f"SELECT id FROM runs WHERE state NOT IN ({marks}) AND created_at < ?",
                (*ACTIVE_STATES, older_than),
            ) as cursor:
                doomed.update(row[0] for row in await cursor.fetchall())
        if keep_per_task is not None:
            async with self._db.execute(
                # Only finished runs count towards the N kept per task.
                f"SELECT id FROM (SELECT id, ROW_NUMBER() OVER "
                f"(PARTITION BY task_id ORDER BY id DESC) AS n FROM runs "
                f"WHERE state NOT IN ({marks})) WHERE n > ?",
                (*ACTIVE_STATES, keep_per_task),
            ) as cursor:
                doomed.update(row[0] for row in await cursor.fetchall())
        if doomed:
            await self._delete_runs(sorted(doomed))
        return sorted(doomed)

    async def _delete_runs(self, run_ids: Iterable[int]) -> None:
        rows = [(run_id,) for run_id in run_ids]
        await self._db.executemany("DELETE FROM events WHERE run_id = ?", rows)
        await self._db.executemany("DELETE FROM runs WHERE id = ?", rows)
        await self._db.commit()
