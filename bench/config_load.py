"""Loading a large duft-config: in-process load time, cold start, and control during reload.

The generated config has the size the issue measured (5,000 tasks, about 20 MB of
``data_tasks.json``): each task has its own script file, a 200-character description and
twelve parameters.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import zmq

from bench.common import Row, timed
from dte_tools.wire import CLIENT_SIGNER, Op, decode_reply, encode_request
from duftd.config import load_config
from tests.harness import DaemonProcess

BIG_CONFIG_TASKS = 5_000
REPS = 5
RELOADS = 3


def big_config(base: Path, target: Path, count: int = BIG_CONFIG_TASKS) -> Path:
    """A copy of ``base`` with ``count`` generated tasks added to system/data_tasks.json."""
    config = Path(shutil.copytree(base, target))
    data_tasks = config / "system" / "data_tasks"
    tasks_file = config / "system" / "data_tasks.json"
    document = json.loads(tasks_file.read_text(encoding="utf-8"))
    for number in range(count):
        script = f"generated_{number:05d}.py"
        (data_tasks / script).write_text("pass\n", encoding="utf-8")
        document["dataTasks"].append(
            {
                "id": f"GEN-{number:05d}",
                "name": f"Generated task {number}",
                "description": "A generated task. " * 11,
                "pythonFile": script,
                "dataConnections": ["ANA"],
                "supportedParameters": {
                    f"p{p}": {
                        "title": f"Parameter {p}",
                        "description": "What this parameter changes, in a sentence. " * 3,
                        "defaultValue": p,
                        "allowOverride": p % 2 == 0,
                    }
                    for p in range(12)
                },
            }
        )
    tasks_file.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return config


def _json_files(config: Path) -> list[Path]:
    return sorted(config.glob("system/*.json")) + sorted(config.glob("apps/*/*.json"))


def config_loading(base_config: Path, scratch: Path) -> list[Row]:
    """5,000 tasks loaded in this process beside ``json.loads`` of the same files; a daemon's
    cold start on them; control round trips while reloads run beside those without."""
    config = big_config(base_config, scratch / "big-config")
    megabytes = (config / "system" / "data_tasks.json").stat().st_size / 1e6
    loads, cpu = [], []
    for _ in range(REPS):
        started_cpu = time.process_time()
        loads.append(1000 * timed(lambda: load_config(config)))
        cpu.append(round(1000 * (time.process_time() - started_cpu)))
    files = _json_files(config)
    parse = [
        1000 * timed(lambda: [json.loads(f.read_text(encoding="utf-8")) for f in files])
        for _ in range(REPS)
    ]
    cold, cold_reference = [], []
    for folder, times in ((config, cold), (base_config, cold_reference)):
        for rep in range(3):
            daemon = DaemonProcess(
                folder, scratch / f"cold-{len(times)}-{rep}", scratch / "data", ["--no-spares"]
            )
            times.append(timed(daemon.start))
            daemon.stop()
    daemon = DaemonProcess(config, scratch / "reload-state", scratch / "data", ["--no-spares"])
    daemon.start()
    try:
        run_id = daemon.submit("BENCH-SCRIPT")["run"]["id"]
        daemon.wait_final(run_id)
        idle = [1000 * timed(lambda: daemon.request(Op.RUN, run=run_id)) for _ in range(1000)]
        during, reload_s = _latency_during_reloads(daemon, run_id)
    finally:
        daemon.stop(timeout=60)
    q = statistics.quantiles
    return [
        Row(
            f"config: load {BIG_CONFIG_TASKS:,} tasks ({megabytes:.0f} MB)",
            "ms",
            loads,
            "json.loads of the same files",
            parse,
            target="< 1,000 ms",
            notes={"cpu_ms": cpu},  # on a busy machine, wall time includes waiting for a core
        ),
        Row(
            f"config: daemon cold start, {BIG_CONFIG_TASKS:,} tasks",
            "ms",
            [1000 * x for x in cold],
            "cold start, embedded config",
            [1000 * x for x in cold_reference],
        ),
        Row(
            "control get-run p99 during reloads",
            "ms",
            [q(during, n=100)[98]],
            "get-run p99, no reload",
            [q(idle, n=100)[98]],
            target="< 50 ms",
            notes={
                "samples": len(during),
                "max_ms": round(max(during), 1),
                "reload_s": [round(x, 2) for x in reload_s],
            },
        ),
    ]


def _latency_during_reloads(daemon: DaemonProcess, run_id: int) -> tuple[list[float], list[float]]:
    """Get-run round trips (ms) sampled while each of RELOADS reloads is in flight."""
    assert daemon.client is not None
    info = daemon.client.info
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(info.control)
    during, reload_s = [], []
    try:
        for _ in range(RELOADS):
            start = time.perf_counter()
            dealer.send_multipart(encode_request(Op.RELOAD, {}, info.key, CLIENT_SIGNER))
            while not dealer.poll(0):
                during.append(1000 * timed(lambda: daemon.request(Op.RUN, run=run_id)))
            reply = decode_reply(dealer.recv_multipart(), info.key)
            assert reply["ok"], reply
            reload_s.append(time.perf_counter() - start)
    finally:
        context.destroy(linger=0)
    return during, reload_s
