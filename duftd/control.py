"""The ``control`` ROUTER: authenticate, validate, dispatch, reply. One error path for all.

Every request is checked in this order: frame shape, size, signer, HMAC signature,
body JSON, freshness and replay, operation, arguments; the first failure becomes an
error reply naming what was wrong. A handler's :class:`DuftError` becomes an error reply
with its code; any other exception becomes ``internal`` and is logged. Nothing a
client sends can stop this loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import zmq
import zmq.asyncio
from pydantic import ValidationError

from dte_tools.wire import (
    CLIENT_SIGNER,
    MAX_MESSAGE_BYTES,
    PROTOCOL,
    RUN_SIGNER_PREFIX,
    WORKER_OPS,
    ErrorCode,
    loads_strict,
    sign,
    verify,
)
from duftd.errors import BadRequestError, DuftError, UnauthorizedError
from duftd.protocol import Envelope, Operation
from duftd.runs.run import LiveRun

log = structlog.get_logger("duftd.control")

# A request older or newer than this is refused, and ids are remembered this long.
FRESHNESS_S = 300.0
MAX_REMEMBERED_IDS = 100_000


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a client holding the key, or the worker of ``run``."""

    run: LiveRun | None = None


class ReplayGuard:
    """Refuses stale requests and request ids seen before (as Jupyter does)."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check(self, request_id: str, ts: float) -> None:
        now = time.time()
        if abs(now - ts) > FRESHNESS_S:
            raise UnauthorizedError(
                f"request timestamp is {now - ts:+.0f} s off this machine's clock; "
                f"requests must be within {FRESHNESS_S:.0f} s"
            )
        if request_id in self._seen:
            raise UnauthorizedError(f"request id {request_id} was already used (replay refused)")
        self._seen[request_id] = now
        while self._seen and (
            len(self._seen) > MAX_REMEMBERED_IDS
            or next(iter(self._seen.values())) < now - 2 * FRESHNESS_S
        ):
            self._seen.popitem(last=False)


class ControlServer:
    def __init__(
        self,
        socket: zmq.asyncio.Socket,
        key: bytes,
        operations: dict[str, Operation],
        live_run: Callable[[int], LiveRun | None],
    ) -> None:
        self._socket = socket
        self._key = key
        self._operations = operations
        self._live_run = live_run
        self._replays = ReplayGuard()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        while True:
            frames = await self._socket.recv_multipart()
            task = asyncio.create_task(self._serve(frames))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(0)  # let other loops in between bursts of requests

    async def _serve(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            return  # no routing identity: nobody to answer
        identity, rest = frames[0], frames[1:]
        prefix = [identity]
        if rest[0] == b"":  # a REQ socket's delimiter, echoed back
            prefix.append(b"")
            rest = rest[1:]
        key = b""
        request_id = None
        try:
            key, caller, envelope = self._authenticate(rest)
            request_id = envelope.id
            result = await self._dispatch(caller, envelope)
            reply: dict[str, Any] = {"id": request_id, "ok": True, "result": result}
        except DuftError as error:
            reply = {"id": request_id, "ok": False, "error": error.to_dict()}
        except Exception as error:
            log.exception("control handler failed")
            # Only the type: an exception's text can hold reprs of live objects (run tokens,
            # connection values), which must not travel to a client.
            message = f"duftd internal error ({type(error).__name__}); duftd's log has the details"
            reply = {
                "id": request_id,
                "ok": False,
                "error": {"code": ErrorCode.INTERNAL, "message": message},
            }
        body = json.dumps(reply, separators=(",", ":"), default=str).encode()
        signature = sign(key, body) if key else b""
        await self._socket.send_multipart([*prefix, PROTOCOL, signature, body])

    def _authenticate(self, frames: list[bytes]) -> tuple[bytes, Caller, Envelope]:
        if len(frames) != 4 or frames[0] != PROTOCOL:
            raise BadRequestError(
                "expected a duft/1 request: frames [b'duft/1', signer, signature, body]"
            )
        _, signer, signature, body = frames
        if len(body) > MAX_MESSAGE_BYTES:
            raise BadRequestError(
                f"request body is {len(body)} bytes; the limit is {MAX_MESSAGE_BYTES}"
            )
        key, caller = self._key_for(signer)
        if not verify(key, body, signature):
            raise UnauthorizedError(
                "request signature does not match: sign the body with HMAC-SHA256 of the "
                "key in duftd's connection file (or the worker's run token)"
            )
        try:
            envelope = Envelope.model_validate(loads_strict(body))
        except ValidationError as error:
            raise BadRequestError(f"bad request body: {_summary(error)}") from None
        except (ValueError, RecursionError) as error:  # not strict JSON, or nested too deeply
            detail = str(error) if isinstance(error, ValueError) else "nested too deeply"
            raise BadRequestError(f"bad request body: {detail}") from None
        self._replays.check(envelope.id, float(envelope.ts))
        return key, caller, envelope

    def _key_for(self, signer: bytes) -> tuple[bytes, Caller]:
        if signer == CLIENT_SIGNER:
            return self._key, Caller()
        if signer.startswith(RUN_SIGNER_PREFIX):
            try:
                run = self._live_run(int(signer[len(RUN_SIGNER_PREFIX) :]))
            except ValueError:
                run = None
            if run is not None:
                return run.link.token, Caller(run)
            raise UnauthorizedError("no live run matches this worker's signer")
        raise UnauthorizedError("unknown signer: use b'client' or b'run:<run id>'")

    async def _dispatch(self, caller: Caller, envelope: Envelope) -> dict[str, Any]:
        operation = self._operations.get(envelope.op)
        if operation is None:
            known = ", ".join(sorted(self._operations))
            raise BadRequestError(f"unknown operation {envelope.op!r}; known: {known}")
        if (envelope.op in WORKER_OPS) != (caller.run is not None):
            who = "a worker's run token" if envelope.op in WORKER_OPS else "the client key"
            raise UnauthorizedError(f"operation {envelope.op!r} must be signed with {who}")
        try:
            args = operation.args.model_validate(envelope.args)
        except ValidationError as error:
            raise BadRequestError(f"bad arguments for {envelope.op!r}: {_summary(error)}") from None
        return await operation.handler(caller, args)


def _summary(error: ValidationError) -> str:
    """Pydantic's errors as one line: ``field: message; ...``."""
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(part) for part in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)
