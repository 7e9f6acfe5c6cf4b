"""Run policy against a real daemon: one active run per task, the queue, cancel, timeouts."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import zmq

from clients.bus import DaemonError
from dte_tools.wire import CLIENT_SIGNER, Op, encode_request
from tests.harness import (
    DaemonProcess,
    RawSocket,
    add_worker_task,
    open_gate,
    pid_alive,
    read_note,
    wait_for,
    wait_gone,
)


def test_second_submit_joins_the_running_run(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """Submitting a task while its run is running returns that run with joined true."""
    add_worker_task(config_dir, "GATED", "gated", dataConnections=["ANA"])
    daemon = daemon_factory(config_dir)
    first = daemon.submit("GATED")
    run_id = first["run"]["id"]
    read_note(config_dir, "ready", run_id)
    again = daemon.submit("GATED")
    assert again["joined"] is True
    assert again["run"]["id"] == run_id
    assert again["run"]["state"] == "running"
    open_gate(config_dir, run_id)
    assert daemon.wait_final(run_id)["state"] == "succeeded"
    assert len(daemon.request(Op.RUNS, task="GATED")["runs"]) == 1
    # Once it has ended, a submit starts a new run.
    assert daemon.submit("GATED")["joined"] is False


def test_second_submit_joins_the_queued_run(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """Submitting a task whose run waits in the queue returns that queued run with joined true."""
    add_worker_task(config_dir, "HOLDER", "gated", dataConnections=["ANA"])
    add_worker_task(config_dir, "BRIEF", "brief")
    daemon = daemon_factory(config_dir, "--max-concurrent", "1")
    holder = daemon.submit("HOLDER")["run"]["id"]
    read_note(config_dir, "ready", holder)
    first = daemon.submit("BRIEF")
    assert first["run"]["state"] == "queued"
    again = daemon.submit("BRIEF")
    assert (again["joined"], again["run"]["id"], again["run"]["state"]) == (
        True,
        first["run"]["id"],
        "queued",
    )
    assert daemon.request(Op.HEALTH)["queued"] == 1
    open_gate(config_dir, holder)
    assert daemon.wait_final(first["run"]["id"])["state"] == "succeeded"


def test_simultaneous_submits_of_a_task_start_one_run(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """Five submits of one task arriving together start one run; the other four join it."""
    add_worker_task(config_dir, "HANGS", "sleeps")
    daemon = daemon_factory(config_dir, "--max-concurrent", "8")  # none waits in the queue
    key = daemon.client.info.key
    with RawSocket(zmq.DEALER, daemon.client.info.control) as control:
        for _ in range(5):
            control.send(encode_request(Op.SUBMIT, {"task": "HANGS"}, key, CLIENT_SIGNER))
        replies = []
        for _ in range(5):
            reply = control.recv()
            assert reply is not None
            replies.append(json.loads(reply[2])["result"])
    runs = daemon.request(Op.RUNS, task="HANGS")["runs"]
    for run in runs:  # leave nothing running, whatever the outcome
        read_note(config_dir, "ready", run["id"])
        daemon.request(Op.CANCEL, run=run["id"])
        daemon.wait_final(run["id"])
    assert len(runs) == 1, [(run["id"], run["state"]) for run in runs]
    assert sorted(reply["joined"] for reply in replies) == [False, True, True, True, True]
    assert {reply["run"]["id"] for reply in replies} == {runs[0]["id"]}


def test_queue_runs_one_at_a_time_in_submit_order(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """With --max-concurrent 1, runs of three tasks never overlap and start in FIFO order."""
    tasks = ["BRIEF-A", "BRIEF-B", "BRIEF-C"]
    for task in tasks:
        add_worker_task(config_dir, task, "brief")
    daemon = daemon_factory(config_dir, "--max-concurrent", "1")
    run_ids = [daemon.submit(task)["run"]["id"] for task in tasks]

    most_running = 0

    def all_final() -> bool:
        nonlocal most_running
        runs = daemon.request(Op.RUNS)["runs"]
        live = sum(run["state"] in ("starting", "running") for run in runs)
        most_running = max(most_running, live)
        return all(run["state"] == "succeeded" for run in runs) and len(runs) == 3

    wait_for(all_final, 20, "the three queued runs to succeed")
    assert most_running <= 1
    runs = sorted((daemon.request(Op.RUN, run=i)["run"] for i in run_ids), key=lambda r: r["id"])
    for earlier, later in itertools.pairwise(runs):
        assert later["started_at"] >= earlier["ended_at"], (earlier, later)
    by_start = sorted(runs, key=lambda run: run["started_at"])
    assert [run["id"] for run in by_start] == run_ids
    assert [run["task_id"] for run in by_start] == tasks


def test_pipelined_submits_are_each_answered_with_their_own_stored_run_in_order(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """Submits sent without waiting for replies (stored together) each get their own run,
    numbered in the order they were sent, queued with the queued state as its first event;
    a repeat among them joins; the queue starts them in that order."""
    add_worker_task(config_dir, "HOLDER", "gated", dataConnections=["ANA"])
    tasks = [f"BRIEF-{i:02d}" for i in range(12)]
    for task in tasks:
        add_worker_task(config_dir, task, "brief")
    daemon = daemon_factory(config_dir, "--max-concurrent", "1")
    holder = daemon.submit("HOLDER")["run"]["id"]
    read_note(config_dir, "ready", holder)
    key = daemon.client.info.key
    sent = [*tasks, tasks[0]]
    with RawSocket(zmq.DEALER, daemon.client.info.control) as control:
        for task in sent:
            control.send(encode_request(Op.SUBMIT, {"task": task}, key, CLIENT_SIGNER))
        replies = []
        for _ in sent:
            reply = control.recv()
            assert reply is not None
            body = json.loads(reply[2])
            assert body["ok"], body
            replies.append(body["result"])
    created = {r["run"]["task_id"]: r["run"]["id"] for r in replies if not r["joined"]}
    run_ids = [created[task] for task in tasks]
    assert run_ids == sorted(run_ids) and len(set(run_ids)) == len(tasks)
    (repeat,) = [r for r in replies if r["joined"]]
    assert repeat["run"]["id"] == created[tasks[0]]
    assert all(r["run"]["state"] == "queued" for r in replies)
    assert daemon.request(Op.HEALTH)["queued"] == len(tasks)
    for run_id in run_ids:
        first = daemon.events(run_id)[0]
        assert (first["seq"], first["kind"], first["data"]["state"]) == (1, "state", "queued")
    open_gate(config_dir, holder)
    runs = [daemon.wait_final(run_id) for run_id in run_ids]
    assert all(run["state"] == "succeeded" for run in runs)
    by_start = sorted(runs, key=lambda run: run["started_at"])
    assert [run["id"] for run in by_start] == run_ids


def test_cancel_kills_the_whole_process_tree(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """Cancelling a run records it cancelled and leaves no process of it alive, a child that
    escaped into its own session included."""
    add_worker_task(config_dir, "SPAWNS", "spawns_children")
    daemon = daemon_factory(config_dir)
    run_id = daemon.submit("SPAWNS")["run"]["id"]
    pids = read_note(config_dir, "ready", run_id)
    assert all(pid_alive(pid) for pid in pids.values()), pids
    daemon.request(Op.CANCEL, run=run_id)
    run = daemon.wait_final(run_id, timeout=15)
    assert run["state"] == "cancelled"
    assert "cancelled by request" in run["reason"]
    wait_gone(list(pids.values()))


def test_cancel_ends_a_run_whose_escaped_child_holds_its_output(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """Cancelling a run whose worker started a child in a new session that still holds the
    worker's stdout/stderr ends the run cancelled and kills that child."""
    add_worker_task(config_dir, "ESCAPES", "escapes_with_output")
    daemon = daemon_factory(config_dir, "--cancel-grace", "0.5")
    run_id = daemon.submit("ESCAPES")["run"]["id"]
    pids = read_note(config_dir, "ready", run_id)
    try:
        daemon.request(Op.CANCEL, run=run_id)
        assert daemon.wait_final(run_id, timeout=4)["state"] == "cancelled"
        wait_gone(list(pids.values()), timeout=2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids["escaped"], signal.SIGKILL)  # so the daemon can stop at teardown


