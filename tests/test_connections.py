"""``test_connection`` on the bus and ``duft test-connection``, against real servers.

MariaDB checks passwords, so its failure is a real wrong password. PostgreSQL here
trusts local connections (pg_hba ``trust``) and accepts any password, so its failure is
a role that does not exist, which the driver reports as an authentication failure too.
Every check also looks for the password in everything shown: it must never appear.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clients.bus import DaemonError
from dte_tools.redact import MASK, Redactor
from dte_tools.wire import Op
from duftd import connections
from duftd.config import load_config
from tests.harness import REPO, DaemonProcess
from tests.servers import (
    HOST,
    MARIADB_PORT,
    PG_PORT,
    TEST_PASSWORD,
    TEST_USER,
    ensure_mariadb_user,
    ensure_postgres_user,
)

WRONG_PASSWORD = "Wr0ng-pw-zz"
PARAMS = ("type", "server", "port", "username", "password", "database", "sqlite3file")


def free_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def declare(config_dir: Path, values: dict[str, dict[str, Any]], queries: dict[str, str]) -> None:
    """Declare connections (password-typed ``password``) and store the user's values."""
    path = config_dir / "system" / "data_connections.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    for cid in values:
        params = [{"name": n, "type": "password" if n == "password" else "text"} for n in PARAMS]
        entry = {"id": cid, "name": cid, "params": params}
        if cid in queries:
            entry["testquery"] = queries[cid]
        document["dataConnections"].append(entry)
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    user_path = config_dir / "user" / "config.json"
    user = json.loads(user_path.read_text(encoding="utf-8"))
    user["dataConnectionParameters"].update(values)
    user_path.write_text(json.dumps(user, indent=2), encoding="utf-8")


def server(kind: str, user: str, password: str, database: str) -> dict[str, Any]:
    port = PG_PORT if kind == "postgresql" else MARIADB_PORT
    return {
        "type": kind,
        "server": HOST,
        "port": str(port),
        "username": user,
        "password": password,
        "database": database,
    }


@pytest.fixture
def config_with_connections(config_dir: Path) -> Path:
    """The embedded config plus one good and one failing connection per server type."""
    ensure_mariadb_user()
    ensure_postgres_user()
    values = {
        "MY_OK": server("mariadb", TEST_USER, TEST_PASSWORD, "test"),
        "MY_BAD": server("mysql", TEST_USER, WRONG_PASSWORD, "test"),
        "MY_ECHO": server("mariadb", TEST_USER, TEST_PASSWORD, "test"),
        "PG_OK": server("postgresql", TEST_USER, TEST_PASSWORD, "postgres"),
        "PG_BAD": server("postgresql", "duft_no_such_role", TEST_PASSWORD, "postgres"),
        "MSSQL": {**server("mssql", "sa", TEST_PASSWORD, "master"), "port": str(free_port())},
    }
    # A query whose error text quotes the password back: the driver echoes it, we mask it.
    queries = {"MY_ECHO": f"SELECT * FROM `{TEST_PASSWORD}`", "MY_OK": "SELECT 40 + 2"}
    declare(config_dir, values, queries)
    return config_dir


@pytest.fixture
def daemon_with_connections(
    daemon_factory: Callable[..., DaemonProcess], config_with_connections: Path
) -> DaemonProcess:
    daemon = daemon_factory(config_with_connections)
    daemon.data_dir.mkdir(parents=True, exist_ok=True)
    sqlite3.connect(daemon.data_dir / "analysis.sqlite").close()  # ANA exists, EMR does not
    return daemon


