"""Nothing a task said is lost (issue 10): real workers, real kernels, a real full disk.

Once ``log_message`` (or a line on stdout/stderr) has returned in a task, the event is
stored whatever the task does next; ``final`` is never seen before the final state event;
a full state folder is survived.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest

from clients.bus import DaemonError
from dte_tools.wire import ACTIVE_STATES, Kind, Op
from tests.harness import (
    DaemonProcess,
    add_script_task,
    copy_config,
    final_state_event,
    log_messages,
    wait_for,
)
from tests.test_notebooks import WAIT_FOR_FILE, add_notebook_task

# DUFT's own SAMPLE-ERROR task: progress, an error line, then a hard exit skipping atexit.
SAMPLE_ERROR = """
import os
from dte_tools import initialise_data_task

environment = initialise_data_task("sample error")
environment.report_progress(1, 2, "about to fail")
environment.log_error("A simulated error occurred!")
os._exit(1)
"""
COUNT = {"count": {"title": "Lines", "defaultValue": 10, "allowOverride": True}}
KILLS_ITSELF = """
import os, signal
from dte_tools import initialise_data_task

environment = initialise_data_task("kills itself")
for n in range({n}):
    environment.log_message(f"line {{n}}")
os.kill(os.getpid(), signal.SIGKILL)
"""
FLOOD = """
import json, sys
from dte_tools import initialise_data_task

count = json.loads(sys.argv[1])["count"]
environment = initialise_data_task("flood")
log = environment.log_message
for n in range(count):
    log(n)
"""
ORDERED = """
import sys
from dte_tools import initialise_data_task

environment = initialise_data_task("ordered")
environment.log_message("before the traceback")
print("a line on stderr", file=sys.stderr)
environment.log_message("after the stderr line")
raise ValueError("the end")
"""


def test_sample_error_pattern_keeps_its_error_line_in_50_of_50_runs(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """``log_error`` then ``os._exit(1)``: the progress and error lines are stored and
    counted in every one of 50 runs (10 tasks at a time)."""
    tasks = [f"SAMPLE-ERROR-{n}" for n in range(10)]
    for task in tasks:
        add_script_task(config_dir, task, SAMPLE_ERROR)
    daemon = daemon_factory(config_dir, "--max-concurrent", "10")
    runs = []
    for _ in range(5):
        batch = [daemon.submit(task)["run"]["id"] for task in tasks]
        runs += [daemon.wait_final(run_id) for run_id in batch]
    for run in runs:
        events = daemon.events(run["id"])
        assert log_messages(events) == ["A simulated error occurred!"], run
        assert [e["data"]["message"] for e in events if e["kind"] == Kind.PROGRESS] == [
            "about to fail"
        ]
        assert (run["state"], run["exit_code"], run["error_count"]) == ("failed", 1, 1), run
        assert final_state_event(events) is events[-1]


def test_a_task_that_sigkills_itself_keeps_every_line_it_logged(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A task logging 20,000 lines and then SIGKILLing itself has all of them stored, in
    order, with gapless numbers, and fails as killed."""
    add_script_task(config_dir, "KILLS-ITSELF", KILLS_ITSELF.format(n=20_000))
    daemon = daemon_factory(config_dir)
    run = daemon.wait_final(daemon.submit("KILLS-ITSELF")["run"]["id"])
    events = daemon.events(run["id"])
    assert log_messages(events) == [f"line {n}" for n in range(20_000)]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert run["state"] == "failed" and "SIGKILL" in run["reason"], run
    assert run["events_lost"] == 0


