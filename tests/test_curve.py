"""CURVE against a real daemon: allowed client keys get in, others get nothing, and workers
(which never hold keys) still reach the daemon over its ipc endpoints."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
import zmq.auth

from clients.bus import BusClient, ConnectionInfo, CurveKeyMissing
from dte_tools.wire import CLIENT_SIGNER, Op, encode_request
from tests.harness import DaemonProcess, RawSocket, wait_for

NO_ANSWER_WAIT_S = 1.0


@dataclass
class Keys:
    curve_dir: Path
    allowed: Path  # a client .key_secret whose public half is in clients/
    unknown: Path  # a client .key_secret the daemon has never seen


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    """A --curve-dir with a server certificate and one allowed client, plus an unknown client."""
    curve_dir = tmp_path / "curve"
    (curve_dir / "clients").mkdir(parents=True)
    zmq.auth.create_certificates(curve_dir, "server")
    wallet = tmp_path / "wallet"
    wallet.mkdir()
    allowed_public, allowed_secret = zmq.auth.create_certificates(wallet, "alice")
    Path(allowed_public).rename(curve_dir / "clients" / "alice.key")
    _, unknown_secret = zmq.auth.create_certificates(wallet, "mallory")
    return Keys(curve_dir, Path(allowed_secret), Path(unknown_secret))


@pytest.fixture
def curve_daemon(
    keys: Keys,
    config_dir: Path,
    daemon_factory: Callable[..., DaemonProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> DaemonProcess:
    """A daemon requiring CURVE on loopback; this test process holds the allowed client key."""
    monkeypatch.setenv("DUFT_CURVE_CLIENT_KEY", str(keys.allowed))
    return daemon_factory(config_dir, "--curve-dir", str(keys.curve_dir), "--port", "0")


class CurveSocket(RawSocket):
    """A raw socket that is a CURVE client with the keypair in ``cert``."""

    def __init__(self, kind: int, endpoint: str, cert: Path, server_key: str) -> None:
        public, secret = zmq.auth.load_certificate(cert)
        self.context = zmq.Context()
        self.socket = self.context.socket(kind)
        self.socket.linger = 0
        self.socket.curve_publickey = public
        self.socket.curve_secretkey = secret
        self.socket.curve_serverkey = server_key.encode()
        self.socket.connect(endpoint)


def run_duftd(config_dir: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """duftd run to its exit (these tests expect it to refuse to start)."""
    command = [sys.executable, "-m", "duftd", "--config", str(config_dir), "--port", "0"]
    state = ["--state-dir", str(tmp_path / "state")]
    return subprocess.run(
        [*command, *state, *args], capture_output=True, text=True, timeout=30, check=False
    )


def health_frames(info: ConnectionInfo) -> list[bytes]:
    return encode_request(Op.HEALTH, {}, info.key, CLIENT_SIGNER)


def test_allowed_client_runs_sample(curve_daemon: DaemonProcess) -> None:
    """An allowed client gets health and a SAMPLE run succeeds (its worker used ipc endpoints)."""
    info = curve_daemon.client.info
    assert info.curve_server_key
    assert info.control.startswith("tcp://")
    assert (curve_daemon.state_dir / "control.ipc").exists()
    assert "runs" in curve_daemon.request(Op.HEALTH)
    run_id = curve_daemon.submit("SAMPLE", name="Arya", sleep_time=0, steps=3)["run"]["id"]
    assert curve_daemon.wait_final(run_id)["state"] == "succeeded"
    events = curve_daemon.events(run_id)
    assert any("Arya" in e["data"].get("message", "") for e in events)  # came through ingest


def test_unknown_key_gets_no_answer(curve_daemon: DaemonProcess, keys: Keys) -> None:
    """A CURVE client whose key is not in clients/ is refused and gets no answer."""
    info = curve_daemon.client.info
    with CurveSocket(zmq.DEALER, info.control, keys.unknown, info.curve_server_key) as raw:
        raw.offer(health_frames(info))
        assert raw.recv(NO_ANSWER_WAIT_S) is None


def test_plain_client_gets_no_answer(curve_daemon: DaemonProcess) -> None:
    """A client without CURVE gets no answer on the public control endpoint."""
    info = curve_daemon.client.info
    with RawSocket(zmq.DEALER, info.control) as raw:
        raw.offer(health_frames(info))
        assert raw.recv(NO_ANSWER_WAIT_S) is None


def test_bus_client_without_key_fails_clearly(
    curve_daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BusClient names $DUFT_CURVE_CLIENT_KEY when the daemon requires CURVE and it is unset."""
    monkeypatch.delenv("DUFT_CURVE_CLIENT_KEY")
    with pytest.raises(CurveKeyMissing, match="DUFT_CURVE_CLIENT_KEY"):
        BusClient(ConnectionInfo.load(curve_daemon.state_dir))


