"""How a run ends and what it leaves behind, against a real daemon and real workers.

Every way a worker can finish (success, exit code, ``os._exit``, an exception, a signal)
must be recorded as a final state with an honest reason, and every line it wrote kept.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

from clients.bus import DaemonError
from dte_tools.wire import CLIENT_SIGNER, Op, decode_reply, encode_request
from tests.harness import (
    WORKERS_DIR,
    DaemonProcess,
    RawSocket,
    add_script_task,
    add_worker_task,
    environment_without_duft,
    final_state_event,
    log_messages,
    meet_dir,
    open_gate,
    read_note,
)

WORKER_TASKS = {
    "EXIT-3": "exit_code",
    "HARD-EXIT": "hard_exit",
    "RAISES": "raises",
    "KILLS-ITSELF": "kills_itself",
    "MANY-LINES": "many_lines",
    "PRINTS": "prints",
    "ERRORS-OK": "errors_then_succeeds",
    "INSPECT-ENV": "inspect_env",
    "HUGE-LINES": "huge_lines",
    "GATED": "gated",
    "LEAVES-OPEN": "leaves_things_open",
}


@pytest.fixture
def runs_daemon(config_dir: Path, daemon_factory: Callable[..., DaemonProcess]) -> DaemonProcess:
    """A daemon whose config also holds the misbehaving workers of this module."""
    for task_id, worker in WORKER_TASKS.items():
        add_worker_task(config_dir, task_id, worker, dataConnections=["ANA"])
    shutil.copy(WORKERS_DIR / "left_open_elsewhere.py", config_dir / "system" / "data_tasks")
    add_worker_task(
        config_dir,
        "EXITS-WITH",
        "exits_with",
        supportedParameters={"how": {"defaultValue": "none", "allowOverride": True}},
    )
    return daemon_factory(config_dir)


def run_to_end(daemon: DaemonProcess, task: str, **params: object) -> dict:
    reply = daemon.submit(task, **params)
    return daemon.wait_final(reply["run"]["id"], timeout=15)


def test_exit_code_fails_the_run_with_that_code(runs_daemon: DaemonProcess) -> None:
    """A worker that calls sys.exit(3) is failed with exit_code 3 and a reason naming it."""
    run = run_to_end(runs_daemon, "EXIT-3")
    assert run["state"] == "failed"
    assert run["exit_code"] == 3
    assert "exit code 3" in run["reason"]
    final = final_state_event(runs_daemon.events(run["id"]))
    assert final["data"]["state"] == "failed"
    assert final["data"]["exit_code"] == 3


def test_os_exit_fails_the_run(runs_daemon: DaemonProcess) -> None:
    """A worker leaving with os._exit(1) (no atexit, no flush) is failed with exit code 1."""
    run = run_to_end(runs_daemon, "HARD-EXIT")
    assert run["state"] == "failed"
    assert run["exit_code"] == 1
    assert "exit code 1" in run["reason"]
    texts = [e["data"]["text"] for e in runs_daemon.events(run["id"]) if e["kind"] == "stdout"]
    assert texts == ["leaving hard"]


def test_uncaught_exception_is_the_reason_with_its_traceback(runs_daemon: DaemonProcess) -> None:
    """An uncaught exception fails the run; the reason names its type and message, and the
    final state event carries the traceback lines."""
    run = run_to_end(runs_daemon, "RAISES")
    assert run["state"] == "failed"
    assert run["exit_code"] == 1
    assert "ValueError: bad row 42 in visits" in run["reason"]
    events = runs_daemon.events(run["id"])
    assert "loading visits" in log_messages(events)
    traceback = final_state_event(events)["data"]["traceback"]
    assert traceback[0].startswith("Traceback (most recent call last)")
    assert traceback[-1] == "ValueError: bad row 42 in visits"
    assert any("in parse" in line for line in traceback), traceback


def test_task_killed_by_a_signal_names_the_signal(runs_daemon: DaemonProcess) -> None:
    """A worker killed by SIGKILL (not by duftd) fails with reason "killed by signal SIGKILL"."""
    run = run_to_end(runs_daemon, "KILLS-ITSELF")
    assert run["state"] == "failed"
    assert run["exit_code"] == -9
    assert run["reason"].startswith("killed by signal SIGKILL")


@pytest.mark.parametrize("how", ["none", "message", "259", "true", "interrupt"])
def test_sys_exit_ends_the_run_as_bare_python_ends(runs_daemon: DaemonProcess, how: str) -> None:
    """sys.exit(value) or a KeyboardInterrupt ends a run with the exit code and stderr lines
    ``python script.py`` ends with: a value that is not a number printed, a failing atexit
    handler reported, neither changing the code."""
    script = (runs_daemon.config_dir / "system" / "data_tasks" / "exits_with.py").resolve()
    bare = subprocess.run(
        [sys.executable, str(script), json.dumps({"how": how})],
        cwd=script.parent,
        env=environment_without_duft(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    run = run_to_end(runs_daemon, "EXITS-WITH", how=how)
    assert run["exit_code"] == bare.returncode, (run, bare.stderr)
    assert run["state"] == ("succeeded" if bare.returncode == 0 else "failed")
    err = [e["data"]["text"] for e in runs_daemon.events(run["id"]) if e["kind"] == "stderr"]
    address = re.compile(r" at 0x[0-9a-f]+")
    assert [address.sub("", line) for line in err] == address.sub("", bare.stderr).splitlines()
    assert err[-1] == "RuntimeError: atexit handler failed"


def test_what_the_interpreter_exit_does_is_done(runs_daemon: DaemonProcess) -> None:
    """A script that leaves things open: its unclosed files hold what it wrote, a zip it never
    closed is complete, a gzip file a helper module holds open is complete, its temporary
    file is removed, and what an atexit handler and a thread still running after the script
    log is stored before the final state."""
    run = run_to_end(runs_daemon, "LEAVES-OPEN")
    assert run["state"] == "succeeded", run
    events = runs_daemon.events(run["id"])
    messages = log_messages(events)
    assert messages[0] == "script done"
    assert sorted(messages[1:]) == ["atexit handler", "thread after the script"]
    assert events[-1] == final_state_event(events)
    folder = meet_dir(runs_daemon.config_dir) / f"left-{run['id']}"
    assert (folder / "text.txt").read_text(encoding="utf-8") == "written, never closed\n"
    assert (folder / "raw.bin").read_bytes() == b"bytes, never closed"
    with zipfile.ZipFile(folder / "archive.zip") as archive:
        assert archive.read("inside.txt") == b"zipped, never closed"
    with gzip.open(folder / "helper.txt.gz", "rt", encoding="utf-8") as helper:
        assert helper.read() == "gzipped in a helper, never closed\n"
    scratch = read_note(runs_daemon.config_dir, "left", run["id"])["scratch"]
    assert not Path(scratch).exists()


def test_worker_that_cannot_start_fails_with_the_error(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A script with a syntax error fails with a reason quoting the SyntaxError, and a task
    whose file vanished after loading is refused at submit, naming the file."""
    add_script_task(config_dir, "BROKEN", "def broken(:\n    pass\n")
    add_script_task(config_dir, "VANISHES", "print('never')\n")
    daemon = daemon_factory(config_dir)
    run = run_to_end(daemon, "BROKEN")
    assert run["state"] == "failed"
    assert "SyntaxError" in run["reason"]
    (config_dir / "system" / "data_tasks" / "vanishes.py").unlink()
    with pytest.raises(DaemonError) as refused:
        daemon.submit("VANISHES")
    assert refused.value.code == "task_not_runnable"
    assert "vanishes.py" in str(refused.value)
    assert [r["task_id"] for r in daemon.request(Op.RUNS)["runs"]] == ["BROKEN"]


