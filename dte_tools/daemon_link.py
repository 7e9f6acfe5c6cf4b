"""The worker's side of the bus: signed control requests, and an event sender to ingest.

The event sender is for a process of a run that has no durable channel (a program the
task started; see :mod:`dte_tools.channel`): ``put`` only appends to a queue, one thread
ships batches to the signed ingest socket, and :meth:`EventSender.close` delivers what
is still queued (with a bound) when the process ends normally.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from dte_tools.channel import cut_field
from dte_tools.wire import (
    MAX_MESSAGE_BYTES,
    PROTOCOL,
    ErrorCode,
    decode_reply,
    encode_request,
    run_signer,
    sign,
)

CONTROL_TIMEOUT_S = 30.0
# Small enough that the daemon handles one batch in about a millisecond.
BATCH_LIMIT = 500
# Half the daemon's limit, so a batch of long lines is split rather than refused.
MAX_BATCH_BYTES = MAX_MESSAGE_BYTES // 2


class DaemonError(RuntimeError):
    """The daemon refused a request or could not be reached; ``code`` is an ErrorCode."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ControlClient:
    """Synchronous signed requests to the daemon's control socket.

    ``setup``, if given, is applied to each new socket before it connects (CURVE keys)."""

    def __init__(
        self,
        context: zmq.Context,
        endpoint: str,
        key: bytes,
        signer: bytes,
        setup: Callable[[zmq.Socket], None] | None = None,
    ) -> None:
        self._context = context
        self._setup = setup
        self._endpoint = endpoint
        self._key = key
        self._signer = signer
        self._socket: zmq.Socket | None = None
        self._lock = threading.Lock()

    def request(self, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request and return its ``result``; raises :class:`DaemonError`."""
        with self._lock:
            socket = self._connect()
            frames = encode_request(op, args or {}, self._key, self._signer)
            socket.send_multipart(frames)
            if not socket.poll(CONTROL_TIMEOUT_S * 1000):
                self._reset()
                raise DaemonError(
                    ErrorCode.TIMEOUT,
                    f"duftd did not answer {op!r} within {CONTROL_TIMEOUT_S:.0f} s",
                )
            reply = decode_reply(socket.recv_multipart(), self._key)
        if not reply["ok"]:
            error = reply.get("error") or {}
            raise DaemonError(
                error.get("code", ErrorCode.ERROR), error.get("message", "request refused")
            )
        return reply.get("result") or {}

    def _connect(self) -> zmq.Socket:
        if self._socket is None:
            self._socket = self._context.socket(zmq.DEALER)
            self._socket.linger = 0
            if self._setup is not None:
                self._setup(self._socket)
            self._socket.connect(self._endpoint)
        return self._socket

    def _reset(self) -> None:
        """Drop a socket whose reply never came, so a late reply cannot be mistaken."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def close(self) -> None:
        with self._lock:
            self._reset()


class EventSender:
    """Ships ``[kind, ts, data]`` events to the ingest socket from a background thread."""

    def __init__(self, context: zmq.Context, endpoint: str, run_id: str, token: bytes) -> None:
        self._context = context
        self._endpoint = endpoint
        self._signer = run_signer(run_id)
        self._token = token
        self._queue: collections.deque[list[Any]] = collections.deque()
        self._wake = threading.Event()
        self._closing = False
        self._close_linger_ms = 0
        self._thread = threading.Thread(target=self._run, name="dte-events", daemon=True)
        self._thread.start()

    def put(self, kind: str, data: dict[str, Any]) -> None:
        """Queue one event; never blocks."""
        self._queue.append([kind, time.time(), data])
        if not self._wake.is_set():
            self._wake.set()

    def close(self, timeout: float) -> None:
        """Hand what is queued to the socket; its linger then bounds delivery at context end."""
        if self._closing:
            return
        self._closing = True
        self._close_linger_ms = int(timeout * 1000)
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        socket = self._context.socket(zmq.PUSH)
        socket.connect(self._endpoint)
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._queue:
                self._send_batch(socket)
            if self._closing and not self._queue:
                break
        # Closing with a linger blocks context termination until the queue is on the wire.
        socket.close(linger=self._close_linger_ms)

    def _send_batch(self, socket: zmq.Socket) -> None:
        queue = self._queue
        self._send(socket, [queue.popleft() for _ in range(min(len(queue), BATCH_LIMIT))])

    def _send(self, socket: zmq.Socket, batch: list[list[Any]]) -> None:
        body = json.dumps(batch, separators=(",", ":"), default=str).encode()
        if len(body) > MAX_BATCH_BYTES and len(batch) > 1:
            half = len(batch) // 2
            self._send(socket, batch[:half])
            self._send(socket, batch[half:])
            return
        if len(body) > MAX_BATCH_BYTES:  # one event the daemon would refuse: keep its head
            kind, ts, data = batch[0]
            cut = {key: cut_field(value) for key, value in data.items()}
            body = json.dumps([[kind, ts, cut]], separators=(",", ":"), default=str).encode()
        socket.send_multipart([PROTOCOL, self._signer, sign(self._token, body), body])
