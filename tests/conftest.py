"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# -- duft-config fixtures (config loading, resolution, `duft validate`) ---------------

FIXTURES_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "duft-config-public"


@pytest.fixture
def fixtures_dir() -> Path:
    """The public DUFT config exactly as published (read-only: copy it before editing)."""
    return FIXTURES_DIR
