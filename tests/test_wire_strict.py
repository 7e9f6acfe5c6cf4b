"""Strict input on the control socket: NaN, infinities and integers beyond 64 bits in any
field of a signed request get ``bad_request`` naming the value, and change nothing."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import zmq

from clients.bus import DaemonError
from dte_tools.wire import CLIENT_SIGNER, PROTOCOL, Op, loads_strict, sign
from tests.harness import DaemonProcess, RawSocket


def body(op: str, args_json: str, ts_json: str | None = None) -> bytes:
    """A request body written by hand, so it can hold what json.dumps would not write."""
    ts = ts_json if ts_json is not None else repr(time.time())
    return f'{{"op":"{op}","id":"{uuid.uuid4().hex}","ts":{ts},"args":{args_json}}}'.encode()


HOSTILE = [
    ("NaN timestamp", body(Op.HEALTH, "{}", "NaN"), "NaN"),
    ("infinite timestamp", body(Op.HEALTH, "{}", "Infinity"), "Infinity"),
    ("overflowing float timestamp", body(Op.HEALTH, "{}", "1e400"), "1e400"),
    ("huge integer timestamp", body(Op.HEALTH, "{}", "1" + "0" * 30), "out of range"),
    ("run id of 2**63", body(Op.RUN, f'{{"run":{2**63}}}'), "out of range"),
    ("events after 2**64", body(Op.EVENTS, f'{{"run":1,"after":{2**64}}}'), "out of range"),
    ("NaN parameter", body(Op.SUBMIT, '{"task":"SAMPLE","params":{"x":NaN}}'), "NaN"),
    (
        "negative infinity parameter",
        body(Op.SUBMIT, '{"task":"SAMPLE","params":{"x":[-Infinity]}}'),
        "-Infinity",
    ),
    ("huge parameter", body(Op.SUBMIT, f'{{"task":"SAMPLE","params":{{"x":{-(2**70)}}}}}'), "out"),
    (
        "deep nesting",
        body(Op.SUBMIT, '{"task":"SAMPLE","params":{"x":' + "[" * 100_000 + "]" * 100_000 + "}}"),
        "deep",
    ),
]


@pytest.mark.parametrize(("case", "request_body", "named"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_out_of_range_numbers_are_bad_requests(
    daemon: DaemonProcess, case: str, request_body: bytes, named: str
) -> None:
    """Each hostile request is refused as bad_request naming the value; no run is created and
    the daemon keeps serving."""
    key = daemon.client.info.key
    with RawSocket(zmq.DEALER, daemon.client.info.control) as control:
        reply = control.ask([PROTOCOL, CLIENT_SIGNER, sign(key, request_body), request_body])
    assert reply["ok"] is False, (case, reply)
    assert reply["error"]["code"] == "bad_request", (case, reply)
    assert named in reply["error"]["message"], (case, reply)
    assert daemon.request(Op.RUNS)["runs"] == []


def test_largest_64_bit_run_id_is_an_unknown_run(daemon: DaemonProcess) -> None:
    """2**63 - 1 is a valid integer: the answer is unknown_run, not an internal error."""
    with pytest.raises(DaemonError) as refused:
        daemon.request(Op.RUN, run=2**63 - 1)
    assert refused.value.code == "unknown_run"


def test_loads_strict_accepts_ordinary_json() -> None:
    """Ordinary JSON (floats, 64-bit integers, nesting) parses as json.loads would."""
    text = json.dumps({"a": [1.5, -(2**63), 2**63 - 1, {"b": None}]})
    assert loads_strict(text) == json.loads(text)