def test_a_killed_fork_server_ends_its_runs_and_the_next_run_gets_a_new_one(
    runs_daemon: DaemonProcess, config_dir: Path
) -> None:
    """Script workers are forked by a fork server, which alone can read their exit status:
    if it is killed, its running run is ended and recorded, and the next run is forked by
    a new server."""
    assert runs_daemon.request(Op.HEALTH)["script_fork_server"]
    run_id = runs_daemon.submit("GATED")["run"]["id"]
    worker = read_note(config_dir, "ready", run_id)["pid"]
    server = int(Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert b"dte_tools.forkserver" in Path(f"/proc/{server}/cmdline").read_bytes()
    os.kill(server, signal.SIGKILL)
    final = runs_daemon.wait_final(run_id, timeout=15)
    assert (final["state"], final["exit_code"]) == ("failed", -signal.SIGKILL), final
    assert "SIGKILL" in final["reason"]
    assert run_to_end(runs_daemon, "PRINTS")["state"] == "succeeded"
    assert runs_daemon.request(Op.HEALTH)["script_fork_server"]


def test_stdout_and_stderr_are_captured_line_by_line(runs_daemon: DaemonProcess) -> None:
    """Each line a worker writes becomes one stdout or stderr event, in order, the last
    unterminated line included."""
    run = run_to_end(runs_daemon, "PRINTS")
    assert run["state"] == "succeeded", run
    events = runs_daemon.events(run["id"])
    out = [e["data"]["text"] for e in events if e["kind"] == "stdout"]
    err = [e["data"]["text"] for e in events if e["kind"] == "stderr"]
    assert out == ["out 1", "out 2", "out 3", "out last, no newline"]
    assert err == ["err 1", "err 2"]


def test_all_2000_log_lines_are_kept_up_to_the_one_before_exit(runs_daemon: DaemonProcess) -> None:
    """A worker that logs 2000 lines and exits at once has every line stored, in order."""
    run = run_to_end(runs_daemon, "MANY-LINES")
    assert run["state"] == "succeeded", run
    events = runs_daemon.events(run["id"])
    assert log_messages(events) == [f"line {n}" for n in range(1, 2001)]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    # The final state is recorded after the last line, never before it.
    assert events[-1]["kind"] == "state"
    assert events[-1]["data"]["state"] == "succeeded"


def test_huge_lines_are_kept_not_dropped(runs_daemon: DaemonProcess) -> None:
    """A 5 MB log message arrives cut to its head with a note, and a 200,000-character
    stdout line arrives whole in pieces; nothing is dropped."""
    run = run_to_end(runs_daemon, "HUGE-LINES")
    assert run["state"] == "succeeded", run
    events = runs_daemon.events(run["id"])
    messages = log_messages(events)
    assert messages[0] == "before"
    assert messages[-1] == "after"
    assert len(messages) == 3
    assert messages[1].startswith("x" * 100_000)
    assert messages[1].endswith("more characters cut]")
    out = [e["data"]["text"] for e in events if e["kind"] == "stdout"]
    assert out[-1] == "after the long line"
    assert "".join(out[:-1]) == "".join(str(i % 10) for i in range(200_000))
    assert runs_daemon.request(Op.HEALTH)["dropped"] == {}


def test_logged_errors_are_counted_on_a_successful_run(runs_daemon: DaemonProcess) -> None:
    """A run that exits 0 after logging errors succeeds with its error and warning counts."""
    run = run_to_end(runs_daemon, "ERRORS-OK")
    assert run["state"] == "succeeded"
    assert (run["error_count"], run["warning_count"]) == (2, 1)
    final = final_state_event(runs_daemon.events(run["id"]))
    assert (final["data"]["error_count"], final["data"]["warning_count"]) == (2, 1)


def test_worker_runs_in_its_folder_with_a_clean_environment(
    config_dir: Path,
    daemon_factory: Callable[..., DaemonProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker runs in its data_tasks folder, can import its helpers, and gets the DUFT_* run
    variables but neither a connection password nor the daemon's own environment."""
    password = "env-Pw-7d1c0ffee"
    user_file = config_dir / "user" / "config.json"
    user = json.loads(user_file.read_text(encoding="utf-8"))
    user["dataConnectionParameters"]["ANA"]["password"] = password
    user_file.write_text(json.dumps(user), encoding="utf-8")
    add_worker_task(config_dir, "INSPECT-ENV", "inspect_env", dataConnections=["ANA"])
    monkeypatch.setenv("PGPASSWORD", "daemon-only-secret")  # in duftd's environment only
    daemon = daemon_factory(config_dir)

    run = run_to_end(daemon, "INSPECT-ENV")
    assert run["state"] == "succeeded", run
    seen = read_note(config_dir, "env", run["id"])

    data_tasks = (config_dir / "system" / "data_tasks").resolve()
    assert Path(seen["cwd"]) == data_tasks
    assert Path(seen["helpers"]).parent == data_tasks
    assert seen["helpers_work"] is True
    environ = seen["environ"]
    assert environ["DUFT_RUN_ID"] == str(run["id"])
    assert len(environ["DUFT_RUN_TOKEN"]) >= 32
    assert environ["DUFT_CONTROL_ENDPOINT"] == daemon.client.info.control
    assert environ["DUFT_INGEST_ENDPOINT"] == daemon.client.info.ingest
    assert Path(environ["DUFT_CONFIG_DIR"]) == config_dir.resolve()
    assert "PGPASSWORD" not in environ
    assert "DUFT_STATE_DIR" not in environ  # the daemon's folders are not the worker's business
    everything = json.dumps([environ, seen["argv"]])
    assert password not in everything
    assert "daemon-only-secret" not in everything
    # The key clients sign with never reaches a worker either.
    assert daemon.client.info.key.decode() not in everything
    assert daemon.request(Op.HEALTH)["runs"] == {"succeeded": 1}


# -- control operations ---------------------------------------------------------------


def test_a_submit_during_a_reload_sees_the_old_or_the_new_config_whole(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """Submits pipelined behind a reload of a large config each resolve both parameters
    from one config (old/old or new/new, never old/new); after the reload, the new."""
    add_worker_task(config_dir, "GATED", "gated")
    tasks_file = config_dir / "system" / "data_tasks.json"
    (config_dir / "system" / "data_tasks" / "noop.py").write_text("pass\n", encoding="utf-8")

    def write_tasks(value: str, filler: int) -> None:
        document = json.loads(tasks_file.read_text(encoding="utf-8"))
        kept = [t for t in document["dataTasks"] if not t["id"].startswith(("SWAP-", "FILL-"))]
        params = {name: {"defaultValue": value} for name in ("a", "b")}
        swap = [
            {"id": f"SWAP-{i}", "pythonFile": "noop.py", "supportedParameters": params}
            for i in range(31)
        ]
        fill = [{"id": f"FILL-{i}", "pythonFile": "noop.py"} for i in range(filler)]
        document["dataTasks"] = kept + swap + fill
        tasks_file.write_text(json.dumps(document, indent=2), encoding="utf-8")

    write_tasks("old", 0)
    daemon = daemon_factory(config_dir, "--max-concurrent", "1", "--no-spares")
    gate = daemon.submit("GATED")["run"]["id"]  # holds the only slot: the rest stay queued
    read_note(config_dir, "ready", gate)
    write_tasks("new", 3000)  # large enough that loading it takes a while

    assert daemon.client is not None
    info = daemon.client.info
    with RawSocket(zmq.DEALER, info.control) as dealer:
        dealer.send(encode_request(Op.RELOAD, {}, info.key, CLIENT_SIGNER))
        for i in range(30):
            dealer.send(encode_request(Op.SUBMIT, {"task": f"SWAP-{i}"}, info.key, CLIENT_SIGNER))
        replies = []
        for _ in range(31):
            frames = dealer.recv(timeout=30)
            assert frames is not None, "a reply is missing"
            replies.append(decode_reply(frames, info.key))
    assert all(reply["ok"] for reply in replies), replies
    seen = [r["result"]["run"]["params"] for r in replies if "run" in r["result"]]
    assert len(seen) == 30
    assert all(params in ({"a": "old", "b": "old"}, {"a": "new", "b": "new"}) for params in seen)
    (reloaded,) = [r["result"] for r in replies if "run" not in r["result"]]
    assert reloaded["tasks"] >= 3030
    assert daemon.submit("SWAP-30")["run"]["params"] == {"a": "new", "b": "new"}


def refused(daemon: DaemonProcess, op: str, **args: object) -> str:
    """The error code of a request the daemon must refuse."""
    with pytest.raises(DaemonError) as caught:
        daemon.request(op, **args)
    return caught.value.code


def test_health_reports_the_daemon_and_its_counters(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """health answers with the daemon's identity, limits, run counts and drop counters."""
    daemon = daemon_factory(config_dir, "--max-concurrent", "3")
    health = daemon.request(Op.HEALTH)
    assert health["pid"] == daemon.process.pid
    assert health["protocol"] == 1
    assert Path(health["config"]) == config_dir.resolve()
    assert (health["active"], health["queued"], health["max_concurrent"]) == (0, 0, 3)
    assert health["runs"] == {}
    assert health["dropped"] == {}
    assert health["uptime_s"] >= 0


def test_tasks_lists_hidden_tasks_only_when_asked(daemon: DaemonProcess) -> None:
    """tasks leaves out hideInUI tasks (SLOW-SAMPLE) unless all is true."""
    shown = {task["id"]: task for task in daemon.request(Op.TASKS)["tasks"]}
    everything = {task["id"]: task for task in daemon.request(Op.TASKS, all=True)["tasks"]}
    assert "SAMPLE" in shown
    assert "SLOW-SAMPLE" not in shown
    assert everything["SLOW-SAMPLE"]["hidden"] is True
    assert set(shown) < set(everything)
    assert all(not task["hidden"] for task in shown.values())


def test_task_shows_one_task_and_unknown_ids_are_refused(daemon: DaemonProcess) -> None:
    """task describes one task without connection values; unknown tasks and runs get
    unknown_task / unknown_run, and a submit says which parameters it ignored."""
    task = daemon.request(Op.TASK, task="SAMPLE")["task"]
    assert task["id"] == "SAMPLE"
    assert task["connections"] == ["ANA"]
    assert task["parameters"]["steps"]["default"] == 10
    assert "analysis.sqlite" not in json.dumps(task)
    assert refused(daemon, Op.TASK, task="NO-SUCH-TASK") == "unknown_task"
    assert refused(daemon, Op.SUBMIT, task="NO-SUCH-TASK") == "unknown_task"
    assert refused(daemon, Op.RUN, run=4242) == "unknown_run"
    assert refused(daemon, Op.EVENTS, run=4242) == "unknown_run"
    assert refused(daemon, Op.CANCEL, run=4242) == "unknown_run"
    assert refused(daemon, Op.RUNS, state="exploded") == "bad_request"
    reply = daemon.submit("SAMPLE", steps=1, sleep_time=0, colour="red")
    assert set(reply["ignored"]) == {"colour"}
    assert "colour" not in reply["run"]["params"]
    assert daemon.wait_final(reply["run"]["id"])["state"] == "succeeded"


def test_runs_filter_by_task_and_state_and_limit(runs_daemon: DaemonProcess) -> None:
    """runs lists newest first and filters by task, by state and by count."""
    ids = []
    for task in ("SAMPLE", "EXIT-3", "SAMPLE"):
        ids.append(run_to_end(runs_daemon, task, steps=1, sleep_time=0)["id"])

    def listed(**args: object) -> list[int]:
        return [run["id"] for run in runs_daemon.request(Op.RUNS, **args)["runs"]]

    assert listed() == ids[::-1]
    assert listed(task="SAMPLE") == [ids[2], ids[0]]
    assert listed(state="failed") == [ids[1]]
    assert listed(task="SAMPLE", state="failed") == []
    assert listed(limit=1) == [ids[2]]
    assert listed(state="running") == []


def test_events_come_in_pages_after_a_sequence_number(daemon: DaemonProcess) -> None:
    """events after a sequence number returns the next page, says when more follow, and
    says final once the page reaches the end of a finished run."""
    run_id = daemon.submit("SAMPLE", steps=20, sleep_time=0)["run"]["id"]
    daemon.wait_final(run_id)
    everything = daemon.events(run_id)
    total = len(everything)
    assert total > 40
    pages, after = [], 0
    while True:
        page = daemon.request(Op.EVENTS, run=run_id, after=after, limit=10)
        pages.append(page)
        if not page["more"]:
            break
        assert page["final"] is False
        after = page["events"][-1]["seq"]
    assert [len(page["events"]) for page in pages[:-1]] == [10] * (len(pages) - 1)
    assert [e for page in pages for e in page["events"]] == everything
    assert pages[-1]["final"] is True
    tail = daemon.request(Op.EVENTS, run=run_id, after=total - 3)
    assert [e["seq"] for e in tail["events"]] == [total - 2, total - 1, total]
    past_end = daemon.request(Op.EVENTS, run=run_id, after=total)
    assert (past_end["events"], past_end["more"], past_end["final"]) == ([], False, True)


def test_reload_adds_tasks_and_live_runs_keep_their_spec(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """After reload a new task can be submitted and a removed one cannot, while a run in
    flight keeps the task and connection values it was submitted with."""
    add_worker_task(config_dir, "GATED", "gated", dataConnections=["ANA"])
    daemon = daemon_factory(config_dir)
    in_flight = daemon.submit("GATED")["run"]["id"]
    read_note(config_dir, "ready", in_flight)

    tasks_file = config_dir / "system" / "data_tasks.json"
    document = json.loads(tasks_file.read_text(encoding="utf-8"))
    document["dataTasks"] = [t for t in document["dataTasks"] if t["id"] != "GATED"]
    tasks_file.write_text(json.dumps(document), encoding="utf-8")
    add_worker_task(config_dir, "ADDED-LATER", "brief")
    user_file = config_dir / "user" / "config.json"
    user = json.loads(user_file.read_text(encoding="utf-8"))
    user["dataConnectionParameters"]["ANA"]["sqlite3file"] = "changed.sqlite"
    user_file.write_text(json.dumps(user), encoding="utf-8")

    assert refused(daemon, Op.SUBMIT, task="ADDED-LATER") == "unknown_task"
    reloaded = daemon.request(Op.RELOAD)
    assert reloaded["errors"] == 0
    assert reloaded["tasks"] == reloaded["runnable"]
    added = daemon.submit("ADDED-LATER")["run"]["id"]
    assert daemon.wait_final(added)["state"] == "succeeded"
    assert refused(daemon, Op.SUBMIT, task="GATED") == "unknown_task"

    open_gate(config_dir, in_flight)
    assert daemon.wait_final(in_flight)["state"] == "succeeded"
    assert "ANA file: analysis.sqlite" in log_messages(daemon.events(in_flight))
    sample = run_to_end(daemon, "SAMPLE", steps=1, sleep_time=0)
    assert any("changed.sqlite" in m for m in log_messages(daemon.events(sample["id"])))
