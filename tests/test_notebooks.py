"""Notebook tasks through a real daemon: parameters, live cell events, failures, cancel, outputs.

Every run here starts a real Jupyter kernel of the project's environment; waits end on
conditions with a bound, never on fixed sleeps.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

from dte_tools import wire
from dte_tools.wire import Kind, Op
from duftd.ingest import _valid_event
from duftd.runs.workers import kernel_dir
from tests.harness import REPO, DaemonProcess, add_script_task, wait_for

# A cell that blocks until the test creates a file (bounded, so a broken run still ends).
WAIT_FOR_FILE = """
import pathlib, time
_gate, _deadline = pathlib.Path({path!r}), time.monotonic() + 30
while not _gate.exists():
    if time.monotonic() > _deadline:
        raise TimeoutError("the test never opened the gate")
    time.sleep(0.01)  # wait-ok: polling interval of a bounded wait, inside the task
"""
# A cell that hangs until stopped (the point of the tests that use it).
HANG = "import time\ntime.sleep(600)  # wait-ok"
# A process the task starts in a session of its own: only the run's worker id still marks it.
START_CHILD = (
    "import subprocess, sys\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)  # wait-ok'],"
    " start_new_session=True)"
)
# Long enough for a kernel to start on a busy 2-core machine before the run times out.
TIMEOUT_S = 8
LOGGER = (
    "from dte_tools import initialise_data_task\nenv = initialise_data_task('nb', params=params)"
)


# -- helpers ---------------------------------------------------------------------------


def code(source: str, *tags: str) -> NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def markdown(source: str) -> NotebookNode:
    return nbformat.v4.new_markdown_cell(source)


def add_notebook_task(
    config_dir: Path,
    task_id: str,
    cells: list[NotebookNode],
    kernel: str = "python3",
    **fields: Any,
) -> None:
    """Declare a notebook task in ``system/data_tasks.json`` with ``cells`` as its notebook."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    nb.cells = cells
    file_name = f"{task_id.lower().replace('-', '_')}.ipynb"
    add_script_task(config_dir, task_id, nbformat.writes(nb), pythonFile=file_name, **fields)


def run_and_wait(
    daemon: DaemonProcess, task: str, timeout: float = 30.0, **params: Any
) -> dict[str, Any]:
    reply = daemon.submit(task, **params)
    return daemon.wait_final(reply["run"]["id"], timeout)


def stdout_lines(daemon: DaemonProcess, run_id: int) -> list[str]:
    return [e["data"]["text"] for e in daemon.events(run_id) if e["kind"] == Kind.STDOUT]


def run_output(daemon: DaemonProcess, run_id: int) -> str:
    return daemon.request(Op.RUN, run=run_id)["run"]["output"]


def final_event(daemon: DaemonProcess, run_id: int) -> dict[str, Any]:
    event = daemon.events(run_id)[-1]
    assert event["kind"] == Kind.STATE, event
    return event


def parameter(default: Any) -> dict[str, Any]:
    return {"defaultValue": default, "allowOverride": True}


