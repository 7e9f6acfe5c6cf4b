"""The Dask side of ``--launcher dask``: a run's job on a real TLS Dask cluster (a
``dask scheduler`` and ``dask worker`` processes of this venv, one thread each)."""

from __future__ import annotations

import json
import os
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, Event

from duftd.cluster import bundle
from duftd.cluster.connect import DaskSettings, check_scheduler, security, submit_job
from duftd.errors import ConfigError
from tests.dask_cluster import DaskCluster, dask_cluster
from tests.harness import REPO, pid_alive, wait_for, wait_gone

NOTE = "import json, os, sys\n" + (
    "def note(name, value):\n"
    "    with open(os.path.join(os.environ['DUFT_DATA_DIR'], name), 'w') as f:\n"
    "        json.dump(value, f)\n"
)
TASK_FILES = {
    "where.py": NOTE + "import helper\n"
    "note('where.json', {'cwd': os.getcwd(), 'argv': sys.argv, 'run': os.environ['DUFT_RUN_ID'],"
    " 'helper': helper.VALUE, 'server': os.path.isdir('duft-server')})\n"
    "sys.exit(3)\n",
    "helper.py": "VALUE = 'from the task folder'\n",
    "hang.py": NOTE + "import subprocess, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "note('pids.json', [os.getpid(), child.pid])\n"
    "time.sleep(600)  # wait-ok: a task that hangs until it is stopped\n",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    yield from dask_cluster(tmp_path_factory.mktemp("dask"))


@pytest.fixture(scope="module")
def client(cluster: DaskCluster) -> Iterator[Client]:
    settings = DaskSettings(
        cluster.address, tls_ca=cluster.tls.ca, tls_cert=cluster.tls.cert, tls_key=cluster.tls.key
    )
    with Client(cluster.address, security=security(settings)) as client:
        client.wait_for_workers(2, timeout=30)
        yield client


@pytest.fixture(scope="module")
def task_bundle(tmp_path_factory: pytest.TempPathFactory) -> bundle.Bundle:
    folder = tmp_path_factory.mktemp("data_tasks")
    for name, text in TASK_FILES.items():
        (folder / name).write_text(text)
    return bundle.pack(folder)


def spec(task_bundle: bundle.Bundle, script: str, data_dir: Path, **extra: Any) -> dict[str, Any]:
    data_dir.mkdir(parents=True, exist_ok=True)
    return {
        "run_id": 7,
        "kind": "script",
        "script": script,
        "args": ['{"n": 1}'],
        "execute_from_root": False,
        "env": {"DUFT_RUN_ID": "7"},
        "bundle": task_bundle.data,
        "digest": task_bundle.digest,
        "cancel": f"cancel-{uuid.uuid4().hex}",
        "grace_s": 2.0,
        "data_dir": str(data_dir),
        **extra,
    }


def test_pack_is_reproducible_and_leaves_out_caches(tmp_path: Path) -> None:
    """The same content packs to the same digest (times do not count); __pycache__ and a
    link out of the folder are left out; a damaged bundle is refused on unpacking."""
    folder = tmp_path / "data_tasks"
    (folder / "__pycache__").mkdir(parents=True)
    (folder / "__pycache__" / "x.pyc").write_bytes(b"junk")
    (folder / "a.py").write_text("print(1)\n")
    (tmp_path / "secret.txt").write_text("outside")
    (folder / "out.txt").symlink_to(tmp_path / "secret.txt")
    first = bundle.pack(folder)
    os.utime(folder / "a.py", (1, 1))
    assert bundle.pack(folder).digest == first.digest
    unpacked = bundle.unpack(first.digest, first.data, tmp_path / "cache")
    assert sorted(p.name for p in unpacked.iterdir()) == ["a.py"]
    with pytest.raises(bundle.BundleError, match="damaged"):
        bundle.unpack("0" * 64, first.data, tmp_path / "cache")


def test_a_script_runs_on_a_worker_from_its_cached_folder(
    client: Client, cluster: DaskCluster, task_bundle: bundle.Bundle, tmp_path: Path
) -> None:
    """The job unpacks the task folder by its digest, runs the script there with its
    parameters (its sibling modules importable), and returns its exit code and the Dask
    worker and host it ran on; a second run of the same content reuses the folder."""
    results = []
    for attempt in range(2):
        data = tmp_path / f"data{attempt}"
        results.append(
            submit_job(client, spec(task_bundle, "where.py", data), {}, uuid.uuid4().hex).result()
        )
        where = json.loads((data / "where.json").read_text())
        assert where["argv"][1:] == ['{"n": 1}'] and where["run"] == "7"
        assert where["helper"] == "from the task folder"
        assert Path(where["cwd"]).name == task_bundle.digest
    for result in results:
        assert result["exit_code"] == 3 and result["reason"] is None
        assert result["worker"] in {"w1", "w2"} and result["host"] == socket.gethostname()
    for name in {r["worker"] for r in results}:
        cached = list(cluster.worker_dir(name).rglob(f"duftd-tasks/{task_bundle.digest}"))
        assert len(cached) == 1


def test_execute_from_root_runs_beside_duft_server(
    client: Client, task_bundle: bundle.Bundle, tmp_path: Path
) -> None:
    """executeFromRoot on a Dask worker: a copy of the script runs in the run's folder with
    duft-server/ beside it, and the task folder stays importable."""
    job = spec(task_bundle, "where.py", tmp_path / "data", execute_from_root=True)
    result = submit_job(client, job, {}, uuid.uuid4().hex).result()
    where = json.loads((tmp_path / "data" / "where.json").read_text())
    assert result["exit_code"] == 3
    assert where["server"] and where["helper"] == "from the task folder"
    assert Path(where["cwd"]).name == "root-copy"


def test_cancel_stops_the_whole_tree(
    client: Client, task_bundle: bundle.Bundle, tmp_path: Path
) -> None:
    """Setting the run's cancel Event stops the worker and the processes it started;
    the result says it was stopped, and no process of the run is left."""
    job = spec(task_bundle, "hang.py", tmp_path / "data")
    future = submit_job(client, job, {}, uuid.uuid4().hex)
    pids = wait_for(
        lambda: (
            (tmp_path / "data" / "pids.json").is_file()
            and json.loads((tmp_path / "data" / "pids.json").read_text() or "null")
        ),
        30,
        "the hanging task to start",
    )
    assert all(pid_alive(pid) for pid in pids)
    Event(job["cancel"], client=client).set()
    result = future.result(timeout=30)
    assert result["stopped_by"] in {"SIGTERM", "SIGKILL"} and result["exit_code"] != 0
    wait_gone(pids)


def test_a_worker_without_this_package_says_so(
    client: Client, cluster: DaskCluster, task_bundle: bundle.Bundle, tmp_path: Path
) -> None:
    """A job asking for a resource no worker has waits; a worker offering it joins, whose
    Python lacks duftd: the job reports that, naming the interpreter and host."""
    job = spec(task_bundle, "where.py", tmp_path / "data")
    future = submit_job(client, job, {"bare": 1}, uuid.uuid4().hex)
    assert future.status == "pending"
    repo = str(REPO)
    start = (
        f"import sys; sys.path[:] = [p for p in sys.path if p != {repo!r}]; "
        "from distributed.cli.dask_worker import main; sys.argv[0] = 'dask-worker'; main()"
    )
    local = tmp_path / "bare"
    local.mkdir()
    cluster._start(
        "bare",
        [sys.executable, "-c", start, cluster.address, "--name", "bare", "--nthreads", "1",
         "--no-nanny", "--no-dashboard", "--local-directory", str(local),
         "--resources", "bare=1", *cluster.tls.cli_args()],
    )  # fmt: skip
    result = future.result(timeout=30)
    assert result["worker"] == "bare" and result["exit_code"] is None
    assert "has no dte_tools" in result["reason"] and sys.executable in result["reason"]
    assert not (tmp_path / "data" / "where.json").exists()


@pytest.mark.parametrize(
    ("address", "insecure", "refused"),
    [
        ("tls://10.0.0.5:8786", False, None),
        ("tcp://127.0.0.1:8786", False, None),
        ("localhost:8786", False, None),
        ("tcp://10.0.0.5:8786", False, "not on this machine and not tls://"),
        ("10.0.0.5:8786", False, "not on this machine and not tls://"),
        ("tcp://10.0.0.5:8786", True, None),
        ("ucx://10.0.0.5:8786", False, "no scheduler address"),
        ("tls://:8786", False, "no scheduler address"),
        ("tls://host:port", False, "bad port"),
    ],
)
def test_scheduler_addresses(address: str, insecure: bool, refused: str | None) -> None:
    """A scheduler off this machine must be tls:// unless --dask-insecure; an address Dask
    cannot use is refused with what to write instead."""
    settings = DaskSettings(address, insecure=insecure)
    if refused is None:
        check_scheduler(settings)
    else:
        with pytest.raises(ConfigError, match=refused):
            check_scheduler(settings)
