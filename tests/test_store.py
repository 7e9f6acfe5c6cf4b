"""The run store on real SQLite files: migrations in place, retention, event paging."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from duftd.store import MIGRATIONS, Store


async def _finished_run(store: Store, task: str, created_at: float | None = None) -> int:
    run = await store.create_run(task, "test", {}, {}, {})
    await store.update_run(run["id"], state="succeeded", ended_at=time.time())
    if created_at is not None:
        with sqlite3.connect(store.path) as db:
            db.execute("UPDATE runs SET created_at = ? WHERE id = ?", (created_at, run["id"]))
    return run["id"]


async def test_a_version_one_store_is_migrated_in_place(tmp_path: Path) -> None:
    """A store written by schema version 1 keeps its runs and gains the later columns."""
    path = tmp_path / "runs.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
        db.execute(
            "INSERT INTO runs (task_id, state, requested_by, params, ignored, spec, created_at) "
            "VALUES ('OLD', 'succeeded', 'cli', '{}', '{}', '{}', 1.0)"
        )
    store = await Store.open(path)
    try:
        run = await store.get_run(1)
        assert run is not None and run["task_id"] == "OLD" and run["output"] is None
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_retention_deletes_old_and_surplus_finished_runs_with_their_events(
    tmp_path: Path,
) -> None:
    """Pruning removes runs older than the cut-off and beyond N per task, never active ones."""
    store = await Store.open(tmp_path / "runs.sqlite")
    try:
        old = await _finished_run(store, "A", created_at=time.time() - 10 * 86400)
        recent_a = [await _finished_run(store, "A") for _ in range(3)]
        active = (await store.create_run("A", "test", {}, {}, {}))["id"]
        b = await _finished_run(store, "B")
        await store.insert_events([(old, 1, 1.0, "log", "{}"), (recent_a[0], 1, 1.0, "log", "{}")])

        pruned = await store.prune(older_than=time.time() - 86400, keep_per_task=2)

        assert pruned == [old, recent_a[0]]
        remaining = {run["id"] for run in await store.list_runs(limit=100)}
        assert remaining == {recent_a[1], recent_a[2], active, b}
        assert await store.events_after(old, 0, 10) == []
        assert await store.events_after(recent_a[0], 0, 10) == []
    finally:
        await store.close()


async def test_events_page_in_sequence_order(tmp_path: Path) -> None:
    """events_after returns a run's events after a sequence number, in order, up to a limit."""
    store = await Store.open(tmp_path / "runs.sqlite")
    try:
        run = (await store.create_run("A", "test", {}, {}, {}))["id"]
        await store.insert_events(
            [(run, seq, float(seq), "log", f'{{"n": {seq}}}') for seq in range(1, 11)]
        )
        page = await store.events_after(run, 3, 4)
        assert [e["seq"] for e in page] == [4, 5, 6, 7]
        assert page[0]["data"] == {"n": 4}
        assert await store.max_seq(run) == 10
    finally:
        await store.close()