def test_events_reach_only_curve_subscribers(curve_daemon: DaemonProcess, keys: Keys) -> None:
    """An allowed SUB receives a run's events while a SUB without CURVE receives nothing."""
    info = curve_daemon.client.info
    with (
        CurveSocket(zmq.SUB, info.events, keys.allowed, info.curve_server_key) as allowed,
        RawSocket(zmq.SUB, info.events) as plain,
    ):
        allowed.socket.subscribe(b"")
        plain.socket.subscribe(b"")
        runs: list[int] = []

        def run_and_listen() -> list[list[bytes]]:
            # A subscription takes effect a moment after the handshake: run until one is seen.
            runs.append(
                curve_daemon.submit("SAMPLE", name="Arya", sleep_time=0, steps=1)["run"]["id"]
            )
            curve_daemon.wait_final(runs[-1])
            return allowed.drain()

        received = wait_for(run_and_listen, 20.0, "events on the allowed SUB", interval=0.05)
        assert any(frames[0].endswith(f"/{runs[-1]}/".encode()) for frames in received), received
        assert plain.drain() == []


def test_non_loopback_without_keys_is_refused(config_dir: Path, tmp_path: Path) -> None:
    """A non-loopback --host without --curve-dir stops at start-up, before binding anything."""
    result = run_duftd(config_dir, tmp_path, "--host", "10.255.255.1")
    assert result.returncode == 2
    assert "refusing to listen on 10.255.255.1" in result.stderr


def test_missing_server_certificate_is_explained(config_dir: Path, tmp_path: Path) -> None:
    """A --curve-dir without server.key_secret names the file and how to create it."""
    (tmp_path / "empty").mkdir()
    result = run_duftd(config_dir, tmp_path, "--curve-dir", str(tmp_path / "empty"))
    assert result.returncode == 2
    assert "server.key_secret" in result.stderr
    assert "zmq.auth.create_certificates" in result.stderr


def test_tcp_without_curve_dir_uses_keys_made_at_start(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """Asked for tcp without --curve-dir, the daemon requires CURVE with keys it made: the
    owner's clients (reading the connection file) run a task; a plain client, and a CURVE
    client with another keypair, get no answer and no event."""
    daemon = daemon_factory(config_dir, "--port", "0")
    info = daemon.client.info
    assert info.control.startswith("tcp://") and info.curve_server_key and info.curve_client
    wallet = daemon.state_dir.parent / "wallet"
    wallet.mkdir()
    _, stranger = zmq.auth.create_certificates(wallet, "stranger")
    with (
        RawSocket(zmq.DEALER, info.control) as plain,
        CurveSocket(zmq.DEALER, info.control, Path(stranger), info.curve_server_key) as other,
        RawSocket(zmq.SUB, info.events) as plain_sub,
        CurveSocket(zmq.SUB, info.events, Path(stranger), info.curve_server_key) as other_sub,
    ):
        plain_sub.socket.subscribe(b"")
        other_sub.socket.subscribe(b"")
        # Either refused at once (no peer to send to) or sent and never answered.
        plain.offer(health_frames(info))
        other.offer(health_frames(info))
        run_id = daemon.submit("SAMPLE", name="Arya", sleep_time=0, steps=2)["run"]["id"]
        assert daemon.wait_final(run_id)["state"] == "succeeded"
        with BusClient(info) as client:  # follows the run's events over CURVE
            events = list(client.follow(run_id))
        assert any("Arya" in e["data"].get("message", "") for e in events)
        assert plain.recv(NO_ANSWER_WAIT_S) is None
        assert other.recv(NO_ANSWER_WAIT_S) is None
        assert plain_sub.drain() == [] and other_sub.drain() == []