def test_a_notebook_cell_that_logs_then_kills_its_kernel_keeps_the_line(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """The kernel writes into its own channel: a line logged just before the kernel is
    SIGKILLed is stored, and the run fails on the dead kernel."""
    cell = (
        "import os, signal\nfrom dte_tools import initialise_data_task\n"
        "initialise_data_task('nb').log_message('said just before dying')\n"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    add_notebook_task(config_dir, "NB-DIES", [nbformat.v4.new_code_cell(cell)])
    daemon = daemon_factory(config_dir)
    run = daemon.wait_final(daemon.submit("NB-DIES")["run"]["id"], timeout=45)
    assert "said just before dying" in log_messages(daemon.events(run["id"]))
    assert run["state"] == "failed", run


def test_a_tight_loop_of_200000_lines_is_stored_whole(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A task calling ``log_message`` 200,000 times as fast as it can has every line stored
    with contiguous numbers, and nothing counted as lost (`make bench` runs 1,000,000)."""
    add_script_task(config_dir, "FLOOD", FLOOD, supportedParameters=COUNT)
    daemon = daemon_factory(config_dir)
    run_id = daemon.submit("FLOOD", count=200_000)["run"]["id"]
    run = daemon.wait_final(run_id, timeout=50)
    assert (run["state"], run["events_lost"]) == ("succeeded", 0), run
    events = daemon.events(run_id)
    logs = [e for e in events if e["kind"] == Kind.LOG]
    assert [e["data"]["message"] for e in logs] == [str(n) for n in range(200_000)]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert daemon.request(Op.HEALTH)["dropped"] == {}


def test_a_reader_never_sees_final_before_the_final_state_event(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """While another task floods, a reader polling ``events`` for short runs gets
    ``final: true`` only with the final state event in hand, five runs out of five."""
    add_script_task(config_dir, "FLOOD", FLOOD, supportedParameters=COUNT)
    add_script_task(config_dir, "SHORT", "print('short and sweet')\n")
    daemon = daemon_factory(config_dir)
    flood = daemon.submit("FLOOD", count=300_000)["run"]["id"]
    for _ in range(5):
        run_id = daemon.submit("SHORT")["run"]["id"]
        seen: list[dict] = []
        while True:
            page = daemon.request(Op.EVENTS, run=run_id, after=seen[-1]["seq"] if seen else 0)
            seen += page["events"]
            if page["final"]:
                break
        assert seen and seen[-1]["kind"] == Kind.STATE, seen
        assert seen[-1]["data"]["state"] == "succeeded", seen[-1]
    daemon.request(Op.CANCEL, run=flood)
    daemon.wait_final(flood)


def test_a_log_line_and_a_stderr_line_are_stored_in_the_order_written(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A task's log lines and its Python stderr lines (a traceback included) share one
    channel: they are stored in the order the task wrote them."""
    add_script_task(config_dir, "ORDERED", ORDERED)
    daemon = daemon_factory(config_dir)
    run = daemon.wait_final(daemon.submit("ORDERED")["run"]["id"])
    said = [
        e["data"].get("message") or e["data"].get("text")
        for e in daemon.events(run["id"])
        if e["kind"] in (Kind.LOG, Kind.STDERR)
    ]
    assert said[:3] == ["before the traceback", "a line on stderr", "after the stderr line"]
    assert said[3].startswith("Traceback (most recent call last)")
    assert said[-1] == "ValueError: the end"
    assert run["state"] == "failed" and "ValueError: the end" in run["reason"]


# -- a full disk --------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 16 MB tmpfs mounted for this test (skipped where mounting is refused)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:8]}"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave_bytes: int) -> Path:
    """A file taking all but about ``leave_bytes`` of the disk's free space."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as out:
        out.truncate(0)
        out.write(b"\0" * max(free - leave_bytes, 0))
    return filler


def test_a_full_state_folder_is_survived(
    tmp_path: Path, small_disk: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """With the state folder's disk full: health says so, a submit is refused naming the
    folder, the flooding run waits instead of losing events, and once space returns every
    event and the final state are recorded. Then, full again, SIGTERM stops the daemon
    within the cancel grace, and the next start marks the unrecorded run lost."""
    config_dir = copy_config(tmp_path / "duft-config")
    add_script_task(config_dir, "FLOOD", FLOOD, supportedParameters=COUNT)
    add_script_task(config_dir, "SHORT", "print('short')\n")
    state = small_disk / "state"
    daemon = DaemonProcess(config_dir, state, tmp_path / "data", ["--cancel-grace", "2"])
    daemon.log_path = tmp_path / "daemon.log"  # the daemon's own log must not share the disk
    daemon.start()
    filler = _fill(small_disk, 1024 * 1024)
    try:
        run_id = daemon.submit("FLOOD", count=100_000)["run"]["id"]
        wait_for(lambda: daemon.request(Op.HEALTH)["storage_full"], 30, "storage_full")
        with pytest.raises(DaemonError) as refused:
            daemon.submit("SHORT")
        assert refused.value.code == "storage_full"
        assert str(state) in str(refused.value)
        assert daemon.request(Op.RUN, run=run_id)["run"]["state"] in ACTIVE_STATES
    finally:
        filler.unlink()
    run = daemon.wait_final(run_id, timeout=45)
    assert (run["state"], run["events_lost"]) == ("succeeded", 0), run
    events = daemon.events(run_id)
    assert [e["data"]["message"] for e in events if e["kind"] == Kind.LOG] == [
        str(n) for n in range(100_000)
    ]
    assert not daemon.request(Op.HEALTH)["storage_full"]

    # Full again, with a run in flight: SIGTERM still stops the daemon.
    hanging = daemon.submit("FLOOD", count=10_000_000)["run"]["id"]
    filler = _fill(small_disk, 256 * 1024)
    wait_for(lambda: daemon.request(Op.HEALTH)["storage_full"], 30, "storage_full again")
    assert daemon.stop(signal.SIGTERM, timeout=2 + 8) == 0
    filler.unlink()
    daemon = daemon_factory(config_dir, state_dir=state)
    run = daemon.request(Op.RUN, run=hanging)["run"]
    assert run["state"] in ("cancelled", "lost") and run["reason"], run
    assert daemon.request(Op.RUNS, state="running")["runs"] == []


def test_a_record_that_cannot_be_used_is_counted_as_lost_never_silently(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """Garbage written into a worker's channel costs only that record: the lines around it
    are stored, and the run records the loss (``events_lost``, a notice, its reason)."""
    code = (
        "import os\nfrom dte_tools import channel, initialise_data_task\n"
        "environment = initialise_data_task('garbage')\n"
        "environment.log_message('before')\n"
        "os.write(channel.current()._fd, b'this is not a record\\n')\n"
        "environment.log_message('after')\n"
    )
    add_script_task(config_dir, "GARBAGE", code)
    daemon = daemon_factory(config_dir)
    run = daemon.wait_final(daemon.submit("GARBAGE")["run"]["id"])
    events = daemon.events(run["id"])
    assert log_messages(events) == ["before", "after"]
    assert run["state"] == "succeeded" and run["events_lost"] == 1, run
    assert "1 event(s) of this run could not be stored (1 corrupt)" in run["reason"]
    notices = [e["data"] for e in events if e["kind"] == Kind.NOTICE]
    assert notices == [{"message": run["reason"], "events_lost": 1}]
    assert final_state_event(events)["data"]["events_lost"] == 1


def test_records_taken_without_decoding_are_checked_like_the_others(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """Plain log and output records are taken as written, the rest decoded: both give the
    same events in order, a log with output's data (or output with a log's) is refused and
    counted, a warning is counted, and escapes and non-ASCII text survive either way."""
    records = [
        b'["log",1.5,{"level":"warning","message":"plain warning"}]',
        b'["log",1.5,{"text":"a log without a level"}]',
        b'["stdout",1.5,{"level":"info","message":"output with a level"}]',
        b'["stdout",1.5,{"text":"plain output"}]',
        b'["log",1.5,{"level":"info","message":"a \\"quoted\\" caf\\u00e9"}]',
        b'["log", 1.5, {"level":"info", "message":"spaced"}]',
        b'["stderr",1.5,{"text":"plain error output"}]',
    ]
    written = b"\n".join(records) + b"\n"
    code = (
        "import os\nfrom dte_tools import channel, initialise_data_task\n"
        "environment = initialise_data_task('plain')\n"
        f"os.write(channel.current()._fd, {written!r})\n"
    )
    add_script_task(config_dir, "PLAIN", code)
    daemon = daemon_factory(config_dir)
    run = daemon.wait_final(daemon.submit("PLAIN")["run"]["id"])
    events = [e for e in daemon.events(run["id"]) if e["kind"] != Kind.STATE]
    assert [(e["kind"], e["data"]) for e in events if e["kind"] != Kind.NOTICE] == [
        (Kind.LOG, {"level": "warning", "message": "plain warning"}),
        (Kind.STDOUT, {"text": "plain output"}),
        (Kind.LOG, {"level": "info", "message": 'a "quoted" café'}),
        (Kind.LOG, {"level": "info", "message": "spaced"}),
        (Kind.STDERR, {"text": "plain error output"}),
    ]
    assert all(e["ts"] == 1.5 for e in events if e["kind"] != Kind.NOTICE)
    assert run["warning_count"] == 1 and run["events_lost"] == 2, run
    assert "2 event(s) of this run could not be stored (2 bad_event)" in run["reason"]


TWO_WRITERS = """
import os
from dte_tools import initialise_data_task

environment = initialise_data_task("two writers")
child = os.fork()
who = "child" if child == 0 else "parent"
for n in range(150):
    environment.log_message(f"{who} {n} " + who[0] * 30000)
if child == 0:
    os._exit(0)
os.waitpid(child, 0)
"""


def test_long_records_of_two_processes_sharing_the_channel_are_kept_whole(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A task and its forked child log 30 KB lines at once into the same pipe: writes that
    long are not atomic, so each goes as pieces duftd joins per writer; every line is
    stored whole and nothing is counted lost."""
    add_script_task(config_dir, "TWO-WRITERS", TWO_WRITERS)
    daemon = daemon_factory(config_dir)
    run = daemon.wait_final(daemon.submit("TWO-WRITERS")["run"]["id"], timeout=60)
    messages = log_messages(daemon.events(run["id"]))
    expected = {f"{who} {n} " + who[0] * 30000 for who in ("parent", "child") for n in range(150)}
    assert len(messages) == 300 and set(messages) == expected
    assert run["state"] == "succeeded" and run["events_lost"] == 0, run


def test_a_long_record_whose_writer_died_midway_is_counted_as_lost(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """The first piece of a long record, then the end of its writer: the record is counted
    as lost (incomplete), and the lines around it are stored."""
    code = (
        "import os\nfrom dte_tools import channel, initialise_data_task\n"
        "environment = initialise_data_task('half')\n"
        "environment.log_message('before')\n"
        'os.write(channel.current()._fd, b\'+4242:["log",1.5,{"level":"info"\\n\')\n'
        "environment.log_message('after')\n"
    )
    add_script_task(config_dir, "HALF", code)
    daemon = daemon_factory(config_dir)
    run = daemon.wait_final(daemon.submit("HALF")["run"]["id"])
    assert log_messages(daemon.events(run["id"])) == ["before", "after"]
    assert run["events_lost"] == 1 and "(1 incomplete)" in run["reason"], run


def test_restart_masks_a_notebook_an_orphaned_runner_left(
    tmp_path: Path, config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A daemon SIGKILLed during a notebook run leaves its runner orphaned; whatever that
    runner left at the run's output path has the password masked by the next start."""
    secret = f"pw-{uuid.uuid4().hex}"
    user_file = config_dir / "user" / "config.json"
    user = json.loads(user_file.read_text())
    user["dataConnectionParameters"]["ANA"]["password"] = secret
    user_file.write_text(json.dumps(user))
    gate = tmp_path / "never-opened"
    add_notebook_task(
        config_dir,
        "NB-ORPHAN",
        [nbformat.v4.new_code_cell(WAIT_FOR_FILE.format(path=str(gate)))],
        dataConnections=["ANA"],
    )
    state = tmp_path / "state"
    daemon = daemon_factory(config_dir, state_dir=state)
    run_id = daemon.submit("NB-ORPHAN")["run"]["id"]
    output = Path(daemon.wait_state(run_id, "running")["output"])
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"cells": [f"the password is {secret}"]}), encoding="utf-8")

    daemon = daemon_factory(config_dir, state_dir=state)
    run = daemon.request(Op.RUN, run=run_id)["run"]
    assert run["state"] == "lost", run
    assert secret not in output.read_text(encoding="utf-8")
    assert "the password is ********" in output.read_text(encoding="utf-8")


def test_a_helper_script_the_task_runs_logs_into_the_same_durable_channel(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A program the task starts opens the task's channel too: a helper script's log line
    is stored even when the task hard-exits right after it."""
    helper = "from dte_tools import initialise_data_task\n" + (
        "initialise_data_task('helper').log_message('from the helper')\n"
    )
    code = (
        "import os, subprocess, sys\nfrom dte_tools import initialise_data_task\n"
        "environment = initialise_data_task('parent')\n"
        "environment.log_message('before the helper')\n"
        f"subprocess.run([sys.executable, '-c', {helper!r}], check=True)\n"
        "environment.log_message('after the helper')\n"
        "os._exit(0)\n"
    )
    add_script_task(config_dir, "HELPER", code)
    daemon = daemon_factory(config_dir)
    run = daemon.wait_final(daemon.submit("HELPER")["run"]["id"])
    assert run["state"] == "succeeded", run
    assert log_messages(daemon.events(run["id"])) == [
        "before the helper",
        "from the helper",
        "after the helper",
    ]
    assert daemon.request(Op.HEALTH)["dropped"] == {}
