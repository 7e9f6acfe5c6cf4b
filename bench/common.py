"""What every benchmark shares: timing statistics, rows, and generated task configs."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import zmq

from clients.bus import curve_setup
from dte_tools.wire import FINAL_STATES, Kind, Op, topic
from tests.harness import DaemonProcess, add_script_task, copy_config

PYTHON = sys.executable


@dataclass
class Row:
    """One line of the table: our figure beside its reference, measured in the same run."""

    name: str
    unit: str
    ours: list[float]
    reference_name: str
    reference: list[float]
    higher_is_better: bool = False
    target: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        ours, ref = statistics.median(self.ours), statistics.median(self.reference)
        return ours / ref if ref else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "ours_median": statistics.median(self.ours),
            "reference_median": statistics.median(self.reference),
            "ratio": self.ratio,
        }


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.4g} ({min(values):,.4g} to {max(values):,.4g})"


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def run_bare(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> float:
    """Wall time of one process from start to exit; it must succeed."""
    start = time.perf_counter()
    subprocess.run(
        argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_notebook(path: Path, cells: int) -> Path:
    """A notebook with a DUFT ``params = {}`` first cell and ``cells - 1`` trivial code cells."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell("params = {}")]
    nb.cells += [nbformat.v4.new_code_cell(f"x{i} = {i} * 2") for i in range(cells - 1)]
    nbformat.write(nb, path)
    return path


def bench_config(root: Path) -> Path:
    """The embedded config plus the benchmark's own tasks."""
    config = copy_config(root / "duft-config")
    data_tasks = config / "system" / "data_tasks"
    add_script_task(config, "BENCH-SCRIPT", SCRIPT_TASK)
    add_script_task(
        config,
        "BENCH-FLOOD",
        FLOOD_TASK,
        supportedParameters={"count": {"defaultValue": 100_000, "allowOverride": True}},
    )
    add_script_task(
        config,
        "BENCH-FLOOD-2",
        FLOOD_TASK,
        pythonFile="bench_flood.py",
        supportedParameters={"count": {"defaultValue": 100_000, "allowOverride": True}},
    )
    for cells in (20, 120):
        make_notebook(data_tasks / f"bench_nb_{cells}.ipynb", cells)
        tasks_file = config / "system" / "data_tasks.json"
        document = json.loads(tasks_file.read_text())
        document["dataTasks"].append(
            {
                "id": f"BENCH-NB-{cells}",
                "name": f"{cells} cells",
                "pythonFile": f"bench_nb_{cells}.ipynb",
                "supportedParameters": {"name": {"defaultValue": "bench", "allowOverride": True}},
            }
        )
        tasks_file.write_text(json.dumps(document, indent=2))
    return config


# Runs a task script standalone as DUFT's own tools do, passing the JSON argument through:
# the reference of the script rows ("bare python script.py"). Our standalone tools also
# resolve it with duftd's config code (pydantic and the whole config, 100+ ms); a
# reference paying for that would flatter duftd, so that figure is printed as a note.
AS_DUFT_STANDALONE = """\
import runpy, sys
from dte_tools import backends
backends.StandaloneBackend.parameters = lambda self, given: given
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

SCRIPT_TASK = """\
import sys
from services.dte_tools.data_task_tools import find_json_arg, initialise_data_task

params = find_json_arg(sys.argv)
environment = initialise_data_task("Bench script", params=params)
for i in range(10):
    environment.log_message(f"line {i}")
"""

FLOOD_TASK = """\
import sys
from dte_tools import find_json_arg, initialise_data_task

params = find_json_arg(sys.argv)
environment = initialise_data_task("Bench flood", params=params)
count = int(params.get("count", 100000))
for i in range(count if count > 0 else 10**12):
    environment.log_message(f"event {i} of a benchmark flood, about the length of a real log line")
"""


class RunWatcher:
    """A SUB socket on one task's topic, to time a run's events as a subscriber sees them."""

    def __init__(self, daemon: DaemonProcess, task_id: str) -> None:
        assert daemon.client is not None
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.rcvhwm = 0
        if setup := curve_setup(daemon.client.info):  # a daemon on tcp requires CURVE
            setup(self.socket)
        self.socket.connect(daemon.client.info.events)
        self.socket.subscribe(topic(task_id))
        self.daemon = daemon
        self.task_id = task_id
        self._wait_until_subscribed()

    def _wait_until_subscribed(self) -> None:
        """Run the task once so the subscription is known to be live before timing."""
        run = self.daemon.submit(self.task_id)["run"]
        self.until_final(run["id"])

    def until_final(self, run_id: int, timeout: float = 120.0) -> dict[str, Any]:
        """Receive until the run's final state, then fetch from the store whatever the live
        stream missed (a subscriber this far behind loses messages past duftd's PUB
        high-water mark), as a real client does; returns first-log time and counts."""
        first_log = None
        received: dict[int, str] = {}  # seq -> kind
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.socket.poll(1000):
                run = self.daemon.request(Op.RUN, run=run_id)["run"]
                if run["state"] in FINAL_STATES:
                    return self._complete(run_id, received, first_log, run["state"])
                continue
            _, body = self.socket.recv_multipart()
            now = time.perf_counter()
            for event in json.loads(body):
                if event["run_id"] != run_id:
                    continue
                received[event["seq"]] = event["kind"]
                if event["kind"] == Kind.LOG:
                    first_log = first_log or now
                if event["kind"] == Kind.STATE and event["data"]["state"] in FINAL_STATES:
                    return self._complete(run_id, received, first_log, event["data"]["state"])
        raise TimeoutError(f"run {run_id} did not finish within {timeout} s")

    def _complete(
        self, run_id: int, received: dict[int, str], first_log: float | None, state: str
    ) -> dict[str, Any]:
        live = sum(kind == Kind.LOG for kind in received.values())
        after = next(seq for seq in range(1, len(received) + 2) if seq not in received) - 1
        while True:  # the store's events from the first one missed live on
            page = self.daemon.request(Op.EVENTS, run=run_id, after=after, limit=10_000)
            for event in page["events"]:
                received.setdefault(event["seq"], event["kind"])
                after = event["seq"]
            if page["final"]:
                break
        logs = sum(kind == Kind.LOG for kind in received.values())
        return {
            "first_log": first_log,
            "final": time.perf_counter(),
            "logs": logs,
            "backfilled": logs - live,
            "state": state,
        }

    def close(self) -> None:
        self.context.destroy(linger=0)
