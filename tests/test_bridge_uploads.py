"""Files sent with `post_file_to_duft_server` to a real duft-bridge: stored under the data
folder by kind, never overwritten, refused without the right credentials or past the limit."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from clients.bridge import accounts, uploads
from clients.bridge.app import create_app
from dte_tools import post_file_to_duft_server
from dte_tools.upload import UploadError
from tests import test_bridge_api
from tests.harness import DaemonProcess

PASSWORD = "correct horse battery"


def add_uploader(state_dir: Path) -> None:
    """One account of the bridge (as `duft users add` makes it), with no permissions."""
    accounts.add_account(state_dir, "facility-7", PASSWORD, set())


@pytest.fixture
def bridge_url(
    tmp_path: Path, config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> Iterator[str]:
    """A duftd whose data folder is ``tmp_path/data`` and a duft-bridge process (whose own
    environment names no data folder) with one uploader account."""
    daemon = daemon_factory(config_dir)
    assert daemon.data_dir == tmp_path / "data"
    add_uploader(daemon.state_dir)
    bridge = test_bridge_api.BridgeProcess(daemon.state_dir, tmp_path / "bridge.log", []).start()
    yield bridge.url
    assert bridge.stop() == 0, bridge.log_text()


def test_posted_files_land_in_the_data_folder_and_are_never_overwritten(
    bridge_url: str, tmp_path: Path
) -> None:
    """Two posts of one file name are both kept, under the daemon's data/uploads/<kind>/,
    owner-only (files 0600 in 0700 folders)."""
    report = tmp_path / "monthly.csv"
    report.write_text("facility,visits\nnorth,3\n")
    first = post_file_to_duft_server(bridge_url, "facility-7", PASSWORD, report, "reports")
    report.write_text("facility,visits\nnorth,4\n")
    second = post_file_to_duft_server(bridge_url, "facility-7", PASSWORD, report, "reports")
    assert (first["path"], second["path"]) == (
        "uploads/reports/monthly.csv",
        "uploads/reports/monthly-2.csv",
    )
    data = tmp_path / "data"
    assert (data / first["path"]).read_text() == "facility,visits\nnorth,3\n"
    assert (data / second["path"]).read_text() == "facility,visits\nnorth,4\n"
    assert second["bytes"] == report.stat().st_size and second["user"] == "facility-7"
    for folder in (data / "uploads", data / "uploads" / "reports"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for path in (first["path"], second["path"]):
        assert stat.S_IMODE((data / path).stat().st_mode) == 0o600, path


def test_a_wrong_password_gets_a_clear_error(bridge_url: str, tmp_path: Path) -> None:
    """A wrong password (or an unknown user) is refused with 401, named as a credentials
    problem without the password; nothing is stored."""
    report = tmp_path / "monthly.csv"
    report.write_text("x\n")
    with pytest.raises(UploadError) as refused:
        post_file_to_duft_server(bridge_url, "facility-7", "not it", report, "reports")
    message = str(refused.value)
    assert "refused the credentials of user 'facility-7' (HTTP 401" in message
    assert "not it" not in message
    with pytest.raises(UploadError, match="refused the credentials of user 'nobody'"):
        post_file_to_duft_server(bridge_url, "nobody", PASSWORD, report, "reports")
    assert not (tmp_path / "data" / "uploads").exists()


def test_an_unreachable_server_is_a_clear_error_within_the_timeout(tmp_path: Path) -> None:
    """No server at the address: an UploadError naming the URL, not a hang."""
    report = tmp_path / "r.csv"
    report.write_text("x\n")
    with pytest.raises(UploadError, match=r"cannot upload r\.csv to http://127\.0\.0\.1:9/"):
        post_file_to_duft_server("http://127.0.0.1:9", "u", "p", report, "reports", timeout=5)


async def test_an_upload_past_the_limit_is_refused_and_not_kept(tmp_path: Path) -> None:
    """Over the size limit: 413 and no partial file (the bridge app on a real socket)."""
    state_dir = tmp_path / "state"
    add_uploader(state_dir)
    app = create_app(state_dir)
    app[uploads.SETTINGS] = replace(
        app[uploads.SETTINGS], data_dir=tmp_path / "data", max_bytes=1000
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    big = tmp_path / "big.csv"
    big.write_bytes(b"x" * 5000)
    try:
        with pytest.raises(UploadError, match=r"HTTP 413.*limited to 1000 bytes"):
            await asyncio.to_thread(
                post_file_to_duft_server,
                f"http://127.0.0.1:{port}",
                "facility-7",
                PASSWORD,
                big,
                "reports",
            )
    finally:
        await runner.cleanup()
    assert list((tmp_path / "data" / "uploads" / "reports").iterdir()) == []
