"""Security against a real daemon: signed requests only, no replays, run tokens confined to
their own run, and connection passwords that never leave the worker that asked."""

from __future__ import annotations

import json
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

from dte_tools.wire import (
    CLIENT_SIGNER,
    PROTOCOL,
    Op,
    decode_reply,
    encode_request,
    run_signer,
    sign,
)
from tests.harness import (
    DaemonProcess,
    RawSocket,
    add_worker_task,
    final_state_event,
    open_gate,
    read_note,
    wait_for,
)


def client_body(op: str, args: dict, ts: float | None = None) -> bytes:
    body = {"op": op, "id": uuid.uuid4().hex, "ts": time.time() if ts is None else ts, "args": args}
    return json.dumps(body).encode()


def error_code(reply: dict) -> str:
    assert reply["ok"] is False, reply
    return reply["error"]["code"]


@pytest.fixture
def gated_daemon(config_dir: Path, daemon_factory: Callable[..., DaemonProcess]) -> DaemonProcess:
    """A strict daemon with two gated tasks that declare only the ANA connection."""
    add_worker_task(config_dir, "GATED-A", "gated", dataConnections=["ANA"])
    add_worker_task(config_dir, "GATED-B", "gated", dataConnections=["ANA"])
    return daemon_factory(config_dir, "--strict-connections")


def test_connection_file_is_private(daemon: DaemonProcess) -> None:
    """The connection file holding the signing key is readable by its owner only."""
    mode = stat.S_IMODE(daemon.client.info.path.stat().st_mode)
    assert mode == 0o600


def test_unsigned_or_badly_signed_requests_are_refused_and_change_nothing(
    daemon: DaemonProcess,
) -> None:
    """A submit that is unsigned, signed with the wrong key, stale, or from an unknown signer
    gets an unauthorized reply (itself unsigned) and creates no run."""
    key = daemon.client.info.key
    args = {"task": "SAMPLE", "params": {"steps": 1, "sleep_time": 0}}
    unsigned = encode_request(Op.SUBMIT, args, key, CLIENT_SIGNER)
    unsigned[2] = b""
    wrong_key = encode_request(Op.SUBMIT, args, b"not the key", CLIENT_SIGNER)
    stale_body = client_body(Op.SUBMIT, args, ts=time.time() - 3600)
    stale = [PROTOCOL, CLIENT_SIGNER, sign(key, stale_body), stale_body]
    strangers = [
        encode_request(Op.SUBMIT, args, key, b"admin"),
        encode_request(Op.SUBMIT, args, key, run_signer(1)),
        encode_request(Op.SUBMIT, args, key, b"run:not-a-number"),
    ]
    with RawSocket(zmq.DEALER, daemon.client.info.control) as control:
        for frames in [unsigned, wrong_key, stale, *strangers]:
            control.send(frames)
            reply = control.recv()
            assert reply is not None
            assert reply[1] == b"", "a reply to an unverifiable request carries no signature"
            assert error_code(json.loads(reply[2])) == "unauthorized"
    assert daemon.request(Op.RUNS)["runs"] == []
    assert daemon.request(Op.HEALTH)["runs"] == {}


def test_replayed_request_is_refused(daemon: DaemonProcess) -> None:
    """The same signed request sent twice is served once and refused as a replay the second time."""
    key = daemon.client.info.key
    frames = encode_request(
        Op.SUBMIT, {"task": "SAMPLE", "params": {"steps": 1, "sleep_time": 0}}, key, CLIENT_SIGNER
    )
    with RawSocket(zmq.DEALER, daemon.client.info.control) as control:
        control.send(frames)
        first = decode_reply(control.recv() or [], key)  # signed with the key: verified here
        assert first["ok"] is True, first
        replay = control.ask(frames)
    assert error_code(replay) == "unauthorized"
    assert "replay" in replay["error"]["message"]
    assert len(daemon.request(Op.RUNS)["runs"]) == 1


