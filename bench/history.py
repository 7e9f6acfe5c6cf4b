"""A run store filled directly with SQL: years of history without running a task.

``make bench`` measures the store's operations on a generated history beside the same
operations on a store holding one run of the same shape, so the ratio says how the cost
grows with what a site has accumulated.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
import time
from pathlib import Path

from bench.common import Row, timed
from dte_tools.wire import Op
from duftd.store import Store
from tests.harness import DaemonProcess

# The figures; smaller ones (e.g. BENCH_HISTORY_EVENTS=2000000) for a quick look.
HISTORY_RUNS = int(os.environ.get("BENCH_HISTORY_RUNS", 100_000))
HISTORY_EVENTS = int(os.environ.get("BENCH_HISTORY_EVENTS", 20_000_000))
# 500 runs of each task at 100,000 runs: the default --retention-runs keeps them all.
HISTORY_TASKS = 200
# The reference store: the same shape with 50 runs of each of 20 tasks, so that a query
# for one task's or one state's newest 50 runs returns as many rows as on the history.
REFERENCE_RUNS, REFERENCE_TASKS = 1_000, 20
YEARS_S = 5 * 365 * 86400.0
SPEC = '{"id": "HIST", "python_file": "hist.py", "kind": "script", "timeout_seconds": null}'
REPS = 50


def generate(path: Path, runs: int, events: int, tasks: int, now: float | None = None) -> float:
    """Create the store at ``path`` with ``runs`` finished runs of ``tasks`` tasks, spread
    over five years up to ``now``, and ``events`` events spread evenly over them; returns
    the seconds it took. Every task fails one run in twenty."""
    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(_create_schema(path))
    now = time.time() if now is None else now
    per_run = max(events // runs, 1)
    step = YEARS_S / runs
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=OFF")  # a bulk load: WAL again at the end
        db.execute("PRAGMA synchronous=OFF")
        db.execute(
            "WITH RECURSIVE numbers(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM numbers "
            "WHERE n < :runs) "
            "INSERT INTO runs (id, task_id, state, requested_by, params, ignored, spec, "
            "created_at, started_at, ended_at, exit_code, error_count, warning_count) "
            "SELECT n, 'HIST-' || printf('%03d', n % :tasks), "
            "CASE (n / :tasks) % 20 WHEN 0 THEN 'failed' WHEN 7 THEN 'cancelled' "
            "ELSE 'succeeded' END, "
            "'schedule', '{\"period\": \"2024-01\"}', '{}', :spec, "
            ":start + n * :step, :start + n * :step + 0.05, :start + n * :step + 30, "
            "(n / :tasks) % 20 = 0, (n / :tasks) % 20 = 0, 0 FROM numbers",
            {"runs": runs, "tasks": tasks, "spec": SPEC, "start": now - YEARS_S, "step": step},
        )
        db.execute("CREATE TEMP TABLE seqs (seq INTEGER PRIMARY KEY)")
        db.execute(
            "WITH RECURSIVE numbers(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM numbers "
            "WHERE n < ?) INSERT INTO seqs SELECT n FROM numbers",
            (per_run,),
        )
        chunk = 2_000
        for first in range(1, runs + 1, chunk):
            db.execute(
                "INSERT INTO events (run_id, seq, ts, kind, data) "
                "SELECT runs.id, seqs.seq, runs.started_at + seqs.seq * 0.01, "
                "CASE WHEN seqs.seq IN (1, ?3) THEN 'state' ELSE 'log' END, "
                'CASE WHEN seqs.seq = 1 THEN \'{"state":"running"}\' '
                'WHEN seqs.seq = ?3 THEN \'{"state":"succeeded","exit_code":0}\' '
                'ELSE \'{"level":"info","message":"row \' || seqs.seq || '
                "' of a generated history, about the length of a real log line\"}' END "
                "FROM runs, seqs WHERE runs.id BETWEEN ?1 AND ?2 ORDER BY runs.id, seqs.seq",
                (first, min(first + chunk - 1, runs), per_run),
            )
            db.commit()
        db.execute("PRAGMA journal_mode=WAL")
    return time.perf_counter() - started


async def _create_schema(path: Path) -> None:
    store = await Store.open(path)
    await store.close()


def history_growth(config: Path, scratch: Path) -> list[Row]:
    """Each store operation on a generated history beside the same on a small store, then
    control while retention deletes a tenth of the history."""
    per_run = max(HISTORY_EVENTS // HISTORY_RUNS, 1)
    big, small = scratch / "history-big", scratch / "history-small"
    generated_s = generate(big / "runs.sqlite", HISTORY_RUNS, HISTORY_EVENTS, HISTORY_TASKS)
    generate(small / "runs.sqlite", REFERENCE_RUNS, REFERENCE_RUNS * per_run, REFERENCE_TASKS)
    keep = max(500, -(-HISTORY_RUNS // HISTORY_TASKS))
    ours = _store_figures(config, big, scratch, HISTORY_RUNS // 2, keep)
    ref = _store_figures(config, small, scratch, 1, keep)
    history = f"{HISTORY_RUNS:,} runs, {HISTORY_EVENTS:,} events"
    rows = [
        Row(
            f"history: {name}",
            "ms",
            ours[name],
            f"same, {REFERENCE_RUNS:,} runs",
            ref[name],
            target="<= 2x",
            notes={"history": history} if name == "daemon start-up" else {},
        )
        for name in ours
        if name != "first retention pass after start"
    ]
    rows[-1].notes["first pass after start, ms"] = [
        round(statistics.median(figures["first retention pass after start"]), 1)
        for figures in (ours, ref)
    ]
    rows.append(_bytes_per_event(big / "runs.sqlite", generated_s))
    rows.append(_control_during_retention(config, big, scratch))
    return rows


def _store_figures(
    config: Path, state: Path, scratch: Path, run_id: int, keep: int
) -> dict[str, list[float]]:
    """Milliseconds of each operation, through a daemon on ``state`` (retention in-process)."""
    args = ["--no-spares", "--retention-days", "3650", "--retention-runs", str(keep)]
    figures: dict[str, list[float]] = {"daemon start-up": []}
    for _ in range(3):
        daemon = DaemonProcess(config, state, scratch / "data", args)
        figures["daemon start-up"].append(1000 * timed(daemon.start))
        daemon.stop(timeout=60)
    daemon = DaemonProcess(config, state, scratch / "data", args).start()
    try:
        figures["submit"] = []
        for _ in range(10):
            start = time.perf_counter()
            submitted = daemon.submit("BENCH-SCRIPT")["run"]["id"]
            figures["submit"].append(1000 * (time.perf_counter() - start))
            daemon.wait_final(submitted)
        queries = {
            "runs, newest 50": (Op.RUNS, {}),
            "runs of one task": (Op.RUNS, {"task": "HIST-007"}),
            "runs in one state": (Op.RUNS, {"state": "failed"}),
            "runs of one task in one state": (Op.RUNS, {"task": "HIST-007", "state": "succeeded"}),
            "events of one run": (Op.EVENTS, {"run": run_id, "limit": 1000}),
            "health (counts runs by state)": (Op.HEALTH, {}),
        }
        for name, (op, query) in queries.items():
            figures[name] = [_request_ms(daemon, op, query) for _ in range(REPS)]
    finally:
        daemon.stop(timeout=60)
    first, steady = asyncio.run(_retention_passes(state / "runs.sqlite", keep))
    figures["first retention pass after start"] = first
    figures["retention pass deleting one run"] = steady
    return figures


def _request_ms(daemon: DaemonProcess, op: str, args: dict[str, object]) -> float:
    start = time.perf_counter()
    daemon.request(op, **args)
    return 1000 * (time.perf_counter() - start)


async def _retention_passes(path: Path, keep: int) -> tuple[list[float], list[float]]:
    """A fresh store's first pass (nothing due), then passes that each delete the oldest
    run, as the hourly passes of a daemon that has been running."""
    steady = []
    store = await Store.open(path)
    try:
        start = time.perf_counter()
        assert await store.prune(None, keep) == []
        first = [1000 * (time.perf_counter() - start)]
        for _ in range(5):
            with sqlite3.connect(path) as db:
                (cutoff,) = db.execute(
                    "SELECT created_at FROM runs ORDER BY created_at LIMIT 1 OFFSET 1"
                ).fetchone()
            start = time.perf_counter()
            assert len(await store.prune(cutoff, keep)) == 1
            steady.append(1000 * (time.perf_counter() - start))
    finally:
        await store.close()
    return first, steady


def _bytes_per_event(path: Path, generated_s: float) -> Row:
    with sqlite3.connect(path) as db:
        (payload,) = db.execute(
            "SELECT AVG(LENGTH(kind) + LENGTH(data)) FROM events WHERE run_id <= 100"
        ).fetchone()
    size = sum(p.stat().st_size for p in path.parent.glob("runs.sqlite*"))
    return Row(
        "history: bytes on disk per stored event",
        "bytes",
        [size / HISTORY_EVENTS],
        "its kind and data as text",
        [payload],
        notes={"store_mb": round(size / 1e6), "generated_in_s": round(generated_s, 1)},
    )


def _control_during_retention(config: Path, state: Path, scratch: Path) -> Row:
    """Get-run round trips while a start-up retention pass deletes the oldest tenth of the
    history, beside the same after it."""
    days = str(0.9 * YEARS_S / 86400)
    args = ["--no-spares", "--retention-days", days, "--retention-runs", "0"]
    daemon = DaemonProcess(config, state, scratch / "data", args).start()
    try:
        during: list[float] = []
        start = time.perf_counter()
        while "pruned old runs" not in daemon.log_text():
            for _ in range(100):
                during.append(_request_ms(daemon, Op.RUN, {"run": HISTORY_RUNS}))
        pass_s = time.perf_counter() - start
        after = [
            1000 * timed(lambda: daemon.request(Op.RUN, run=HISTORY_RUNS)) for _ in range(1000)
        ]
    finally:
        daemon.stop(timeout=60)
    q = statistics.quantiles
    return Row(
        "history: control get-run p99 during retention",
        "ms",
        [q(during, n=100)[98]],
        "get-run p99 after it",
        [q(after, n=100)[98]],
        target="< 5 ms",
        notes={
            "samples": len(during),
            "max_ms": round(max(during), 1),
            "pass_s": round(pass_s, 1),
            "deleted": f"{HISTORY_RUNS // 10:,} runs, {HISTORY_EVENTS // 10:,} events",
        },
    )
