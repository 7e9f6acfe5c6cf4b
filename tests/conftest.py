"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import FIXTURES_DIR, DaemonProcess, copy_config

# -- duft-config fixtures (config loading, resolution, `duft validate`) ---------------


@pytest.fixture
def fixtures_dir() -> Path:
    """The public DUFT config exactly as published (read-only: copy it before editing)."""
    return FIXTURES_DIR


# -- a real daemon (tests/harness.py) ------------------------------------------------


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A private copy of the embedded duft-config that a test may change."""
    return copy_config(tmp_path / "duft-config")


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Start real duftd processes (free ports, temporary state); all are stopped at the end."""
    started: list[DaemonProcess] = []

    def start(config: Path, *extra_args: str, state_dir: Path | None = None) -> DaemonProcess:
        daemon = DaemonProcess(
            config,
            state_dir or tmp_path / f"state{len(started)}",
            tmp_path / "data",
            list(extra_args),
        )
        started.append(daemon)
        return daemon.start()

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def daemon(daemon_factory: Callable[..., DaemonProcess], config_dir: Path) -> DaemonProcess:
    """One running daemon on a private copy of the embedded config."""
    return daemon_factory(config_dir)