def test_worker_token_reaches_only_its_own_run(gated_daemon: DaemonProcess) -> None:
    """A run token can fetch its run's hello and declared connections, nothing of another run,
    no undeclared connection, no client operation, and nothing once its run has ended."""
    daemon = gated_daemon
    config_dir = daemon.config_dir
    run_a = daemon.submit("GATED-A")["run"]["id"]
    run_b = daemon.submit("GATED-B")["run"]["id"]
    token_a = read_note(config_dir, "ready", run_a)["token"]
    read_note(config_dir, "ready", run_b)
    key_a = token_a.encode()

    def as_a(op: str, args: dict, signer: bytes = run_signer(run_a)) -> dict:
        with RawSocket(zmq.DEALER, daemon.client.info.control) as control:
            return control.ask(encode_request(op, args, key_a, signer))

    hello = as_a(Op.WORKER_HELLO, {})
    assert hello["ok"] is True, hello
    assert (hello["result"]["run_id"], hello["result"]["task_id"]) == (run_a, "GATED-A")
    assert as_a(Op.WORKER_CONNECTION, {"id": "ANA"})["result"]["values"]["type"] == "sqlite3"
    assert error_code(as_a(Op.WORKER_CONNECTION, {"id": "EMR"})) == "unknown_connection"
    # Run A's token claiming to be run B.
    assert error_code(as_a(Op.WORKER_HELLO, {}, signer=run_signer(run_b))) == "unauthorized"
    assert error_code(as_a(Op.WORKER_CONNECTION, {"id": "ANA"}, run_signer(run_b))) == (
        "unauthorized"
    )
    # Client operations are not a worker's to call, and worker operations not a client's.
    assert error_code(as_a(Op.SUBMIT, {"task": "SAMPLE"})) == "unauthorized"
    assert error_code(as_a(Op.CANCEL, {"run": run_b})) == "unauthorized"
    assert error_code(as_a(Op.RUNS, {})) == "unauthorized"
    with RawSocket(zmq.DEALER, daemon.client.info.control) as control:
        reply = control.ask(
            encode_request(Op.WORKER_HELLO, {}, daemon.client.info.key, CLIENT_SIGNER)
        )
    assert error_code(reply) == "unauthorized"

    # On ingest, run A's token cannot speak for run B, nor set its own run's state.
    forged = json.dumps([["log", time.time(), {"level": "error", "message": "forged"}]]).encode()
    own = json.dumps(
        [
            ["state", time.time(), {"state": "succeeded"}],
            ["log", time.time(), {"level": "info", "message": "own line"}],
        ]
    ).encode()
    with RawSocket(zmq.PUSH, daemon.client.info.ingest) as ingest:
        ingest.send([PROTOCOL, run_signer(run_b), sign(key_a, forged), forged])
        ingest.send([PROTOCOL, run_signer(run_a), sign(key_a, own), own])
        ingest.send([PROTOCOL, run_signer(run_a), sign(key_a, b"{nope"), b"{nope"])

        def dropped() -> dict | None:
            counts = daemon.request(Op.HEALTH)["dropped"]
            wanted = ("bad_signature", "bad_event", "bad_json")
            return counts if all(counts.get(reason) for reason in wanted) else None

        wait_for(dropped, 10, "ingest to drop the forged events")

    for run_id in (run_a, run_b):
        open_gate(config_dir, run_id)
    assert daemon.wait_final(run_a)["state"] == "succeeded"
    assert daemon.wait_final(run_b)["state"] == "succeeded"
    events_a, events_b = daemon.events(run_a), daemon.events(run_b)
    assert "forged" not in json.dumps(events_b)
    assert "own line" in json.dumps(events_a)
    states_a = [e["data"]["state"] for e in events_a if e["kind"] == "state"]
    assert states_a == ["queued", "starting", "running", "succeeded"]
    # The token dies with its run.
    assert error_code(as_a(Op.WORKER_HELLO, {})) == "unauthorized"


def test_password_never_leaks(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A password a task logs, prints, reports and raises is masked in stored events and
    appears nowhere in the store's files, the published events or the daemon's log."""
    password = 'Zq"7-leak-Pw!x'
    forms = [password.encode(), json.dumps(password)[1:-1].encode()]
    user_file = config_dir / "user" / "config.json"
    user = json.loads(user_file.read_text(encoding="utf-8"))
    user["dataConnectionParameters"]["ANA"]["password"] = password
    user_file.write_text(json.dumps(user), encoding="utf-8")
    add_worker_task(config_dir, "LEAKS", "leaks_password", dataConnections=["ANA"])
    daemon = daemon_factory(config_dir)

    published: list[bytes] = []

    def saw_final(subscriber: RawSocket, run_id: int) -> bool:
        for _, body in subscriber.drain():
            published.append(body)
        return any(
            event["run_id"] == run_id
            and event["kind"] == "state"
            and event["data"]["state"] in ("succeeded", "failed")
            for body in published
            for event in json.loads(body)
        )

    with RawSocket(zmq.SUB, daemon.client.info.events) as subscriber:
        subscriber.socket.subscribe(b"ev/")
        # A first run proves the subscription is live before the leaking one starts.
        warm = daemon.submit("SAMPLE", steps=1, sleep_time=0)["run"]["id"]
        wait_for(lambda: saw_final(subscriber, warm), 15, "the warm-up run on the SUB socket")
        run_id = daemon.submit("LEAKS")["run"]["id"]
        run = daemon.wait_final(run_id, timeout=15)
        wait_for(lambda: saw_final(subscriber, run_id), 10, "the leaking run's final event")

    assert run["state"] == "failed"
    assert "RuntimeError: cannot connect with ********" in run["reason"]
    events = daemon.events(run_id)
    assert "connecting with password ********" in [
        e["data"].get("message") for e in events if e["kind"] == "log"
    ]
    assert "stdout has ********" in [e["data"]["text"] for e in events if e["kind"] == "stdout"]
    assert "stderr has ********" in [e["data"]["text"] for e in events if e["kind"] == "stderr"]
    assert any("********" in line for line in final_state_event(events)["data"]["traceback"])
    assert daemon.stop() == 0

    stored = b"".join(p.read_bytes() for p in daemon.state_dir.rglob("*") if p.is_file())
    assert b"********" in stored  # the events are in these files, masked
    assert b"leak-Pw" not in stored  # a fragment, so no escaping of the quote can hide it
    for form in forms:
        assert form not in stored
        assert all(form not in body for body in published)
        assert form.decode() not in daemon.log_text()
    assert any(b"********" in body for body in published)