def test_run_ends_when_its_worker_exits_leaving_a_detached_child(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A worker that exits 0 leaving a detached child that holds its output succeeds at once,
    and the child it left is killed with it."""
    add_worker_task(config_dir, "LEAVES", "leaves_detached_child")
    daemon = daemon_factory(config_dir)
    run_id = daemon.submit("LEAVES")["run"]["id"]
    pids = read_note(config_dir, "ready", run_id)
    try:
        assert daemon.wait_final(run_id, timeout=4)["state"] == "succeeded"
        wait_gone([pids["escaped"]], timeout=2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids["escaped"], signal.SIGKILL)


def test_cancel_escalates_to_sigkill_for_a_worker_ignoring_sigterm(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A worker that ignores SIGTERM is killed with SIGKILL after the grace period, and the
    reason says so."""
    add_worker_task(config_dir, "STUBBORN", "ignores_sigterm")
    daemon = daemon_factory(config_dir, "--cancel-grace", "0.5")
    run_id = daemon.submit("STUBBORN")["run"]["id"]
    pid = read_note(config_dir, "ready", run_id)["pid"]
    daemon.request(Op.CANCEL, run=run_id)
    run = daemon.wait_final(run_id, timeout=15)
    assert run["state"] == "cancelled"
    assert "SIGKILL" in run["reason"]
    wait_gone([pid])
    events = daemon.events(run_id)
    assert events[-1]["data"]["stopped_by"] == "SIGKILL"


def test_cancel_of_a_queued_run_never_starts_it(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A queued run that is cancelled ends cancelled without ever starting; a finished run
    is returned unchanged by a later cancel."""
    add_worker_task(config_dir, "HOLDER", "gated", dataConnections=["ANA"])
    add_worker_task(config_dir, "BRIEF", "brief")
    daemon = daemon_factory(config_dir, "--max-concurrent", "1")
    holder = daemon.submit("HOLDER")["run"]["id"]
    read_note(config_dir, "ready", holder)
    queued = daemon.submit("BRIEF")["run"]["id"]
    assert daemon.request(Op.CANCEL, run=queued)["run"]["state"] == "cancelled"
    states = [e["data"]["state"] for e in daemon.events(queued) if e["kind"] == "state"]
    assert states == ["queued", "cancelled"]
    open_gate(config_dir, holder)
    done = daemon.wait_final(holder)
    assert done["state"] == "succeeded"
    assert daemon.request(Op.CANCEL, run=holder)["run"] == done
    assert daemon.request(Op.RUN, run=queued)["run"]["started_at"] is None


def test_timeout_fails_a_hanging_run(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A task with timeoutSeconds 1 that hangs is stopped and failed with a reason saying it
    timed out."""
    add_worker_task(config_dir, "HANGS", "sleeps", timeoutSeconds=1)
    daemon = daemon_factory(config_dir)
    run_id = daemon.submit("HANGS")["run"]["id"]
    pid = read_note(config_dir, "ready", run_id)["pid"]
    run = daemon.wait_final(run_id, timeout=15)
    assert run["state"] == "failed"
    assert "timed out" in run["reason"]
    assert run["ended_at"] - run["started_at"] >= 1
    wait_gone([pid])


def test_cancel_right_after_submit_cancels_the_run(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A cancel sent the moment a submit returns always cancels that run."""
    add_worker_task(config_dir, "HANGS", "sleeps")
    daemon = daemon_factory(config_dir)
    for _ in range(40):  # the window is a store round trip wide: try until it is hit
        run_id = daemon.submit("HANGS")["run"]["id"]
        try:
            daemon.request(Op.CANCEL, run=run_id)
        except DaemonError as error:
            read_note(config_dir, "ready", run_id)
            daemon.request(Op.CANCEL, run=run_id)  # running now: this one works
            daemon.wait_final(run_id)
            raise AssertionError(f"cancel right after submit was refused: {error}") from None
        assert daemon.wait_final(run_id, timeout=10)["state"] == "cancelled"


def test_cancelling_a_logging_task_drops_nothing(daemon: DaemonProcess) -> None:
    """Cancelling a run that logs through dte_tools records it promptly and counts no drop."""
    run_id = daemon.submit("SLOW-SAMPLE")["run"]["id"]
    wait_for(lambda: len(daemon.events(run_id)) > 5, 15, "the run to log a few lines")
    daemon.request(Op.CANCEL, run=run_id)
    assert daemon.wait_final(run_id, timeout=15)["state"] == "cancelled"
    assert daemon.request(Op.HEALTH)["dropped"] == {}
