"""A real Dask cluster on this machine for tests: a TLS scheduler and workers, each a
``dask`` process of this venv with one thread and a working folder of its own.

The TLS certificates (a CA and one certificate for 127.0.0.1/localhost, as Dask's own
``Security.temporary`` makes) are made at start with ``cryptography``.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.harness import environment_without_duft, wait_for

DASK = str(Path(sys.executable).with_name("dask"))
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    def cli_args(self) -> list[str]:
        return ["--tls-ca-file", str(self.ca), "--tls-cert", str(self.cert),
                "--tls-key", str(self.key)]  # fmt: skip


def make_tls(folder: Path) -> TlsFiles:
    """A self-signed CA and a certificate it signed for this machine's loopback."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "duftd test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files


@dataclass
class DaskCluster:
    """The scheduler's address, the TLS files, and the ``dask`` processes started."""

    folder: Path
    tls: TlsFiles
    address: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_process(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start a ``dask`` command (or another Python program) named ``name``, its output
        in ``<name>.log``."""
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 - the process keeps it
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=environment_without_duft(),
            cwd=self.folder, start_new_session=True,
        )  # fmt: skip
        log.close()
        self.processes[name] = process
        return process

    def start_scheduler(self) -> None:
        scheduler_file = self.folder / "scheduler.json"
        self.start_process(
            "scheduler",
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--protocol", "tls",
             "--no-dashboard", "--scheduler-file", str(scheduler_file), *self.tls.cli_args()],
        )  # fmt: skip
        wait_for(scheduler_file.exists, START_TIMEOUT_S, "the Dask scheduler's file")
        self.address = json.loads(scheduler_file.read_text())["address"]

    def start_worker(self, name: str, resources: str | None = None) -> Path:
        """A worker named ``name`` with one thread; returns its working folder."""
        local = self.folder / name
        local.mkdir()
        extra = ["--resources", resources] if resources else []
        self.start_process(
            name,
            [DASK, "worker", self.address, "--name", name, "--nthreads", "1", "--no-nanny",
             "--no-dashboard", "--local-directory", str(local), *extra, *self.tls.cli_args()],
        )  # fmt: skip
        return local

    def worker_dir(self, name: str) -> Path:
        return self.folder / name

    def kill(self, name: str) -> None:
        """SIGKILL a worker (as a machine dying would end it)."""
        process = self.processes.pop(name)
        process.kill()
        process.wait()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def dask_cluster(folder: Path, workers: tuple[str, ...] = ("w1", "w2")) -> Iterator[DaskCluster]:
    """A TLS scheduler and ``workers`` (each one thread), stopped afterwards."""
    cluster = DaskCluster(folder, make_tls(folder / "tls"))
    try:
        cluster.start_scheduler()
        for name in workers:
            cluster.start_worker(name)
        yield cluster
    finally:
        cluster.stop()
