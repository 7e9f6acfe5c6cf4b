"""The duftd wire format: frames, signing, topics and names, in one small module.

Task code imports this (through ``dte_tools``), so it uses only the standard library.
The daemon validates message bodies with pydantic on top of these frames.

Control request (client or worker -> ``control`` ROUTER), one multipart message::

    [PROTOCOL, signer, signature, body]

- ``PROTOCOL`` is ``b"duft/1"``.
- ``signer`` is ``b"client"`` for clients holding the connection file's key, or
  ``b"run:<run_id>"`` for a worker, which signs with its one-time run token.
- ``signature`` is the lowercase hex HMAC-SHA256 of ``body`` under that key.
- ``body`` is JSON: ``{"op": str, "id": str, "ts": float, "args": {...}}``; ``id`` is
  unique per request (a replayed id is refused) and ``ts`` is Unix time in seconds.

Control reply (``control`` -> requester)::

    [PROTOCOL, signature, body]

``body`` is ``{"id": <request id>, "ok": true, "result": {...}}`` or
``{"id": ..., "ok": false, "error": {"code": str, "message": str}}``, signed with the
same key as the request (a reply to an unverifiable request is signed with nothing,
i.e. an empty signature).

Ingest (worker -> ``ingest`` PULL): ``[PROTOCOL, b"run:<run_id>", signature, body]``
where ``body`` is a JSON array of ``[kind, ts, data]`` events.

Events (``events`` PUB -> subscribers): ``[topic, body]`` where ``topic`` is
``ev/<task_id>/<run_id>/`` and ``body`` is a JSON array of one or more stored events of
that run, in sequence order, each
``{"v": 1, "run_id": int, "task_id": str, "seq": int, "ts": float, "kind": str,
"data": {...}}``. Subscribe to ``ev/`` for everything, ``ev/<task_id>/`` for one task,
``ev/<task_id>/<run_id>/`` for one run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
import uuid
from enum import StrEnum
from typing import Any

PROTOCOL = b"duft/1"
PROTOCOL_VERSION = 1
CLIENT_SIGNER = b"client"
RUN_SIGNER_PREFIX = b"run:"
TOPIC_PREFIX = b"ev/"
# A larger message gets an error reply (control) or is dropped and counted (ingest).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Integers a message may carry (run ids, sequence numbers, timestamps): SQLite's range.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
# Longest name (task address, connection id...) a request may carry.
MAX_NAME_LENGTH = 200
# libzmq disconnects a peer sending more than this (ZMQ_MAXMSGSIZE) before Python sees it.
HARD_MESSAGE_BYTES = 64 * 1024 * 1024

# Environment variables a worker is started with (and nothing secret).
ENV_RUN_ID = "DUFT_RUN_ID"
ENV_RUN_TOKEN = "DUFT_RUN_TOKEN"
# Set when a worker process starts (a spare starts before its run is known): every process
# of a run inherits it, so duftd can find and stop them all.
ENV_WORKER_ID = "DUFT_WORKER_ID"
# Where a program the task starts opens the task's event channel: ``/proc/<pid>/fd/<fd>``
# of the process that holds it, and the pipe's inode (dte_tools.channel).
ENV_CHANNEL = "DUFT_EVENT_CHANNEL"
ENV_CONTROL = "DUFT_CONTROL_ENDPOINT"
ENV_INGEST = "DUFT_INGEST_ENDPOINT"
ENV_CONFIG_DIR = "DUFT_CONFIG_DIR"
ENV_STATE_DIR = "DUFT_STATE_DIR"
ENV_DATA_DIR = "DUFT_DATA_DIR"
# Standalone only: which task a script declared by several tasks runs as (its address).
ENV_TASK = "DUFT_TASK"


class Op:
    """Control operation names."""

    HEALTH = "health"
    TASKS = "tasks"
    TASK = "task"
    SUBMIT = "submit"
    CANCEL = "cancel"
    RUN = "run"
    RUNS = "runs"
    EVENTS = "events"
    RELOAD = "reload"
    SCHEDULES = "schedules"
    TEST_CONNECTION = "test_connection"
    # Worker operations, signed with the run token.
    WORKER_HELLO = "worker.hello"
    WORKER_CONNECTION = "worker.connection"
    # A relay on a Dask worker (``--launcher dask``): start the run once, bring its events.
    WORKER_CLAIM = "worker.claim"
    WORKER_EVENTS = "worker.events"


OPS = frozenset(value for name, value in vars(Op).items() if not name.startswith("_"))
WORKER_OPS = frozenset({Op.WORKER_HELLO, Op.WORKER_CONNECTION, Op.WORKER_CLAIM, Op.WORKER_EVENTS})


class ErrorCode(StrEnum):
    """The ``error.code`` of every refusal: duftd's control replies, the task side's link
    to duftd, and the bridge's HTTP errors. Clients branch on these; add a member rather
    than reuse one for a different situation."""

    ERROR = "error"  # a refusal that carried no code
    INTERNAL = "internal"  # a bug: the log has the details
    TIMEOUT = "timeout"  # no reply in time (a client-side verdict)
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    BAD_CONFIG = "bad_config"
    UNKNOWN_TASK = "unknown_task"
    AMBIGUOUS_TASK = "ambiguous_task"
    TASK_NOT_RUNNABLE = "task_not_runnable"
    BAD_PARAMETER = "bad_parameter"
    UNKNOWN_CONNECTION = "unknown_connection"
    UNKNOWN_RUN = "unknown_run"
    SHUTTING_DOWN = "shutting_down"
    STORAGE_FULL = "storage_full"
    STARTUP = "startup"
    # The bridge's own refusals.
    DAEMON_UNAVAILABLE = "daemon_unavailable"
    FORBIDDEN_HOST = "forbidden_host"
    FORBIDDEN_ORIGIN = "forbidden_origin"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    TOO_LARGE = "too_large"
    CONFLICT = "conflict"
    UNKNOWN_DASHBOARD = "unknown_dashboard"
    FORBIDDEN = "forbidden"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    NOT_SERVED = "not_served"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"


class Kind:
    """Event kinds."""

    STATE = "state"  # {"state", "reason"?, "exit_code"?, ...}
    LOG = "log"  # {"level": "info"|"warning"|"error", "message"}
    PROGRESS = "progress"  # {"done", "total", "message"?}
    STDOUT = "stdout"  # {"text"}
    STDERR = "stderr"  # {"text"}
    CELL = "cell"  # {"phase": "started"|"finished", "index", "number", "count", "status"?}
    NOTICE = "notice"  # {"message"}: something the daemon wants recorded with the run
    FAILURE = "failure"  # {"cell_index", "ename", "evalue", "traceback"}: a notebook's failing cell


class State:
    """Run states; the last four are final."""

    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"


ACTIVE_STATES = frozenset({State.QUEUED, State.STARTING, State.RUNNING})
FINAL_STATES = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED, State.LOST})


def sign(key: bytes, body: bytes) -> bytes:
    """Hex HMAC-SHA256 of ``body``."""
    return hmac.new(key, body, hashlib.sha256).hexdigest().encode()


def verify(key: bytes, body: bytes, signature: bytes) -> bool:
    """Constant-time check of a signature made by :func:`sign`."""
    return hmac.compare_digest(sign(key, body), signature)


def run_signer(run_id: int | str) -> bytes:
    return RUN_SIGNER_PREFIX + str(run_id).encode()


def encode_request(op: str, args: dict[str, Any], key: bytes, signer: bytes) -> list[bytes]:
    """Frames of one signed control request."""
    body = json.dumps(
        {"op": op, "id": uuid.uuid4().hex, "ts": time.time(), "args": args},
        separators=(",", ":"),
    ).encode()
    return [PROTOCOL, signer, sign(key, body), body]


def decode_reply(frames: list[bytes], key: bytes) -> dict[str, Any]:
    """Body of a control reply; raises ``ValueError`` on a malformed or forged one."""
    if len(frames) != 3 or frames[0] != PROTOCOL:
        raise ValueError("not a duft/1 reply")
    _, signature, body = frames
    if signature and not verify(key, body, signature):
        raise ValueError("reply signature does not match")
    reply = json.loads(body)
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ValueError("reply body has no 'ok' field")
    return reply


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number duft/1 accepts (JSON has no NaN or infinity)")


def _int64(text: str) -> int:
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        shown = text if len(text) <= 24 else f"{text[:20]}...({len(text)} digits)"
        raise ValueError(f"integer {shown} is out of range (duft/1 integers are 64-bit signed)")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:24]} is out of range (too large for a float)")
    return value


def loads_strict(body: bytes | str) -> Any:
    """Parse a message body as strict JSON: no NaN or infinities (which compare false with
    everything, so a check like ``abs(now - ts) > limit`` would pass them) and no integer
    beyond 64 bits (which the store and most clients cannot hold); ``ValueError`` names
    the offending value."""
    return json.loads(body, parse_constant=_no_constant, parse_int=_int64, parse_float=_finite)


EVENT_VERSION = 1


def envelope(run_id: int, task_id: str, stored: dict[str, Any]) -> dict[str, Any]:
    """A published event (see the module docstring) from a stored one (``seq``, ``ts``,
    ``kind``, ``data``): the one shape clients see, from the store or live."""
    return {
        "v": EVENT_VERSION,
        "run_id": run_id,
        "task_id": task_id,
        "seq": stored["seq"],
        "ts": stored["ts"],
        "kind": stored["kind"],
        "data": stored["data"],
    }


def encode_event(
    run_id: int, task_json: str, seq: int, ts: float, kind: str, data_json: str
) -> str:
    """:func:`envelope` as JSON text, from parts already encoded (``task_json`` is the
    task id as a JSON string, ``data_json`` the data object): the daemon builds one per
    stored event, so it does not re-encode what it has just encoded."""
    return (
        f'{{"v":{EVENT_VERSION},"run_id":{run_id},"task_id":{task_json},'
        f'"seq":{seq},"ts":{ts!r},"kind":"{kind}","data":{data_json}}}'
    )


def decode_events(body: bytes | str) -> list[dict[str, Any]]:
    """The events of one published message body; ``ValueError`` if it is not a non-empty
    list of events of one run."""
    events = json.loads(body)
    if not isinstance(events, list) or not events:
        raise ValueError("an event message is a non-empty JSON array")
    run_id = events[0].get("run_id") if isinstance(events[0], dict) else None
    for event in events:
        if not isinstance(event, dict) or event.get("run_id") != run_id or "seq" not in event:
            raise ValueError("an event message holds events of one run, each with a seq")
    return events


def is_final(event: dict[str, Any]) -> bool:
    """True for a run's last event: its final state."""
    return event["kind"] == Kind.STATE and event["data"].get("state") in FINAL_STATES


def topic(task_id: str, run_id: int | None = None) -> bytes:
    """PUB topic prefix for one task, or one run of it."""
    run = "" if run_id is None else f"{run_id}/"
    return TOPIC_PREFIX + f"{task_id}/{run}".encode()
