"""Who may use the bridge: its start-up token, DUFT's user logins, --no-auth (issues 12 and 14)."""

from __future__ import annotations

import json
import pwd
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from clients.bridge import accounts
from clients.bridge.auth import MAX_FAILURES
from dte_tools.wire import Op
from tests import test_bridge_api as shared
from tests.harness import DaemonProcess, environment_without_duft, second_user
from tests.test_bridge_api import BridgeProcess

bridge_factory = shared.bridge_factory
bridge = shared.bridge

PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-22"}

# Every route that reads runs or starts, cancels or changes anything.
PROTECTED = [
    ("GET", "/api/health"),
    ("GET", "/api/tasks"),
    ("GET", "/api/tasks/SAMPLE"),
    ("POST", "/api/tasks/SAMPLE/runs"),
    ("GET", "/api/runs"),
    ("GET", "/api/runs/1"),
    ("POST", "/api/runs/1/cancel"),
    ("GET", "/api/runs/1/events"),
    ("GET", "/api/events"),
    ("POST", "/run-data-task"),
    ("POST", "/api/v2/run-data-task"),
    ("GET", "/api/v2/dte-status"),
    ("GET", "/sse/dte/"),
    ("GET", "/api/v2/settings"),
    ("GET", "/api/v2/navigation"),
    ("GET", "/api/v2/theme"),
    ("GET", "/api/v2/3dldashboard/home"),
    ("GET", "/api/v2/log"),
    ("GET", "/api/v2/data-connections"),
    ("GET", "/api/v2/data-connections/ANA/parameters"),
    ("POST", "/api/v2/data-connections/ANA/parameters"),
    ("POST", "/api/v2/run-query"),
    ("POST", "/api/v2/uploads"),  # checks HTTP Basic of an account itself
]
DUFT_ROUTES = ("/api/v2/", "/run-data-task", "/sse/")


async def call(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"headers": headers}
    if method == "POST":
        kwargs["json"] = {} if body is None else body
    async with session.request(method, url, **kwargs) as response:
        return response.status, await response.json()


def duft(*args: str, state_dir: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``duft ARGS`` as a separate process, as a site's operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "clients.cli.main", "--state-dir", str(state_dir), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environment_without_duft(),
        timeout=30,
    )


async def test_every_route_refuses_a_request_without_a_credential(
    daemon: DaemonProcess, bridge: BridgeProcess
) -> None:
    """Without a credential (another local user has none) every route that reads or changes runs,
    the SSE routes and DUFT's legacy routes included, answers 401; nothing starts. The page and
    get-current-config stay public, with no user and no paths in it."""
    async with aiohttp.ClientSession() as stranger:
        for method, path in PROTECTED:
            status, body = await call(stranger, method, f"{bridge.url}{path}")
            assert status == 401, (method, path, body)
            if path.startswith(DUFT_ROUTES):
                assert body["code"] == "unauthorized" and body["message"], path
            else:
                assert body["error"]["code"] == "unauthorized", path
            wrong = {"Authorization": "token not-the-token"}
            status, _ = await call(stranger, method, f"{bridge.url}{path}", **wrong)
            assert status in (401, 429), (method, path)
        async with stranger.get(f"{bridge.url}/") as response:
            assert response.status == 200
        status, config = await call(stranger, "GET", f"{bridge.url}/api/v2/get-current-config")
    assert status == 200 and config["currentUser"] is None
    assert config["currentUserPermissions"] == [] and config["directories"] == {}
    assert daemon.request(Op.RUNS)["runs"] == []


# What another local user runs: the system's Python, standard library only, no token.
STRANGER_PROBE = """
import json, sys, urllib.error, urllib.request
codes = []
for method, url in json.loads(sys.argv[1]):
    data = b"{}" if method == "POST" else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            codes.append(response.status)
    except urllib.error.HTTPError as error:
        codes.append(error.code)
print(json.dumps(codes))
"""


@pytest.fixture
def stranger_uid() -> Iterator[int]:
    """A fresh system user (removed at the end)."""
    with second_user("duftb") as user:
        yield user.pw_uid


