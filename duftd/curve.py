"""CURVE keys for a daemon that listens beyond loopback (``--curve-dir``).

The folder holds ``server.key_secret`` (the daemon's keypair) and ``clients/*.key`` (the
public certificates of the clients allowed in). All are zmq.auth certificates; the
commands in :data:`HOW_TO_CREATE` make them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import zmq.auth

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
    clients_dir: Path


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
    return CurveKeys(public, secret, clients)
