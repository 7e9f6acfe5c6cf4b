"""A client of the bus: find the daemon, make signed requests, follow a run's events.

Used by the ``duft`` CLI; depends only on pyzmq and the wire module, like the worker side.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from clients.follow import RunFollower
from dte_tools import locate
from dte_tools.daemon_link import ControlClient, DaemonError
from dte_tools.wire import CLIENT_SIGNER, ErrorCode, Op, decode_events, topic

__all__ = [
    "BusClient",
    "ConnectionInfo",
    "CurveKeyMissing",
    "DaemonError",
    "DaemonNotRunning",
    "curve_setup",
]

START_HINT = "start it with `make run` (or `duftd`)"
CURVE_KEY_ENV = "DUFT_CURVE_CLIENT_KEY"


class DaemonNotRunning(RuntimeError):
    """No daemon answers for this state folder; the message says how to start one."""


class CurveKeyMissing(DaemonNotRunning):
    """The daemon requires CURVE and this client has no usable key (a one-line message)."""


@dataclass(frozen=True)
class ConnectionInfo:
    control: str
    ingest: str
    events: str
    key: bytes
    pid: int
    path: Path
    curve_server_key: str | None = None  # z85; present when the daemon listens on tcp
    # z85 (public, secret): the client keypair the daemon made for its owner, when it made one
    curve_client: tuple[str, str] | None = None

    @classmethod
    def load(cls, state_dir: Path | None = None) -> ConnectionInfo:
        """Read the connection file of the daemon using ``state_dir`` (or the default)."""
        folder = state_dir or locate.default_state_dir()
        path = folder / locate.CONNECTION_FILE_NAME
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DaemonNotRunning(
                f"duftd is not running (no connection file at {path}); {START_HINT}"
            ) from None
        except (OSError, ValueError) as error:
            raise DaemonNotRunning(f"cannot read duftd's connection file {path}: {error}") from None
        if not _pid_alive(int(info.get("pid", 0))):
            raise DaemonNotRunning(
                f"duftd is not running (its connection file {path} is stale); {START_HINT}"
            )
        return cls(
            info["control"],
            info["ingest"],
            info["events"],
            info["key"].encode(),
            info["pid"],
            path,
            info.get("curve_server_key"),
            (info["curve_client_public"], info["curve_client_secret"])
            if "curve_client_secret" in info
            else None,
        )


def curve_setup(info: ConnectionInfo) -> Callable[[zmq.Socket], None] | None:
    """What makes a socket a CURVE client of this daemon (None if it does not use CURVE).

    The client keypair is the one in the connection file when the daemon made it, else the
    zmq.auth certificate named by ``$DUFT_CURVE_CLIENT_KEY`` (a ``--curve-dir`` daemon)."""
    if not info.curve_server_key:
        return None
    if info.curve_client is not None:
        public, secret = (half.encode() for half in info.curve_client)
    else:
        public, secret = _certificate_from_environment()
    server = info.curve_server_key.encode()

    def setup(socket: zmq.Socket) -> None:
        socket.curve_publickey = public
        socket.curve_secretkey = secret
        socket.curve_serverkey = server

    return setup


def _certificate_from_environment() -> tuple[bytes, bytes]:
    cert = os.environ.get(CURVE_KEY_ENV)
    if not cert:
        raise CurveKeyMissing(
            f"duftd requires CURVE: set ${CURVE_KEY_ENV} to your client .key_secret certificate"
        )
    try:
        public, secret = zmq.auth.load_certificate(cert)
    except (OSError, ValueError) as error:
        raise CurveKeyMissing(f"cannot read ${CURVE_KEY_ENV} ({cert}): {error}") from None
    if not secret:
        raise CurveKeyMissing(
            f"${CURVE_KEY_ENV} ({cert}) has no secret key: use the .key_secret file"
        )
    return public, secret


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BusClient:
    """Synchronous requests and event following; close it (or use ``with``) when done."""

    def __init__(self, info: ConnectionInfo, timeout_s: float = 10.0) -> None:
        self.info = info
        self._setup = curve_setup(info)
        self._context = zmq.Context()
        self._control = ControlClient(
            self._context, info.control, info.key, CLIENT_SIGNER, self._setup
        )
        self._control_timeout = timeout_s

    def __enter__(self) -> BusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._control.close()
        self._context.destroy(linger=0)

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """One signed request; raises :class:`DaemonError` with the daemon's code and message."""
        try:
            return self._control.request(op, args)
        except DaemonError as error:
            if error.code == ErrorCode.TIMEOUT:
                raise DaemonNotRunning(
                    f"duftd does not answer at {self.info.control}; {START_HINT}"
                ) from None
            raise

    def follow(self, run_id: int, after: int = 0) -> Iterator[dict[str, Any]]:
        """Every event of a run after ``after``, history first then live, ending at its final
        state: no gap (a missed number is fetched from the store) and no duplicate.

        Each event has the published shape (:func:`dte_tools.wire.envelope`) whether it
        came from the store or live. The algorithm is :class:`clients.follow.RunFollower`;
        this only does its I/O."""
        run = self.request(Op.RUN, run=run_id)["run"]
        follower = RunFollower(run_id, run["task_id"], after)
        subscriber = self._context.socket(zmq.SUB)
        subscriber.linger = 0
        if self._setup is not None:
            self._setup(subscriber)
        subscriber.connect(self.info.events)
        subscriber.subscribe(topic(run["task_id"], run_id))
        try:
            step = follower.start()
            while True:
                yield from step.emit
                if step.done:
                    return
                if step.fetch:
                    page = self.request(Op.EVENTS, run=run_id, after=follower.last)
                    step = follower.page(page)
                elif subscriber.poll(follower.wait_s * 1000):
                    step = follower.live(decode_events(subscriber.recv_multipart()[-1]))
                else:
                    step = follower.quiet()
        finally:
            subscriber.close()
