"""The Dask launcher beside the local one: a trivial script, submit -> final state.

The cluster is the tests' own (a TLS ``dask scheduler`` and two one-thread ``dask worker``
processes on this machine); the second daemon runs the same config on tcp (CURVE) with
``--launcher dask``. Both are timed the same way, polling the run over control, so the
ratio is what placing a run on the cluster costs.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import Row
from dte_tools.wire import FINAL_STATES, Op
from tests.dask_cluster import dask_cluster
from tests.harness import DaemonProcess

REPS = 10
POLL_S = 0.002


def submit_to_final(daemon: DaemonProcess, task: str) -> float:
    start = time.perf_counter()
    run_id = daemon.submit(task)["run"]["id"]
    while daemon.request(Op.RUN, run=run_id)["run"]["state"] not in FINAL_STATES:
        time.sleep(POLL_S)  # wait-ok: the polling interval of the measurement
    return time.perf_counter() - start


def dask_launcher(daemon: DaemonProcess, scratch: Path) -> list[Row]:
    local = [submit_to_final(daemon, "BENCH-SCRIPT") for _ in range(REPS)]
    cluster_run = dask_cluster(scratch / "dask")
    cluster = next(cluster_run)
    tls = cluster.tls
    args = [
        "--port", "0", "--launcher", "dask", "--dask-scheduler", cluster.address,
        "--dask-tls-ca", str(tls.ca), "--dask-tls-cert", str(tls.cert), "--dask-tls-key",
        str(tls.key), "--max-concurrent", "2",
    ]  # fmt: skip
    on_cluster = DaemonProcess(daemon.config_dir, scratch / "dask-state", daemon.data_dir, args)
    try:
        on_cluster.start()
        for _ in range(2):  # each worker unpacks the task folder once
            submit_to_final(on_cluster, "BENCH-SCRIPT")
        dask = [submit_to_final(on_cluster, "BENCH-SCRIPT") for _ in range(REPS)]
    finally:
        on_cluster.stop()
        cluster_run.close()
    return [
        Row(
            "script task via the Dask launcher: submit -> final",
            "ms",
            [1000 * x for x in dask],
            "local launcher (same config, run)",
            [1000 * x for x in local],
        )
    ]