def test_another_local_user_gets_401_from_every_route(
    daemon: DaemonProcess, bridge: BridgeProcess, stranger_uid: int
) -> None:
    """A second unix user on the machine, who never saw the printed URL, gets 401 from every route
    (the SSE routes and POST /run-data-task included) and starts nothing."""
    routes = [(method, f"{bridge.url}{path}") for method, path in PROTECTED]
    probe = subprocess.run(
        ["/usr/bin/python3", "-c", STRANGER_PROBE, json.dumps(routes)],
        user=stranger_uid,
        group=pwd.getpwuid(stranger_uid).pw_gid,
        extra_groups=[],
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == [401] * len(PROTECTED)
    assert daemon.request(Op.RUNS)["runs"] == []


async def test_the_printed_url_logs_a_browser_in_with_a_strict_http_only_cookie(
    bridge: BridgeProcess,
) -> None:
    """Opening http://.../?token=T stores T in an HttpOnly SameSite=Strict cookie and reloads the
    page without it; the cookie then lets the SSE and API routes in. A wrong token is a 401."""
    # unsafe=True: keep cookies of an IP-address host, as a browser does.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(f"{bridge.url}/?token={bridge.token}", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/"
            cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        async with browser.get(f"{bridge.url}/api/runs") as response:
            assert response.status == 200
        async with browser.get(f"{bridge.url}/api/v2/dte-status") as response:
            assert response.status == 200
    async with aiohttp.ClientSession() as other:
        async with other.get(f"{bridge.url}/?token=guess", allow_redirects=False) as response:
            assert response.status == 401
        status, _ = await call(other, "GET", f"{bridge.url}/api/runs", Authorization="Bearer x")
        assert status == 401


async def test_wrong_tokens_are_rate_limited_but_the_right_one_still_works(
    bridge: BridgeProcess,
) -> None:
    """After MAX_FAILURES wrong tokens from one address, more wrong ones get 429 for a while
    (guessing is slowed to a few tries a minute), yet the right token, in a header or the
    URL, still works: every local user shares 127.0.0.1 and must not lock the owner out."""
    async with aiohttp.ClientSession() as guesser:
        url = f"{bridge.url}/api/runs"
        for attempt in range(MAX_FAILURES):
            status, _ = await call(guesser, "GET", url, Authorization=f"token guess-{attempt}")
            assert status == 401
        status, body = await call(guesser, "GET", url, Authorization="token one-more")
        assert status == 429 and "try again" in body["error"]["message"]
        status, _ = await call(guesser, "GET", url, Authorization=f"token {bridge.token}")
        assert status == 200
        login = f"{bridge.url}/?token={bridge.token}"
        async with guesser.get(login, allow_redirects=False) as response:
            assert response.status == 302


async def test_no_auth_says_so_loudly_and_lets_everyone_in(
    daemon: DaemonProcess, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    """--no-auth prints a warning at start and no route asks for a credential."""
    open_bridge = bridge_factory(daemon.state_dir, "--no-auth")
    assert open_bridge.token == ""
    assert open_bridge.process is not None and open_bridge.process.stdout is not None
    warning = open_bridge.process.stdout.readline()
    assert "WARNING" in warning and "NO CREDENTIALS" in warning
    async with aiohttp.ClientSession() as anyone:
        status, _ = await call(anyone, "GET", f"{open_bridge.url}/api/runs")
        assert status == 200
        status, body = await call(
            anyone, "POST", f"{open_bridge.url}/api/v2/run-data-task", {"data_task_id": "NOPE"}
        )
        assert status == 404 and body["code"] == "unknown_task"


async def test_user_logins_permissions_refresh_and_rate_limit(
    daemon: DaemonProcess, bridge: BridgeProcess
) -> None:
    """With accounts made by `duft users add`, DUFT's UI logs in at /api/v2/token/: the user and
    permissions show in get-current-config; a user without run_data_task cannot start a run;
    refresh gives a working access token only; a wrong password is refused and, repeated,
    rate limited for that name alone; a removed user, or one whose password changed, is
    refused at once, and the refused refresh clears the cookie. The accounts file is 0600
    and holds no clear password."""
    state = daemon.state_dir
    added = duft(
        "users",
        "add",
        "alice",
        "--password-stdin",
        "--permission",
        "run_data_task",
        "--permission",
        "change_settings",
        state_dir=state,
        stdin=PASSWORDS["alice"] + "\n",
    )
    assert added.returncode == 0, added.stderr
    added = duft(
        "users",
        "add",
        "bob",
        "--password-stdin",
        "--permission",
        "change_settings",
        state_dir=state,
        stdin=PASSWORDS["bob"] + "\n",
    )
    assert added.returncode == 0, added.stderr
    listed = json.loads(duft("users", "list", "--json", state_dir=state).stdout)
    assert listed == [
        {"name": "alice", "permissions": ["change_settings", "run_data_task"]},
        {"name": "bob", "permissions": ["change_settings"]},
    ]
    users_file = state / "users.json"
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    text = users_file.read_text()
    assert "$argon2id$" in text and not any(p in text for p in PASSWORDS.values())

    api = f"{bridge.url}/api/v2"
    async with aiohttp.ClientSession() as ui:
        status, config = await call(ui, "GET", f"{api}/get-current-config")
        assert config["features"]["user_authentication"] is True
        assert config["features"]["enforce_user_authentication"] is True
        assert config["currentUser"] is None

        status, pair = await call(
            ui, "POST", f"{api}/token/", {"username": "bob", "password": PASSWORDS["bob"]}
        )
        assert status == 200 and set(pair) == {"access", "refresh"}
        bob = {"Authorization": f"Bearer {pair['access']}"}
        bob_refresh = pair["refresh"]
        status, config = await call(ui, "GET", f"{api}/get-current-config", **bob)
        assert config["currentUser"]["username"] == "bob"
        assert config["currentUserPermissions"] == ["change_settings"]
        status, body = await call(
            ui, "POST", f"{api}/run-data-task", {"data_task_id": "SAMPLE"}, **bob
        )
        assert status == 403 and "run_data_task" in body["message"], body
        status, _ = await call(ui, "POST", f"{bridge.url}/api/tasks/SAMPLE/runs", {}, **bob)
        assert status == 403
        status, _ = await call(ui, "GET", f"{api}/data-connections/ANA/parameters", **bob)
        assert status == 200  # bob may change settings

        status, refreshed = await call(
            ui, "POST", f"{api}/token/refresh/", {"refresh": pair["refresh"]}
        )
        assert status == 200 and refreshed["access"] != pair["access"]
        assert set(refreshed) == {"access"}  # the refresh token is not renewed: sessions end
        status, _ = await call(
            ui, "GET", f"{api}/dte-status", Authorization=f"Bearer {refreshed['access']}"
        )
        assert status == 200
        status, _ = await call(ui, "POST", f"{api}/token/refresh/", {"refresh": pair["access"]})
        assert status == 401  # an access token is no refresh token

        status, pair = await call(
            ui, "POST", f"{api}/token/", {"username": "alice", "password": PASSWORDS["alice"]}
        )
        alice = {"Authorization": f"Bearer {pair['access']}"}
        run_sample = {"data_task_id": "SAMPLE", "parameters": {"steps": 1, "sleep_time": 0}}
        status, body = await call(ui, "POST", f"{api}/run-data-task", run_sample, **alice)
        assert status == 202, body
        assert daemon.wait_final(body["run_id"])["state"] == "succeeded"

        assert duft("users", "remove", "alice", state_dir=state).returncode == 0
        status, _ = await call(ui, "GET", f"{api}/dte-status", **alice)
        assert status == 401

        changed = duft(
            "users", "add", "bob", "--password-stdin", state_dir=state, stdin="bob-new-secret\n"
        )
        assert changed.returncode == 0, changed.stderr
        status, _ = await call(ui, "GET", f"{api}/dte-status", **bob)
        assert status == 401
        async with ui.post(f"{api}/token/refresh/", json={"refresh": bob_refresh}) as response:
            assert response.status == 401
            cleared = response.headers["Set-Cookie"]
            assert cleared.startswith("duft-bridge") and '=""' in cleared and "Max-Age=0" in cleared

        for _ in range(MAX_FAILURES):
            status, body = await call(
                ui, "POST", f"{api}/token/", {"username": "bob", "password": "wrong-password"}
            )
            assert status == 401 and body["code"] == "unauthorized"
        status, body = await call(
            ui, "POST", f"{api}/token/", {"username": "bob", "password": "bob-new-secret"}
        )
        assert status == 429 and body["code"] == "too_many_attempts"
        accounts.add_account(state, "carol", "carol-secret-3", set())
        status, pair = await call(
            ui, "POST", f"{api}/token/", {"username": "carol", "password": "carol-secret-3"}
        )
        assert status == 200, pair  # guesses at bob's name lock out no other account


def test_users_command_refuses_bad_accounts_and_keeps_passwords_off_the_command_line(
    tmp_path: Path,
) -> None:
    """`duft users` refuses a short password, a bad name, an unknown permission and removing a
    user that does not exist, each with a message naming it, and writes nothing then; without a
    terminal it asks for --password-stdin rather than take a password as an argument."""
    state = tmp_path / "state"
    short = duft("users", "add", "carol", "--password-stdin", state_dir=state, stdin="short\n")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    bad = duft("users", "add", "car ol", "--password-stdin", state_dir=state, stdin="long-enough\n")
    assert bad.returncode == 2 and "'car ol'" in bad.stderr
    unknown = duft("users", "add", "carol", "--permission", "admin", state_dir=state)
    assert unknown.returncode == 2 and "admin" in unknown.stderr
    no_terminal = duft("users", "add", "carol", state_dir=state)
    assert no_terminal.returncode == 2 and "--password-stdin" in no_terminal.stderr
    assert not (state / "users.json").exists()
    missing = duft("users", "remove", "dave", state_dir=state)
    assert missing.returncode == 2 and "no user 'dave'" in missing.stderr
    assert duft("users", "list", state_dir=state).stdout.startswith("no accounts")
