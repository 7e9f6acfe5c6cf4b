"""CURVE keys for the daemon's tcp sockets: from ``--curve-dir``, or made at start.

``--curve-dir`` holds ``server.key_secret`` (the daemon's keypair) and ``clients/*.key``
(the public certificates of the clients allowed in), all zmq.auth certificates; the
commands in :func:`how_to_create` make them. Without it, a daemon asked for tcp makes a
server keypair and one client keypair at start, lets in only that client, and puts the
client's secret half in the owner-only connection file (as recent jupyter_client does):
whoever can read that file can connect, nobody else can.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.base import Authenticator

from duftd.errors import StartupError

SERVER_CERT = "server.key_secret"
CLIENTS_DIR = "clients"


def how_to_create(folder: Path) -> str:
    return (
        f'create them with `python -c "import zmq.auth; '
        f"zmq.auth.create_certificates('{folder}', 'server')\"` and, per client, "
        f"`python -c \"import zmq.auth; zmq.auth.create_certificates('.', 'NAME')\"` "
        f"then copy NAME.key (never NAME.key_secret) into {folder / CLIENTS_DIR}/"
    )


@dataclass(frozen=True)
class CurveKeys:
    public: bytes  # z85
    secret: bytes  # z85
    clients_dir: Path | None = None  # the allowed clients' certificates (``--curve-dir``)
    client: tuple[bytes, bytes] | None = None  # the one allowed client's (public, secret)

    def allow_clients(self, authenticator: Authenticator) -> None:
        """Let in only the allowed clients (checked by the authenticator at each handshake)."""
        if self.clients_dir is not None:
            authenticator.configure_curve(domain="*", location=str(self.clients_dir))
        else:
            assert self.client is not None
            authenticator.configure_curve_callback("*", _OneClient(self.client[0]))

    def allowed_keys(self) -> set[bytes]:
        """The allowed clients' public keys (z85), for a callback that also knows others."""
        if self.clients_dir is not None:
            return set(zmq.auth.load_certificates(str(self.clients_dir)))
        assert self.client is not None
        return {self.client[0]}

    def connection_info(self) -> dict[str, str]:
        """What the connection file carries: the server's public key, and the generated
        client keypair (a ``--curve-dir`` client brings its own)."""
        info = {"curve_server_key": self.public.decode()}
        if self.client is not None:
            info["curve_client_public"] = self.client[0].decode()
            info["curve_client_secret"] = self.client[1].decode()
        return info


@dataclass(frozen=True)
class _OneClient:
    """A credentials provider for pyzmq's authenticator that knows one client key."""

    public: bytes  # z85

    def callback(self, domain: str, key: bytes) -> bool:
        return hmac.compare_digest(key, self.public)


def generate() -> CurveKeys:
    """A fresh server keypair and the keypair of the one client allowed in."""
    public, secret = zmq.curve_keypair()
    return CurveKeys(public, secret, client=zmq.curve_keypair())


def load(folder: Path) -> CurveKeys:
    """The server keypair and the allowed clients' folder; :class:`StartupError` if unusable."""
    folder = folder.resolve()
    server = folder / SERVER_CERT
    try:
        public, secret = zmq.auth.load_certificate(server)
    except (OSError, ValueError) as error:
        raise StartupError(
            f"cannot read the CURVE server certificate {server}: {error}; {how_to_create(folder)}"
        ) from None
    if not public or not secret:
        raise StartupError(
            f"{server} has no secret key (is it a .key copy?); {how_to_create(folder)}"
        )
    clients = folder / CLIENTS_DIR
    try:
        allowed = sorted(clients.glob("*.key"))
        for cert in allowed:
            zmq.auth.load_certificate(cert)
    except (OSError, ValueError) as error:
        raise StartupError(
            f"cannot read the allowed CURVE clients in {clients}: {error}; {how_to_create(folder)}"
        ) from None
    if not allowed:
        raise StartupError(
            f"no allowed CURVE clients: {clients} has no *.key certificate; {how_to_create(folder)}"
        )
    return CurveKeys(public, secret, clients_dir=clients)