def duft(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "clients.cli.main", *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert TEST_PASSWORD not in text and WRONG_PASSWORD not in text, text


def test_bus_reports_success_with_time_and_failures_with_driver_errors(
    daemon_with_connections: DaemonProcess,
) -> None:
    """Over the bus each type succeeds with its test query's first row and the time taken,
    or fails with the driver's own error; no reply contains a password."""
    daemon = daemon_with_connections

    def test(cid: str, timeout_s: float = 3) -> dict[str, Any]:
        reply = daemon.request(Op.TEST_CONNECTION, id=cid, timeout_s=timeout_s)
        assert_no_secret(json.dumps(reply))
        return reply

    for cid, kind, first in (
        ("MY_OK", "mariadb", "42"),
        ("PG_OK", "postgresql", "1"),
        ("ANA", "sqlite3", "1"),
    ):
        reply = test(cid)
        assert reply["ok"], reply
        assert (reply["type"], reply["result"]) == (kind, first)
        assert 0 < reply["seconds"] < 3 and "ms" in reply["message"]

    bad_password = test("MY_BAD")
    assert (
        not bad_password["ok"] and "Access denied for user 'duft_test'" in bad_password["message"]
    )
    assert bad_password["type"] == "mysql"
    no_role = test("PG_BAD")
    assert not no_role["ok"] and 'role "duft_no_such_role" does not exist' in no_role["message"]
    no_file = test("EMR")
    assert not no_file["ok"] and "demo_emr.sqlite does not exist" in no_file["message"]
    assert not (daemon.data_dir / "demo_emr.sqlite").exists()

    echoed = test("MY_ECHO")
    assert not echoed["ok"] and "doesn't exist" in echoed["message"]
    assert MASK in echoed["message"] and MASK in echoed["query"]

    refused = test("MSSQL", timeout_s=1)  # python-tds retries until its login timeout
    assert not refused["ok"] and refused["type"] == "mssql"
    assert "ConnectionRefusedError" in refused["message"] and refused["seconds"] < 6

    with pytest.raises(DaemonError) as unknown:
        daemon.request(Op.TEST_CONNECTION, id="NOPE")
    assert unknown.value.code == "unknown_connection" and "ANA" in str(unknown.value)


def test_cli_prints_success_and_failure_without_the_password(
    daemon_with_connections: DaemonProcess,
) -> None:
    """``duft test-connection`` through the daemon prints ok with the time, or FAILED with
    the driver's error, exits 0 or 1, and never prints a password (stdout or stderr)."""
    env = daemon_with_connections.env
    for cid, ok in (
        ("MY_OK", True),
        ("MY_BAD", False),
        ("PG_OK", True),
        ("PG_BAD", False),
        ("ANA", True),
        ("EMR", False),
        ("MY_ECHO", False),
    ):
        result = duft(env, "test-connection", cid)
        assert_no_secret(result.stdout, result.stderr)
        assert result.returncode == (0 if ok else 1), (cid, result.stdout, result.stderr)
        assert ("ok, " in result.stdout) is ok and ("FAILED after" in result.stdout) is not ok
        assert "testing directly" not in result.stderr

    as_json = duft(env, "test-connection", "MY_BAD", "--json")
    assert json.loads(as_json.stdout)["ok"] is False
    assert_no_secret(as_json.stdout, as_json.stderr)
    unknown = duft(env, "test-connection", "NOPE")
    assert unknown.returncode == 2 and "unknown_connection" in unknown.stderr


def test_cli_without_a_daemon_tests_directly_and_says_so(
    config_with_connections: Path, tmp_path: Path
) -> None:
    """With no daemon running ``duft test-connection`` tests in-process from the config
    folder (relative SQLite files in its data folder) and says so on stderr."""
    data = tmp_path / "data"
    data.mkdir()
    sqlite3.connect(data / "analysis.sqlite").close()
    env = {
        "PATH": "/usr/bin:/bin",
        "DUFT_STATE_DIR": str(tmp_path / "nothing-here"),
        "DUFT_CONFIG_DIR": str(config_with_connections),
        "DUFT_DATA_DIR": str(data),
    }

    for cid, code in (("ANA", 0), ("MY_OK", 0), ("MY_BAD", 1), ("PG_BAD", 1)):
        result = duft(env, "test-connection", cid)
        assert result.returncode == code, (cid, result.stdout, result.stderr)
        assert "no daemon running: testing directly" in result.stderr
        assert_no_secret(result.stdout, result.stderr)


def test_direct_results_match_the_types_and_mask_every_form_of_a_secret(
    config_with_connections: Path, tmp_path: Path
) -> None:
    """The pure module reports an unsupported or missing type as a failure naming the
    supported ones, and masks a password however a driver might quote it."""
    config = load_config(config_with_connections)
    target = connections.find_target(config, "MY_OK", tmp_path)
    odd = connections.Target("X", target.spec, {**target.values, "type": "oracle"}, tmp_path)
    missing = connections.Target("X", target.spec, {"password": TEST_PASSWORD}, tmp_path)

    for result in (connections.run_test(odd), connections.run_test(missing)):
        assert not result.ok and "postgresql, mysql, mariadb, mssql" in result.message

    secret = 'p@ss "w0rd"/%'
    text = f"raw {secret} json {json.dumps(secret)} repr {secret!r} url p%40ss%20%22w0rd%22%2F%25"
    masked = Redactor([secret]).mask(text)
    assert "w0rd" not in masked and masked.count(MASK) == 4