def duft(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """The `duft` command line against this daemon (found through DUFT_STATE_DIR)."""
    return subprocess.run(
        [sys.executable, "-m", "clients.cli.main", *args],
        env=daemon.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def run_processes(daemon: DaemonProcess, run_id: int) -> dict[int, str]:
    """Live processes of one run of this daemon (pid -> command line), found by the worker id
    every process of the run carries from its start (a warm spare learns its run id later)."""
    assert daemon.client is not None
    worker_id = daemon.request(Op.RUN, run=run_id)["run"]["worker_id"]
    if not worker_id:
        return {}
    wanted = {
        f"{wire.ENV_WORKER_ID}={worker_id}".encode(),
        f"{wire.ENV_CONTROL}={daemon.client.info.control}".encode(),
    }
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = set((proc / "environ").read_bytes().split(b"\0"))
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone, or not ours to read
        if wanted <= environ and alive(int(proc.name)):
            found[int(proc.name)] = cmdline
    return found


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kernel_folder(processes: dict[int, str]) -> Path:
    """The run's kernel folder (sockets, connection file), named from its worker id."""
    pid = next(iter(processes))
    prefix = f"{wire.ENV_WORKER_ID}=".encode()
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    worker_id = next(entry[len(prefix) :] for entry in environ if entry.startswith(prefix))
    return kernel_dir(worker_id.decode())


def kernel_pids(processes: dict[int, str]) -> list[int]:
    return [pid for pid, cmdline in processes.items() if "ipykernel_launcher" in cmdline]


def wait_for_processes(daemon: DaemonProcess, run_id: int, count: int) -> dict[int, str]:
    """The run's ``count`` processes, a kernel among them, once they all exist."""

    def found() -> dict[int, str] | None:
        processes = run_processes(daemon, run_id)
        return processes if len(processes) >= count and kernel_pids(processes) else None

    return wait_for(found, 10, f"{count} processes of run {run_id}, a kernel among them")


def wait_for_cell(daemon: DaemonProcess, run_id: int, index: int, phase: str = "started") -> None:
    def reached() -> bool:
        return any(
            e["kind"] == Kind.CELL and e["data"]["index"] == index and e["data"]["phase"] == phase
            for e in daemon.events(run_id)
        )

    wait_for(reached, 30, f"cell {index} of run {run_id} to be {phase}", interval=0.05)


# -- parameters --------------------------------------------------------------------------


def test_parameters_reach_both_duft_and_papermill_notebooks(daemon: DaemonProcess) -> None:
    """Parameters replace a DUFT `params = {}` first cell, or follow a `parameters`-tagged cell."""
    params = {"name": parameter("Cersei"), "steps": parameter(2), "fixed": {"defaultValue": "kept"}}
    add_notebook_task(
        daemon.config_dir,
        "NB-DUFT",
        [
            markdown("# DUFT style"),
            code("params = {}"),
            code("import json\nprint(json.dumps(params, sort_keys=True))"),
        ],
        supportedParameters=params,
    )
    add_notebook_task(
        daemon.config_dir,
        "NB-TAGGED",
        [
            code("name = 'default'\nsteps = 0", "parameters"),
            code("import json\nprint(json.dumps([name, steps, params], sort_keys=True))"),
        ],
        supportedParameters=params,
    )
    daemon.request(Op.RELOAD)
    duft = daemon.submit("NB-DUFT", name="Arya", fixed="ignored")["run"]["id"]
    tagged = daemon.submit("NB-TAGGED", steps=7)["run"]["id"]

    assert daemon.wait_final(duft)["state"] == "succeeded"
    assert daemon.wait_final(tagged)["state"] == "succeeded"
    assert json.loads(stdout_lines(daemon, duft)[-1]) == {
        "name": "Arya",
        "steps": 2,
        "fixed": "kept",
    }
    assert json.loads(stdout_lines(daemon, tagged)[-1]) == [
        "Cersei",
        7,
        {"name": "Cersei", "steps": 7, "fixed": "kept"},
    ]
    executed = nbformat.read(daemon.request(Op.RUN, run=tagged)["run"]["output"], as_version=4)
    assert executed.cells[0].source == "name = 'default'\nsteps = 0"
    assert executed.cells[1].metadata["tags"] == ["injected-parameters"]


# -- live events -------------------------------------------------------------------------


def test_log_from_a_running_cell_reaches_a_follower_before_the_cell_ends(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """A cell's log line arrives while the cell runs: it waits for a file made only on receipt."""
    gate = tmp_path / "gate"
    marker = f"marker-{uuid.uuid4().hex}"
    add_notebook_task(
        daemon.config_dir,
        "NB-LIVE",
        [
            code("params = {}"),
            code(LOGGER),
            code(f"env.log_message({marker!r})\n{WAIT_FOR_FILE.format(path=str(gate))}"),
        ],
    )
    daemon.request(Op.RELOAD)
    run_id = daemon.submit("NB-LIVE")["run"]["id"]
    assert daemon.client is not None

    seen: list[dict[str, Any]] = []
    for event in daemon.client.follow(run_id):
        seen.append(event)
        if event["kind"] == Kind.LOG and event["data"]["message"] == marker:
            assert not gate.exists()
            # The runner and the kernel send on sockets of their own, so only "cell 2 has not
            # finished" is certain here, not whether cell 1's end arrived before the marker.
            finished = [
                e["data"]["index"]
                for e in seen
                if e["kind"] == Kind.CELL and e["data"]["phase"] == "finished"
            ]
            assert 2 not in finished, "the logging cell must still be running"
            gate.touch()
    assert seen[-1]["data"]["state"] == "succeeded", seen[-1]
    assert gate.exists()
    log = next(e for e in seen if e["kind"] == Kind.LOG)
    cell_end = next(
        e
        for e in seen
        if e["kind"] == Kind.CELL and (e["data"]["index"], e["data"]["phase"]) == (2, "finished")
    )
    assert log["seq"] < cell_end["seq"]


def test_cell_and_progress_events_come_in_order(daemon: DaemonProcess) -> None:
    """Each executed cell reports started, its output, finished and progress done/total in order."""
    add_notebook_task(
        daemon.config_dir,
        "NB-ORDER",
        [
            code("params = {}"),
            markdown("# not executed"),
            code("print('one')"),
            code("   "),
            code("print('skipped')", "skip-execution"),
            code("x = 2\nprint('two', x)"),
            nbformat.v4.new_raw_cell("raw"),
        ],
    )
    daemon.request(Op.RELOAD)
    run = run_and_wait(daemon, "NB-ORDER")
    assert run["state"] == "succeeded", run

    seen = []
    for event in daemon.events(run["id"]):
        data = event["data"]
        if event["kind"] == Kind.CELL:
            seen.append(
                (data["phase"], data["index"], data["number"], data["count"], data.get("status"))
            )
        elif event["kind"] == Kind.PROGRESS:
            seen.append(("progress", data["done"], data["total"]))
        elif event["kind"] == Kind.STDOUT:
            seen.append(("stdout", data["text"]))
    assert seen == [
        ("started", 0, 1, 3, None),
        ("finished", 0, 1, 3, "ok"),
        ("progress", 1, 3),
        ("started", 2, 2, 3, None),
        ("stdout", "one"),
        ("finished", 2, 2, 3, "ok"),
        ("progress", 2, 3),
        ("started", 5, 3, 3, None),
        ("stdout", "two 2"),
        ("finished", 5, 3, 3, "ok"),
        ("progress", 3, 3),
    ]


# -- failure -------------------------------------------------------------------------------


def test_raising_cell_fails_the_run_with_its_index_exception_and_traceback(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """A raising cell fails the run with its index, exception and plain traceback; no more runs."""
    later = tmp_path / "later-cell-ran"
    add_notebook_task(
        daemon.config_dir,
        "NB-RAISE",
        [
            code("params = {}"),
            markdown("a note"),
            code("def check(value):\n    raise ValueError(f'bad value {value}')"),
            code("print('before')\ncheck(42)"),
            code(f"open({str(later)!r}, 'w').close()\nprint('after')"),
        ],
    )
    daemon.request(Op.RELOAD)
    run = run_and_wait(daemon, "NB-RAISE")

    assert run["state"] == "failed", run
    assert run["reason"].startswith("cell 3 raised ValueError: bad value 42"), run["reason"]
    final = final_event(daemon, run["id"])["data"]
    assert final["state"] == "failed"
    assert final["cell_index"] == 3
    traceback = "\n".join(final["traceback"])
    assert "\x1b" not in traceback
    assert "ValueError: bad value 42" in traceback
    assert "check(42)" in traceback
    events = daemon.events(run["id"])
    failures = [e["data"] for e in events if e["kind"] == Kind.FAILURE]
    assert [(f["cell_index"], f["ename"], f["evalue"]) for f in failures] == [
        (3, "ValueError", "bad value 42")
    ]

    cells = [
        (e["data"]["index"], e["data"]["phase"], e["data"].get("status"))
        for e in events
        if e["kind"] == Kind.CELL
    ]
    assert cells[-2:] == [(3, "started", None), (3, "finished", "error")]
    assert [e["data"]["done"] for e in events if e["kind"] == Kind.PROGRESS] == [1, 2]

    assert not later.exists()
    executed = nbformat.read(run["output"], as_version=4)
    error = executed.cells[3].outputs[-1]
    assert (error.output_type, error.ename, error.evalue) == ("error", "ValueError", "bad value 42")
    assert any("\x1b[" in line for line in error.traceback)  # the kernel's colours, removed above
    assert executed.cells[4].outputs == []
    assert executed.cells[4].execution_count is None
    assert not run_processes(daemon, run["id"])


def test_failing_first_cell_is_reported_as_cell_0(daemon: DaemonProcess) -> None:
    """A failure in the notebook's first cell keeps `cell_index` 0 in the final state event."""
    add_notebook_task(
        daemon.config_dir,
        "NB-FIRST",
        [code("import no_such_module_anywhere", "parameters"), code("print('never')")],
    )
    daemon.request(Op.RELOAD)
    run = run_and_wait(daemon, "NB-FIRST")
    assert run["reason"].startswith("cell 0 raised ModuleNotFoundError: "), run
    assert final_event(daemon, run["id"])["data"]["cell_index"] == 0


def test_kernel_that_dies_in_a_cell_fails_the_run_with_that_cell(daemon: DaemonProcess) -> None:
    """A kernel that dies mid-cell fails the run promptly, naming the cell; no later cell runs."""
    add_notebook_task(
        daemon.config_dir,
        "NB-DIE",
        [code("params = {}"), code("import os\nos._exit(3)"), code("print('never')")],
    )
    daemon.request(Op.RELOAD)
    run = run_and_wait(daemon, "NB-DIE")
    assert run["state"] == "failed", run
    assert run["reason"] == "cell 1 raised DeadKernelError: the kernel died"
    assert final_event(daemon, run["id"])["data"]["cell_index"] == 1
    assert "never" not in stdout_lines(daemon, run["id"])
    assert nbformat.read(run["output"], as_version=4).cells[2].execution_count is None


def test_notebook_that_is_not_json_fails_with_a_one_line_reason(daemon: DaemonProcess) -> None:
    """A broken .ipynb fails its run with one clear line, not the runner's traceback."""
    add_script_task(
        daemon.config_dir, "NB-BROKEN", '{"cells": [ not json', pythonFile="broken.ipynb"
    )
    daemon.request(Op.RELOAD)
    run = run_and_wait(daemon, "NB-BROKEN")
    assert run["state"] == "failed", run
    assert run["reason"].startswith("exit code 2: cannot read notebook broken.ipynb: "), run
    assert "\n" not in run["reason"]
    assert [e["kind"] for e in daemon.events(run["id"])].count(Kind.STDERR) == 1


def test_failure_reports_of_the_wrong_shape_are_refused_by_ingest() -> None:
    """Only a well-formed failing-cell report can become a run's reason; others are dropped."""
    good = {"cell_index": 2, "ename": "ValueError", "evalue": "bad", "traceback": ["line"]}
    assert _valid_event([Kind.FAILURE, 1.0, good])
    for bad in (
        {**good, "cell_index": "2"},
        {**good, "ename": None},
        {**good, "traceback": "line"},
        {**good, "traceback": [1, 2]},
        {k: v for k, v in good.items() if k != "evalue"},
    ):
        assert not _valid_event([Kind.FAILURE, 1.0, bad]), bad


# -- stopping ------------------------------------------------------------------------------


def test_cancelled_notebook_leaves_no_kernel_behind(daemon: DaemonProcess) -> None:
    """Cancelling a run in a long cell ends runner and kernel in order; no process of it is left."""
    add_notebook_task(
        daemon.config_dir,
        "NB-SLEEP",
        [
            code("params = {}"),
            code(f"{LOGGER}\nenv.log_message('before the long cell')"),
            code(f"{START_CHILD}\n{HANG}"),
            code("print('never')"),
        ],
    )
    daemon.request(Op.RELOAD)
    run_id = daemon.submit("NB-SLEEP")["run"]["id"]
    wait_for_cell(daemon, run_id, 2)
    processes = wait_for_processes(daemon, run_id, 3)  # runner, kernel, the kernel's child
    for pid in kernel_pids(processes):  # a kernel of the project's environment, not a kernelspec's
        assert processes[pid].startswith(f"{sys.executable} -m ipykernel_launcher "), processes
    folder = kernel_folder(processes)
    assert (folder / "kernel.json").is_file()
    cli = duft(daemon, "output", str(run_id))  # while running: where it will be
    assert (cli.returncode, cli.stdout.strip()) == (0, run_output(daemon, run_id)), cli.stderr
    assert "written here when it ends" in cli.stderr

    daemon.request(Op.CANCEL, run=run_id)
    run = daemon.wait_final(run_id)
    assert run["state"] == "cancelled", run
    assert run["reason"] == "cancelled by request (stopped with SIGTERM)"  # no SIGKILL needed
    wait_for(lambda: not any(alive(pid) for pid in processes), 10, "the run's processes to end")
    assert not run_processes(daemon, run_id)
    assert not folder.exists()

    events = daemon.events(run_id)
    assert not [e for e in events if e["kind"] in (Kind.STDERR, Kind.FAILURE)], events
    notices = [e["data"]["message"] for e in events if e["kind"] == Kind.NOTICE]
    assert notices == ["stopped by SIGTERM in cell 2; later cells did not run"]
    cells = [(e["data"]["index"], e["data"]["phase"]) for e in events if e["kind"] == Kind.CELL]
    assert cells[-2:] == [(2, "started"), (2, "finished")]
    progress = [e["data"]["done"] for e in events if e["kind"] == Kind.PROGRESS]
    assert progress == [1, 2]
    # The kernel was interrupted, not killed: the task's event sender closed in order.
    assert "sender_not_closed" not in daemon.request(Op.HEALTH)["dropped"]
    executed = nbformat.read(run["output"], as_version=4)
    assert executed.cells[2].outputs[-1].ename == "KeyboardInterrupt"
    assert executed.cells[3].execution_count is None


def test_kernel_that_ignores_the_interrupt_is_killed_with_its_runner(
    daemon_factory: Any, config_dir: Path
) -> None:
    """A cell that ignores the interrupt outlasts the grace: runner and kernel are both killed."""
    add_notebook_task(
        config_dir,
        "NB-STUBBORN",
        [
            code("params = {}"),
            code(
                # Deaf to interrupts before the child exists: the test cancels once it sees it.
                "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                f"{START_CHILD}\n{HANG}"
            ),
        ],
    )
    daemon = daemon_factory(config_dir, "--cancel-grace", "1")
    run_id = daemon.submit("NB-STUBBORN")["run"]["id"]
    wait_for_cell(daemon, run_id, 1)
    processes = wait_for_processes(daemon, run_id, 3)
    folder = kernel_folder(processes)
    assert folder.is_dir()

    daemon.request(Op.CANCEL, run=run_id)
    run = daemon.wait_final(run_id)
    assert run["state"] == "cancelled", run
    assert run["reason"] == "cancelled by request (stopped with SIGKILL)"
    wait_for(lambda: not any(alive(pid) for pid in processes), 10, "the run's processes to end")
    assert not run_processes(daemon, run_id)
    assert not folder.exists()  # the killed runner could not remove it: duftd did
    cli = duft(daemon, "output", str(run_id))  # a killed runner wrote nothing
    assert cli.returncode == 1
    assert "kept no executed notebook" in cli.stderr


def test_timed_out_notebook_fails_and_leaves_no_kernel_behind(daemon: DaemonProcess) -> None:
    """A notebook outliving timeoutSeconds fails as timed out; its runner and kernel are gone."""
    add_notebook_task(
        daemon.config_dir,
        "NB-TIMEOUT",
        [
            code("params = {}"),
            code(HANG),
        ],
        timeoutSeconds=TIMEOUT_S,
    )
    daemon.request(Op.RELOAD)
    run_id = daemon.submit("NB-TIMEOUT")["run"]["id"]
    wait_for_cell(daemon, run_id, 1)
    processes = wait_for_processes(daemon, run_id, 2)

    run = daemon.wait_final(run_id)
    assert run["state"] == "failed", run
    assert run["reason"].startswith(f"timed out after {TIMEOUT_S} s"), run["reason"]
    assert run["reason"].endswith("(stopped with SIGTERM)"), run["reason"]  # no SIGKILL needed
    wait_for(lambda: not any(alive(pid) for pid in processes), 10, "the run's processes to end")
    assert not run_processes(daemon, run_id)
    assert final_event(daemon, run_id)["data"].get("cell_index") is None  # a stop, not a failure
    executed = nbformat.read(run["output"], as_version=4)
    # ipykernel may print a KeyboardInterrupt line to stderr after the error output.
    outputs = executed.cells[1].outputs
    assert any(o.get("ename") == "KeyboardInterrupt" for o in outputs), outputs


# -- the executed notebook ---------------------------------------------------------------------


def test_executed_notebook_is_kept_where_the_run_and_duft_output_say(daemon: DaemonProcess) -> None:
    """The executed notebook with outputs is kept where the run and `duft output` say it is."""
    add_notebook_task(
        daemon.config_dir,
        "NB-OUTPUT",
        [code("params = {}"), code("print('hello from the kernel')"), code("6 * 7")],
        kernel="no-such-kernel",  # ignored: tasks always run on the project's own kernel
    )
    daemon.request(Op.RELOAD)
    run = run_and_wait(daemon, "NB-OUTPUT")
    assert run["state"] == "succeeded", run

    output = Path(run["output"])
    assert output.parent == daemon.state_dir / "runs" / str(run["id"])
    assert [path.name for path in output.parent.iterdir()] == ["nb_output.ipynb"]
    executed = nbformat.read(output, as_version=4)
    assert executed.cells[1].outputs[0].text == "hello from the kernel\n"
    assert executed.cells[2].outputs[0].data["text/plain"] == "42"
    assert [cell.execution_count for cell in executed.cells] == [1, 2, 3]

    cli = duft(daemon, "output", str(run["id"]))
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.strip() == str(output)


def test_password_printed_by_a_cell_is_masked_in_the_executed_notebook(
    daemon_factory: Any, config_dir: Path
) -> None:
    """A connection password a cell prints is `********` in the kept notebook and the events."""
    secret = f"pw-{uuid.uuid4().hex}"
    user_file = config_dir / "user" / "config.json"
    user = json.loads(user_file.read_text())
    user["dataConnectionParameters"]["ANA"]["password"] = secret
    user_file.write_text(json.dumps(user))
    add_notebook_task(
        config_dir,
        "NB-SECRET",
        [
            code("params = {}"),
            code(
                "from dte_tools import get_resolved_parameters_for_connection\n"
                "values = get_resolved_parameters_for_connection('ANA')\n"
                "print('the password is', values['password'])\n"
                "values['password']"
            ),
        ],
        dataConnections=["ANA"],
    )
    daemon = daemon_factory(config_dir)
    run = run_and_wait(daemon, "NB-SECRET")
    assert run["state"] == "succeeded", run

    text = Path(run["output"]).read_text()
    assert secret not in text
    executed = nbformat.read(run["output"], as_version=4)
    assert executed.cells[1].outputs[0].text == "the password is ********\n"
    assert executed.cells[1].outputs[1].data["text/plain"] == "'********'"
    assert "the password is ********" in stdout_lines(daemon, run["id"])
    assert secret not in json.dumps(daemon.events(run["id"]))


# -- the embedded notebooks ----------------------------------------------------------------------


def test_embedded_sample_notebook_and_demo_etl_succeed(daemon: DaemonProcess) -> None:
    """SAMPLE-NOTEBOOK and DEMO-ETL succeed under duftd; DEMO-ETL fills the analysis database."""
    sample = daemon.submit("SAMPLE-NOTEBOOK", name="Tyrion", sleep_time=0)["run"]["id"]
    etl = daemon.submit("DEMO-ETL")["run"]["id"]

    run = daemon.wait_final(sample)
    assert run["state"] == "succeeded", run
    messages = [e["data"]["message"] for e in daemon.events(sample) if e["kind"] == Kind.LOG]
    assert "Hello Tyrion, step 5 of 5" in messages
    assert messages[-1] == "Sample notebook completed."

    run = daemon.wait_final(etl, timeout=45)
    assert run["state"] == "succeeded", run
    assert run["error_count"] == 0
    with closing(sqlite3.connect(daemon.data_dir / "analysis.sqlite")) as con:
        counts = {
            table: con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in (
                "dim_client",
                "fact_visit",
                "fact_lab_result",
                "vl_suppression_by_month",
                "etl_run_info",
            )
        }
    assert all(counts.values()), counts
    last = [e["data"] for e in daemon.events(etl) if e["kind"] == Kind.PROGRESS][-1]
    assert last["done"] == last["total"]


# -- executeFromRoot -------------------------------------------------------------------------------


ROOT_PROBE = """
import json, os
import data_task_helpers
with open({path!r}, "w") as probe:
    json.dump({{"cwd": os.getcwd(), "helpers": data_task_helpers.__file__}}, probe)
"""


def test_execute_from_root_runs_a_copy_from_above_duft_config(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """executeFromRoot tasks run from duft-config's parent, import helpers; the copy is removed."""
    script_probe, notebook_probe = tmp_path / "script.json", tmp_path / "notebook.json"
    add_script_task(
        daemon.config_dir,
        "ROOT-SCRIPT",
        ROOT_PROBE.format(path=str(script_probe)) + "print('ran', __file__)\n",
        executeFromRoot=True,
    )
    add_notebook_task(
        daemon.config_dir,
        "ROOT-NB",
        [code("params = {}"), code(ROOT_PROBE.format(path=str(notebook_probe)))],
        executeFromRoot=True,
    )
    daemon.request(Op.RELOAD)
    script_run = daemon.submit("ROOT-SCRIPT")["run"]["id"]
    notebook_run = daemon.submit("ROOT-NB")["run"]["id"]

    for run_id, probe in ((script_run, script_probe), (notebook_run, notebook_probe)):
        run = daemon.wait_final(run_id)
        assert run["state"] == "succeeded", run
        seen = json.loads(probe.read_text())
        assert Path(seen["cwd"]) == daemon.config_dir.parent
        assert (
            Path(seen["helpers"])
            == daemon.config_dir / "system" / "data_tasks" / "data_task_helpers.py"
        )
        run_dir = daemon.state_dir / "runs" / str(run_id)
        assert not (run_dir / "root-copy").exists()
    ran_from = Path(stdout_lines(daemon, script_run)[-1].split(" ", 1)[1])
    assert ran_from == daemon.state_dir / "runs" / str(script_run) / "root-copy" / "root_script.py"
    assert Path(daemon.request(Op.RUN, run=notebook_run)["run"]["output"]).is_file()


def worker_processes(control_endpoint: str) -> dict[int, tuple[str, str]]:
    """Live processes of a daemon's workers (pid -> worker id, command line), found by the
    control endpoint and worker id every worker process carries from its start."""
    control = f"{wire.ENV_CONTROL}={control_endpoint}".encode()
    prefix = f"{wire.ENV_WORKER_ID}=".encode()
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone, or not ours to read
        ids = [entry[len(prefix) :].decode() for entry in environ if entry.startswith(prefix)]
        if control in environ and ids and alive(int(proc.name)):
            found[int(proc.name)] = (ids[0], cmdline)
    return found


def spare_runners(daemon: DaemonProcess, run_id: int) -> dict[str, list[str]]:
    """This daemon's notebook workers other than run ``run_id``'s (worker id -> command lines
    of its processes: a runner, and its kernel once started)."""
    busy = daemon.request(Op.RUN, run=run_id)["run"]["worker_id"]
    workers: dict[str, list[str]] = {}
    for worker, cmdline in worker_processes(daemon.control_endpoint).values():
        if worker != busy:
            workers.setdefault(worker, []).append(cmdline)
    return {
        worker: cmdlines
        for worker, cmdlines in workers.items()
        if any("duftd.notebook.runner" in cmdline for cmdline in cmdlines)
    }


def test_frequent_notebook_runs_keep_a_second_spare_until_they_pause(
    daemon_factory: Any, config_dir: Path
) -> None:
    """While notebook runs come often a second warm runner (with its kernel) is kept, it is
    stopped once runs pause for the burst period, and no runner or kernel outlives the daemon."""
    gate = config_dir / "gate"
    add_notebook_task(config_dir, "NB-GATED", [code(WAIT_FOR_FILE.format(path=str(gate)))])
    daemon = daemon_factory(config_dir, "--spare-burst", "5")
    first = daemon.submit("NB-GATED")["run"]["id"]

    def two_with_kernels() -> dict[str, list[str]] | None:
        spares = spare_runners(daemon, first)
        kernels = [c for cmdlines in spares.values() for c in cmdlines if "ipykernel" in c]
        return spares if len(spares) == 2 and len(kernels) == 2 else None

    wait_for(two_with_kernels, 20, "a second spare with its kernel during the burst")
    wait_for(lambda: len(spare_runners(daemon, first)) == 1, 30, "the extra spare to be stopped")
    gate.touch()
    assert daemon.wait_final(first)["state"] == "succeeded"

    gate.unlink()
    first = daemon.submit("NB-GATED")["run"]["id"]
    folders = [kernel_dir(worker) for worker in wait_for(two_with_kernels, 20, "a second burst")]
    assert daemon.process is not None
    daemon.process.terminate()  # not daemon.stop(), which would kill leftovers itself
    assert daemon.process.wait(30) == 0
    wait_for(
        lambda: not worker_processes(daemon.control_endpoint), 10, "no worker to outlive duftd"
    )
    assert not [folder for folder in folders if folder.exists()]


def test_frequent_script_runs_keep_a_second_spare_until_they_pause(
    daemon_factory: Any, config_dir: Path
) -> None:
    """Script workers get the same: a second warm one while script runs come often (one
    needs about as long to start as a short script runs), stopped once runs pause."""
    gate = config_dir / "gate"
    add_script_task(config_dir, "SCRIPT-GATED", WAIT_FOR_FILE.format(path=str(gate)))
    daemon = daemon_factory(config_dir, "--spare-burst", "3")
    first = daemon.submit("SCRIPT-GATED")["run"]["id"]
    script_spares = lambda: daemon.request(Op.HEALTH)["spares"]["script"]  # noqa: E731
    wait_for(lambda: script_spares() == 2, 20, "a second script spare during the burst")
    wait_for(lambda: script_spares() == 1, 30, "the extra script spare to be stopped")
    gate.touch()
    assert daemon.wait_final(first)["state"] == "succeeded"
