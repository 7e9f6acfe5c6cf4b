"""The daemon's side of a Dask cluster: which scheduler addresses it accepts, and how.

Dask's comms carry each run's job (its run credential among it) and the task's folder,
so they must be private whenever they leave the machine: a scheduler that is not on
loopback must be a ``tls://`` address (with :class:`distributed.Security`), unless the
operator says ``--dask-insecure`` (a network already private, e.g. inside one pod).
``distributed`` is imported only here and in the launcher: a daemon with the local
launcher never pays for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from duftd.addresses import is_loopback
from duftd.errors import ConfigError
from duftd.runs.launchers import LAUNCHERS

if TYPE_CHECKING:
    from distributed import Client, Future, Security

SCHEMES = ("tcp", "tls")
# The same choices in ``settings`` of user/config.json (the flags win).
LAUNCHER_SETTING = "launcher"
SCHEDULER_SETTING = "daskScheduler"
INSECURE_SETTING = "daskInsecure"


@dataclass(frozen=True)
class DaskSettings:
    """How to reach the cluster: its scheduler and, for ``tls://``, the client's files.

    Without the three files, TLS settings come from Dask's own configuration
    (``distributed.comm.tls.*``), as for any Dask client."""

    scheduler: str
    insecure: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def uses_tls(self) -> bool:
        return self.scheduler.startswith("tls://")


def dask_settings(
    launcher: str | None, given: DaskSettings | None, settings: dict[str, Any]
) -> DaskSettings | None:
    """The cluster runs go to: from the flags, else from ``settings`` of user/config.json
    (``"launcher": "dask"``, ``"daskScheduler"``, ``"daskInsecure"``); None for local."""
    name = launcher or settings.get(LAUNCHER_SETTING) or "local"
    if name not in LAUNCHERS:
        raise ConfigError(f"launcher {name!r} is unknown: use {' or '.join(LAUNCHERS)}")
    if name == "local":
        return None
    if given is None:
        address = settings.get(SCHEDULER_SETTING)
        if not isinstance(address, str) or not address:
            raise ConfigError(
                f"--launcher dask needs --dask-scheduler ADDRESS (or {SCHEDULER_SETTING!r} in "
                "settings of user/config.json)"
            )
        given = DaskSettings(address, insecure=settings.get(INSECURE_SETTING) is True)
    check_scheduler(given)
    return given


def check_scheduler(settings: DaskSettings) -> None:
    """Refuse an address Dask cannot use, or one that would carry jobs in the clear."""
    address = settings.scheduler
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise ConfigError(
            f"--dask-scheduler {address!r} is no scheduler address: write tls://HOST:PORT "
            "(or tcp://127.0.0.1:PORT for a cluster on this machine)"
        )
    try:
        parts.port  # noqa: B018 - raises on a port that is no number
    except ValueError:
        raise ConfigError(f"--dask-scheduler {address!r} has a bad port") from None
    if parts.scheme == "tcp" and not is_loopback(parts.hostname) and not settings.insecure:
        raise ConfigError(
            f"refusing the Dask scheduler {address}: it is not on this machine and not tls://, "
            "so run jobs (each with its run credential) would cross the network in the clear; "
            "use a tls:// address (see README, Running on a cluster), or --dask-insecure on a "
            "network that is private already"
        )
    files = (settings.tls_ca, settings.tls_cert, settings.tls_key)
    if any(files) and not all(files):
        raise ConfigError("--dask-tls-ca, --dask-tls-cert and --dask-tls-key go together")
    for path in filter(None, files):
        if not path.is_file():
            raise ConfigError(f"Dask TLS file {path} not found")


def security(settings: DaskSettings) -> Security | None:
    """The client's TLS settings (None for a plain tcp scheduler)."""
    if not settings.uses_tls:
        return None
    from distributed import Security

    if settings.tls_ca is None:
        return Security(require_encryption=True)  # from Dask's own configuration
    return Security(
        tls_ca_file=str(settings.tls_ca),
        tls_client_cert=str(settings.tls_cert),
        tls_client_key=str(settings.tls_key),
        require_encryption=True,
    )


def submit_job(
    client: Client, spec: dict[str, Any], resources: dict[str, float], key: str
) -> Future:
    """Submit one run's job, its code sent along by value (see :func:`_ship_by_value`)."""
    from duftd.cluster.remote import run_job

    _ship_by_value()
    # A lambda cannot be pickled by reference, so Dask pickles the task with cloudpickle,
    # which honours the modules registered below.
    return client.submit(
        lambda spec: run_job(spec), spec, key=key, resources=resources or None, pure=False
    )


def _ship_by_value() -> None:
    """Send the job's module with each job, so a worker lacking this package runs it and
    says so (instead of failing to unpickle a reference to ``duftd``)."""
    import cloudpickle

    from duftd.cluster import remote

    if remote.__name__ not in cloudpickle.list_registry_pickle_by_value():
        cloudpickle.register_pickle_by_value(remote)
