"""``duft config set-connection``: safe writes into user/config.json, no daemon needed.

Runs the real command line on a copy of the public DUFT config (written by DUFT itself,
other programs' settings included), with no terminal, or with a real pseudo-terminal to
check the password prompt does not echo.
"""

from __future__ import annotations

import difflib
import json
import os
import pty
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dte_tools.wire import Op
from tests.harness import FIXTURES_DIR, REPO, DaemonProcess, environment_without_duft

FIXTURE = FIXTURES_DIR
OLD_PASSWORD = "mysecretword"  # ANA's password in the fixture


@pytest.fixture
def public_config(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "duft-config"))


def user_file(config: Path) -> Path:
    return config / "user" / "config.json"


def cli_env(tmp_path: Path) -> dict[str, str]:
    return environment_without_duft(DUFT_STATE_DIR=str(tmp_path / "no-daemon"))


def set_connection(
    config: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """``duft config set-connection`` with no terminal (stdin is /dev/null)."""
    command = [
        sys.executable,
        "-m",
        "clients.cli.main",
        "config",
        "set-connection",
        *args,
        "--config",
        str(config),
    ]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def in_terminal(args: list[str], env: dict[str, str], answer: str) -> tuple[int, str]:
    """Run the CLI on a real pseudo-terminal, type ``answer`` at the password prompt, and
    return its exit code and everything the terminal showed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal, so getpass uses it
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "clients.cli.main", *args], env)
    shown, answered = b"", False
    deadline = time.monotonic() + 30
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"the CLI stopped answering; it showed {shown!r}")
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            if not answered and b"empty keeps the current one" in shown:
                os.write(fd, answer.encode() + b"\n")
                answered = True
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        _, status = os.waitpid(pid, 0)  # the terminal closed: the child is exiting
        os.close(fd)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_set_connection_rewrites_the_file_atomically_and_keeps_everything_else(
    public_config: Path, tmp_path: Path
) -> None:
    """Changing two values replaces user/config.json through a new file (new inode, same
    permissions, no temporary file left), changes exactly those two lines and keeps the
    password when there is no terminal to ask on."""
    path = user_file(public_config)
    path.chmod(0o640)
    before, inode = path.read_text(encoding="utf-8"), path.stat().st_ino
    files_before = sorted(p.name for p in path.parent.iterdir())

    result = set_connection(
        public_config, cli_env(tmp_path), "ANA", "server=db.example", "database=analytics"
    )

    assert result.returncode == 0, result.stderr
    after = path.read_text(encoding="utf-8")
    changed = [
        line
        for line in difflib.ndiff(before.splitlines(), after.splitlines())
        if line[:2] in ("- ", "+ ")
    ]
    assert changed == [
        '-       "server": "127.0.0.1",',
        '+       "server": "db.example",',
        '-       "database": "analysis",',
        '+       "database": "analytics",',
    ]
    assert path.stat().st_ino != inode and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in path.parent.iterdir()) == files_before  # no temporary left
    assert "password unchanged (no terminal" in result.stdout
    assert "server=db.example" in result.stdout and "no duftd running" in result.stdout
    assert OLD_PASSWORD not in result.stdout + result.stderr


def test_unknown_connection_ids_are_refused_naming_the_declared_ones(
    public_config: Path, tmp_path: Path
) -> None:
    """An id no data_connections.json declares (even one with stored values, like
    MYSQL_TEST) is refused with the declared ids and a likely match; nothing is written."""
    path = user_file(public_config)
    before = path.read_bytes()

    undeclared = set_connection(public_config, cli_env(tmp_path), "MYSQL_TEST", "server=x")
    typo = set_connection(public_config, cli_env(tmp_path), "ANAA", "server=x")

    assert undeclared.returncode == typo.returncode == 2
    assert "declared connections are ANA, DHIS2, DUFT-SERVER-API, EPMS" in undeclared.stderr
    assert "did you mean ANA?" in typo.stderr and "nothing was written" in typo.stderr
    assert path.read_bytes() == before
    assert "Namibia23" not in undeclared.stdout + undeclared.stderr  # MYSQL_TEST's password


def test_a_given_password_is_stored_but_never_printed(public_config: Path, tmp_path: Path) -> None:
    """``password=...`` on the command line is stored as text, shown only as ********; a new
    key is appended after the existing ones."""
    result = set_connection(
        public_config, cli_env(tmp_path), "ANA", "password=N3w-secret-pw", "port=6543"
    )

    assert result.returncode == 0, result.stderr
    values = json.loads(user_file(public_config).read_text())["dataConnectionParameters"]["ANA"]
    assert values["password"] == "N3w-secret-pw" and values["port"] == "6543"
    assert list(values) == [
        "server",
        "username",
        "password",
        "port",
        "database",
        "sqlite3file",
        "type",
    ]
    assert "password=********" in result.stdout
    assert "N3w-secret-pw" not in result.stdout + result.stderr


def test_the_password_is_asked_for_on_a_terminal_without_echo(
    public_config: Path, tmp_path: Path
) -> None:
    """On a terminal, with no password given, the CLI asks for it without echoing what is
    typed, stores it, and prints no trace of it."""
    args = ["config", "set-connection", "ANA", "username=analyst", "--config", str(public_config)]

    code, shown = in_terminal(args, cli_env(tmp_path), "Typed-pw-42")

    assert code == 0, shown
    assert "password for ANA (empty keeps the current one)" in shown
    assert "Typed-pw-42" not in shown and "password=********" in shown
    values = json.loads(user_file(public_config).read_text())["dataConnectionParameters"]["ANA"]
    assert (values["username"], values["password"]) == ("analyst", "Typed-pw-42")


def test_a_running_daemon_serving_the_folder_reloads_the_new_values(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """When duftd serves the folder, set-connection asks it to reload, so its next
    connection test already uses the new values."""
    daemon = daemon_factory(config_dir)
    assert (
        "db.example"
        not in daemon.request(Op.TEST_CONNECTION, id="EMR_SERVER", timeout_s=1)["target"]
    )

    result = set_connection(config_dir, daemon.env, "EMR_SERVER", "server=127.0.0.1", "port=1")

    assert result.returncode == 0, result.stderr
    assert "duftd reloaded its config" in result.stdout
    reply = daemon.request(Op.TEST_CONNECTION, id="EMR_SERVER", timeout_s=1)
    assert reply["target"].endswith("on 127.0.0.1:1") and not reply["ok"]
