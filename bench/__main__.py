"""``make bench``: every figure beside its reference measured in the same run.

Prints one table and writes the same figures to bench/results.json (git-ignored).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import cases, cluster, config_load, history
from bench.common import Row, bench_config, spread
from tests.harness import DaemonProcess

RESULTS = Path(__file__).with_name("results.json")


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'measure':<54} {'ours median (min-max)':>26} {'reference':<32} "
        f"{'ref median (min-max)':>26} {'ratio':>7}  target   (ratio = ours / reference)"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.name:<54} {spread(row.ours) + ' ' + row.unit:>26} {row.reference_name:<32} "
            f"{spread(row.reference) + ' ' + row.unit:>26} {row.ratio:>7.2f}  {row.target}"
        )
        for key, value in row.notes.items():
            print(f"{'':<56}{key}: {value}")


def main() -> int:
    scratch = Path(tempfile.mkdtemp(prefix="duftd-bench-"))
    started = time.perf_counter()
    rows: list[Row] = []
    try:
        config = bench_config(scratch)
        queue_tasks = cases.generated_tasks(config, cases.QUEUE_SUBMITS)
        daemon = DaemonProcess(
            config, scratch / "state", scratch / "data", ["--max-concurrent", "2"]
        ).start()
        try:
            steps = [
                ("idle memory", lambda: cases.idle_memory(daemon)),
                ("script task", lambda: cases.script_task(daemon)),
                ("notebook tasks", lambda: cases.notebook_tasks(daemon, scratch)),
                ("event throughput", lambda: cases.throughput(daemon)),
                ("flood", lambda: cases.flood(daemon)),
                ("control latency", lambda: cases.control_latency(daemon)),
                ("queue", lambda: cases.queue(daemon, queue_tasks)),
                ("config loading", lambda: config_load.config_loading(config, scratch)),
                ("history", lambda: history.history_growth(config, scratch)),
                ("dask launcher", lambda: cluster.dask_launcher(daemon, scratch)),
            ]
            wanted = set(sys.argv[1:])  # `python -m bench queue "control latency"` runs just those
            for name, step in steps:
                if wanted and name not in wanted:
                    continue
                print(
                    f"[{time.perf_counter() - started:5.0f} s] {name}...",
                    file=sys.stderr,
                    flush=True,
                )
                rows += step()
        finally:
            print_table(rows)
            daemon.stop(timeout=120)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.perf_counter() - started
    print(f"\n{len(rows)} rows in {elapsed:.0f} s; figures in {RESULTS}")
    RESULTS.write_text(
        json.dumps({"elapsed_s": elapsed, "rows": [r.to_dict() for r in rows]}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
