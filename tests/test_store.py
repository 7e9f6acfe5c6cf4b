"""The run store on real SQLite files: migrations in place, retention, event paging."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from duftd import store as store_module
from duftd.store import MIGRATIONS, NewRun, Store


async def _queued_run(store: Store, task: str) -> int:
    (run,) = await store.create_runs([NewRun(task, "test", {}, {}, "{}")])
    return run["id"]


async def _finished_run(store: Store, task: str, created_at: float | None = None) -> int:
    run_id = await _queued_run(store, task)
    await store.update_run(run_id, state="succeeded", ended_at=time.time())
    if created_at is not None:
        with sqlite3.connect(store.path) as db:
            db.execute("UPDATE runs SET created_at = ? WHERE id = ?", (created_at, run_id))
    return run_id


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


async def test_runs_created_together_come_back_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs created in one call (several statements of one transaction) are returned in
    the order given, as stored, with ascending ids."""
    monkeypatch.setattr(store_module, "RUNS_PER_INSERT", 2)
    store = await Store.open(tmp_path / "runs.sqlite")
    try:
        await _queued_run(store, "FIRST")
        wanted = [
            NewRun(f"T{i}", "cli", {"n": i}, {"x": "why"} if i % 2 else {}, "{}") for i in range(5)
        ]
        created = await store.create_runs(wanted)
        assert [(r["task_id"], r["params"], r["ignored"]) for r in created] == [
            (w.task_id, w.params, w.ignored) for w in wanted
        ]
        assert [r["id"] for r in created] == list(range(2, 7))
        assert all(r["state"] == "queued" and r["requested_by"] == "cli" for r in created)
        assert [await store.get_run(r["id"]) for r in created] == created
    finally:
        await store.close()


def _counted(path: Path) -> dict[str, int]:
    """Runs per state, counted the slow way."""
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT state, COUNT(*) FROM runs GROUP BY state").fetchall())


async def test_a_version_two_store_gains_the_history_indexes_and_run_counts(
    tmp_path: Path,
) -> None:
    """A store of the schema before the history indexes keeps its runs and events, answers
    its queries through the new indexes, and its kept counts per state match a count
    after the migration, after inserts, state changes and retention."""
    path = tmp_path / "runs.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[0] + MIGRATIONS[1] + "PRAGMA user_version = 2;")
        for state in ("failed", "succeeded", "succeeded", "running"):
            db.execute(
                "INSERT INTO runs (task_id, state, requested_by, params, ignored, spec, "
                "created_at) VALUES ('OLD', ?, 'cli', '{}', '{}', '{}', 1.0)",
                (state,),
            )
        db.execute("INSERT INTO events VALUES (1, 1, 1.0, 'log', '{\"message\": \"kept\"}')")
    store = await Store.open(path)
    try:
        (run,) = await store.list_runs(task_id="OLD", state="failed")
        assert run["id"] == 1
        assert (await store.events_after(1, 0, 10))[0]["data"] == {"message": "kept"}
        assert await store.counts_by_state() == _counted(path)
        assert _counted(path) == {"failed": 1, "succeeded": 2, "running": 1}
        new = await _queued_run(store, "NEW")
        await store.update_run(4, state="lost", ended_at=2.0)
        await store.update_run(new, state="running")
        await store.update_run(new, state="running")  # unchanged: counted once
        assert await store.counts_by_state() == _counted(path)
        await store.prune(older_than=10.0, keep_per_task=None)
        assert await store.counts_by_state() == _counted(path) == {"running": 1}
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM runs WHERE task_id = 'OLD' AND state = 'failed'"
        ).fetchall()
        assert "runs_by_task_state" in str(plan)
        plan = db.execute("EXPLAIN QUERY PLAN SELECT id FROM runs WHERE created_at < 5").fetchall()
        assert "runs_by_created" in str(plan)


async def test_retention_deletes_old_and_surplus_finished_runs_with_their_events(
    tmp_path: Path,
) -> None:
    """Pruning removes runs older than the cut-off and beyond N per task, never active ones."""
    store = await Store.open(tmp_path / "runs.sqlite")
    try:
        old = await _finished_run(store, "A", created_at=time.time() - 10 * 86400)
        recent_a = [await _finished_run(store, "A") for _ in range(3)]
        active = await _queued_run(store, "A")
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


async def test_a_failed_retention_pass_is_tried_again_in_full(tmp_path: Path) -> None:
    """When deleting fails (here the writer raises, as on a full disk), the next pass still
    finds the surplus runs: the mark of tasks already looked at moves only after a delete."""
    store = await Store.open(tmp_path / "runs.sqlite")

    async def failing_write(job: object) -> None:
        raise OSError("database or disk is full")

    try:
        runs = [await _finished_run(store, "A") for _ in range(3)]
        with pytest.raises(OSError, match="disk is full"):
            await store.prune(older_than=None, keep_per_task=2, write=failing_write)
        assert await store.prune(older_than=None, keep_per_task=2) == [runs[0]]
    finally:
        await store.close()


async def test_events_page_in_sequence_order(tmp_path: Path) -> None:
    """events_after returns a run's events after a sequence number, in order, up to a limit."""
    store = await Store.open(tmp_path / "runs.sqlite")
    try:
        run = await _queued_run(store, "A")
        await store.insert_events(
            [(run, seq, float(seq), "log", f'{{"n": {seq}}}') for seq in range(1, 11)]
        )
        page = await store.events_after(run, 3, 4)
        assert [e["seq"] for e in page] == [4, 5, 6, 7]
        assert page[0]["data"] == {"n": 4}
        assert await store.max_seq(run) == 10
    finally:
        await store.close()


async def test_retention_in_small_batches_keeps_exactly_the_newest_runs_per_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With batches of 4 events and 100 runs, pruning 130 of 150 runs (7 events each)
    deletes exactly those with all their events and keeps the newest 20 whole; a later
    pass counts a run that was active during the first and has finished since, and the
    next one a newly finished run."""
    monkeypatch.setattr(store_module, "RETENTION_BATCH_EVENTS", 4)
    store = await Store.open(tmp_path / "runs.sqlite")
    try:
        runs = [await _finished_run(store, "A") for _ in range(150)]
        slow = await _queued_run(store, "A")  # active: never counted
        other = [await _finished_run(store, "B") for _ in range(3)]
        await store.insert_events(
            [(run, seq, 1.0, "log", "{}") for run in [*runs, *other] for seq in range(1, 8)]
        )

        assert await store.prune(older_than=None, keep_per_task=20) == runs[:130]

        remaining = {run["id"] for run in await store.list_runs(limit=1000)}
        assert remaining == {*runs[130:], slow, *other}
        for run in runs[:130]:
            assert await store.max_seq(run) == 0
        for run in [*runs[130:], *other]:
            assert await store.max_seq(run) == 7

        await store.update_run(slow, state="succeeded", ended_at=time.time())
        assert await store.prune(older_than=None, keep_per_task=20) == [runs[130]]
        newer = await _finished_run(store, "A")
        assert await store.prune(older_than=None, keep_per_task=20) == [runs[131]]
        remaining = {run["id"] for run in await store.list_runs(task_id="A", limit=1000)}
        assert remaining == {*runs[132:], slow, newer}
    finally:
        await store.close()
