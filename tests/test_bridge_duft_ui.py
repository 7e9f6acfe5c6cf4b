"""DUFT's web UI endpoints (issue 14) against a real duftd and bridge on the published config."""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from clients.bridge import duft_api, upstream
from clients.bridge.app import create_app, errors_middleware
from clients.bridge.async_bus import AsyncBus
from clients.bridge.auth import CREDENTIALS, Credentials
from dte_tools.wire import Op
from tests import test_bridge_api as shared
from tests.harness import (
    EMBEDDED_CONFIG,
    FIXTURES_DIR,
    DaemonProcess,
    add_script_task,
    add_worker_task,
    open_gate,
    read_note,
)
from tests.test_bridge_api import BridgeProcess, get_json, post_json, sse, until, wait_final

bridge_factory = shared.bridge_factory  # the fixture, shared with the API tests

UI_STUB = Path(__file__).resolve().parent / "duft_ui_stub"
DASHBOARD = "<Dashboard><Header>Home</Header></Dashboard>\n"


def make_site(folder: Path) -> Path:
    """The published DUFT config, with the embedded sample task's files (so its SAMPLE and
    SAMPLE-ERROR run), a gated task, one dashboard, and its schedule made yearly."""
    config = Path(shutil.copytree(FIXTURES_DIR, folder))
    tasks = config / "system" / "data_tasks"
    tasks.mkdir()
    for name in ("sample_task.py", "data_task_helpers.py"):
        shutil.copy(EMBEDDED_CONFIG / "system" / "data_tasks" / name, tasks / name)
    add_worker_task(config, "GATED", "gated", dataConnections=["ANA"])
    # The published schedule fires SAMPLE every 30 s; once a year keeps it out of the tests.
    user_file = config / "user" / "config.json"
    user = json.loads(user_file.read_text(encoding="utf-8"))
    yearly = {"second": "0", "minute": "0", "hour": "0", "day_of_month": "1", "month": "1"}
    user["scheduledDataTasks"]["SAMPLE"]["schedule"]["cron"].update(yearly)
    user_file.write_text(json.dumps(user, indent=2), encoding="utf-8")
    (config / "system" / "dashboards").mkdir()
    (config / "system" / "dashboards" / "home.3dl").write_text(DASHBOARD, encoding="utf-8")
    return config


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return make_site(tmp_path / "duft-config")


@pytest.fixture
def served(
    site: Path,
    daemon_factory: Callable[..., DaemonProcess],
    bridge_factory: Callable[..., BridgeProcess],
) -> tuple[DaemonProcess, BridgeProcess]:
    daemon = daemon_factory(site)
    return daemon, bridge_factory(daemon.state_dir)


@pytest.fixture
async def http(served: tuple[DaemonProcess, BridgeProcess]) -> AsyncIterator[aiohttp.ClientSession]:
    async with served[1].session() as session:
        yield session


def assert_duft_error(answer: tuple[int, Any], status: int, code: str) -> str:
    """An error in DUFT's shape (top-level ``message``, our ``code``); returns the message."""
    got, body = answer
    assert got == status, body
    assert set(body) == {"message", "code"} and body["code"] == code, body
    assert body["message"], body
    return body["message"]


def fixture_json(*parts: str) -> Any:
    return json.loads((FIXTURES_DIR.joinpath(*parts)).read_text(encoding="utf-8"))


# -- start-up endpoints ----------------------------------------------------------------


async def test_start_up_endpoints_answer_from_the_daemons_config(
    served: tuple[DaemonProcess, BridgeProcess], site: Path, http: aiohttp.ClientSession
) -> None:
    """get-current-config, settings, navigation, theme and 3dldashboard give the shapes DUFT's
    UI reads, from the files of the folder duftd runs (system, user, root and app files)."""
    _, bridge = served
    api = f"{bridge.url}/api/v2"
    status, config = await get_json(http, f"{api}/get-current-config")
    assert status == 200
    assert config["features"] == {
        "data_tasks": True,
        "user_authentication": False,
        "enforce_user_authentication": False,
        "task_scheduler": True,  # the fixture's user/config.json has scheduledDataTasks
        "server_uploads": True,
        "log_level": "INFO",
    }
    assert config["currentUser"] is None and config["currentUserRoles"] == []
    assert set(config["currentUserPermissions"]) == {"run_data_task", "change_settings"}
    assert config["settings"]["name"] == "Quantum Extenstion"  # settings.json at the root
    assert config["settings"]["appName"] == "DUFT (configurable)"  # system/settings.json
    assert config["settings"]["footer"] == "Configurable footer text"
    assert config["version"] and config["serverBaseURL"] == f"{api}"
    assert config["directories"]["config"] == str(site)

    assert await get_json(http, f"{api}/settings") == (
        200,
        {"oobe": True, "debug": True, "unittest": False},
    )
    status, navigation = await get_json(http, f"{api}/navigation")
    assert status == 200
    assert navigation == {
        "system": fixture_json("system", "navigation.json"),
        "user": fixture_json("user", "navigation.json"),
    }
    items = navigation["system"]["dataTasks"]["items"]
    assert {"title", "icon", "task", "dashboard", "prompt"} <= set(items[0])
    status, app_navigation = await get_json(http, f"{api}/navigation?app=test")
    assert app_navigation["system"] == fixture_json("apps", "test", "navigation.json")
    assert await get_json(http, f"{api}/theme") == (200, fixture_json("system", "theme.json"))
    assert await get_json(http, f"{api}/3dldashboard/home") == (200, DASHBOARD)
    assert "dashboards/none.3dl" in assert_duft_error(
        await get_json(http, f"{api}/3dldashboard/none"), 404, "unknown_dashboard"
    )
    assert_duft_error(await get_json(http, f"{api}/navigation?app=../system"), 400, "bad_request")


async def test_start_up_files_are_reread_and_missing_ones_give_defaults(
    served: tuple[DaemonProcess, BridgeProcess], site: Path, http: aiohttp.ClientSession
) -> None:
    """An edited file shows on the next request; without navigation, theme and settings files
    the answers are DUFT-shaped defaults (the sidebar lists duftd's runnable tasks), never 500."""
    _, bridge = served
    api = f"{bridge.url}/api/v2"
    (site / "system" / "theme.json").write_text('{"themes": [{"name": "edited"}]}')
    assert await get_json(http, f"{api}/theme") == (200, {"themes": [{"name": "edited"}]})
    for name in ("navigation.json", "theme.json", "settings.json"):
        (site / "system" / name).unlink()
    (site / "settings.json").unlink()
    (site / "user" / "navigation.json").write_text("{not json")

    status, config = await get_json(http, f"{api}/get-current-config")
    assert status == 200 and config["settings"]["appName"] == "DUFT"
    status, theme = await get_json(http, f"{api}/theme")
    assert status == 200 and theme["themes"][0]["name"] == "default"
    status, navigation = await get_json(http, f"{api}/navigation")
    assert status == 200 and navigation["user"] == {}
    listed = {item["task"] for item in navigation["system"]["dataTasks"]["items"]}
    assert "GATED" in listed and "UPLOAD" not in listed  # runnable tasks only
    assert navigation["system"]["menu"] == {"header": "Dashboards", "items": []}


# -- the data-task endpoints -------------------------------------------------------------


async def test_run_data_task_at_duft_paths_with_duft_shaped_errors(
    served: tuple[DaemonProcess, BridgeProcess], site: Path, http: aiohttp.ClientSession
) -> None:
    """POST /api/v2/run-data-task starts a run; a navigation task that cannot run or does not exist
    gets a message naming why; dte-status answers at its DUFT path."""
    _, bridge = served
    api = f"{bridge.url}/api/v2"
    status, body = await post_json(
        http, f"{api}/run-data-task", {"data_task_id": "SAMPLE", "parameters": {"name": "Arya"}}
    )
    assert status == 202 and "Script started successfully" in body["message"]
    run = await wait_final(http, bridge, body["run_id"])
    assert run["state"] == "succeeded" and run["params"]["name"] == "Arya"

    message = assert_duft_error(
        await post_json(http, f"{api}/run-data-task", {"data_task_id": "UPLOAD"}),
        409,
        "task_not_runnable",
    )
    assert "sample_data_upload.ipynb" in message  # why: its file is missing
    navigation = json.loads((site / "system" / "navigation.json").read_text())
    navigation["dataTasks"]["items"].append({"title": "Ghost", "task": "GHOST"})
    (site / "system" / "navigation.json").write_text(json.dumps(navigation))
    message = assert_duft_error(
        await post_json(http, f"{api}/run-data-task", {"data_task_id": "GHOST"}),
        404,
        "unknown_task",
    )
    assert "navigation.json" in message
    assert await get_json(http, f"{api}/dte-status") == (
        200,
        {"is_running": False, "current_script": None},
    )


async def test_sse_dte_shows_a_run_already_going_at_once(
    served: tuple[DaemonProcess, BridgeProcess], site: Path, http: aiohttp.ClientSession
) -> None:
    """A page that connects to /sse/dte/ mid-run gets the run's state first (a script_start marker
    and a visible line naming it), then its lines live to the end."""
    daemon, bridge = served
    run_id = daemon.submit("GATED")["run"]["id"]
    read_note(site, "ready", run_id)
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(20), http.get(f"{bridge.url}/sse/dte/") as response:
        stream = sse(response)
        for _ in range(2):
            frames.append((await anext(stream))[1])
        assert frames == [
            {
                "isRunning": True,
                "message": f"GATED: started (run {run_id})",
                "dataTask": "script_start",
            },
            {
                "isRunning": True,
                "message": frames[1]["message"],
                "dataTask": "GATED",
            },
        ]
        assert frames[1]["message"].startswith(f"GATED is running (run {run_id}")
        open_gate(site, run_id)
        async for _, frame in stream:
            frames.append(frame)
            if frame["dataTask"] == "script_complete":
                break
    assert frames[-1]["isRunning"] is False
    assert any(frame["message"].startswith("ANA file: ") for frame in frames)


# -- the settings screen ----------------------------------------------------------------


async def test_settings_screen_lists_masks_and_saves_connection_values(
    served: tuple[DaemonProcess, BridgeProcess], site: Path, http: aiohttp.ClientSession
) -> None:
    """data-connections lists what is declared; parameters come back with passwords masked; a save
    goes atomically into user/config.json (rest of the file kept, a masked password unchanged);
    bad values get DUFT-shaped errors naming the field."""
    _, bridge = served
    api = f"{bridge.url}/api/v2/data-connections"
    status, connections = await get_json(http, api)
    assert status == 200
    epms = next(c for c in connections if c["id"] == "EPMS")
    assert {"name": "password", "type": "password", "label": "Password"} in epms["params"]
    status, values = await get_json(http, f"{api}/ANA/parameters")
    assert status == 200 and values["password"] == "********"
    assert values["server"] == "127.0.0.1" and "mysecretword" not in json.dumps(values)

    user_file = site / "user" / "config.json"
    user_file.chmod(0o600)
    before = json.loads(user_file.read_text())
    status, saved = await post_json(
        http,
        f"{api}/ANA/parameters",
        {"server": "db.example", "port": 5433, "password": "********"},
    )
    assert status == 200, saved
    assert saved["parameters"]["password"] == "********"
    after = json.loads(user_file.read_text())
    assert after["dataConnectionParameters"]["ANA"] == {
        **before["dataConnectionParameters"]["ANA"],
        "server": "db.example",
        "port": "5433",
    }
    assert after["djangoDatabases"] == before["djangoDatabases"]
    assert list(after) == list(before)
    assert stat.S_IMODE(user_file.stat().st_mode) == 0o600
    assert not [p for p in user_file.parent.iterdir() if p.name.endswith(".tmp")]

    assert "port" in assert_duft_error(
        await post_json(http, f"{api}/ANA/parameters", {"port": "fifty"}), 422, "bad_parameter"
    )
    assert "colour" in assert_duft_error(
        await post_json(http, f"{api}/ANA/parameters", {"colour": "red"}), 422, "bad_parameter"
    )
    assert "NOPE" in assert_duft_error(
        await post_json(http, f"{api}/NOPE/parameters", {"server": "x"}), 404, "unknown_connection"
    )
    assert json.loads(user_file.read_text()) == after


async def test_log_gives_recent_runs_lines(
    served: tuple[DaemonProcess, BridgeProcess], http: aiohttp.ClientSession
) -> None:
    """GET /api/v2/log is {"content": [...]}: the lines of recent runs, oldest run first, with how
    each ended."""
    daemon, bridge = served
    first = daemon.submit("SAMPLE", name="Arya", sleep_time=0)["run"]["id"]
    daemon.wait_final(first)
    second = daemon.submit("SAMPLE-ERROR", name="Bran")["run"]["id"]
    daemon.wait_final(second)
    arya_line = f"SAMPLE (run {first}): Arya: step"
    bran_line = f"SAMPLE-ERROR (run {second}): Bran"

    async def both_runs_logged() -> list[str] | None:
        status, body = await get_json(http, f"{bridge.url}/api/v2/log")
        assert status == 200 and set(body) == {"content"}
        text = "\n".join(body["content"])
        return body["content"] if arya_line in text and bran_line in text else None

    lines = await until(both_runs_logged, 10, "both runs' lines in the log")
    arya = [i for i, line in enumerate(lines) if arya_line in line]
    bran = [i for i, line in enumerate(lines) if bran_line in line]
    assert max(arya) < min(bran)
    assert any(f"SAMPLE-ERROR (run {second}): failed: " in line for line in lines)


class CountingBus(AsyncBus):
    """The bridge's real bus, noting each events request it makes."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(state_dir)
        self.event_reads: list[dict[str, Any]] = []

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        if op == Op.EVENTS:
            self.event_reads.append(args)
        return await super().request(op, **args)


# In process, aiohttp 3.14 warns that the bridge keys request storage with a string
# (web.RequestKey needs aiohttp 3.14, newer than the pinned minimum).
@pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")
async def test_log_reads_only_the_tail_of_a_long_run(
    config_dir: Path,
    daemon_factory: Callable[..., DaemonProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GET /api/v2/log of a run with 300 lines, at 20 lines shown: it ends with the run's
    last lines and outcome, and reads only its last events (a few one-event probes, then
    pages from near the end), not the whole run."""
    add_script_task(config_dir, "LONG", "for n in range(300):\n    print(f'line {n}')\n")
    daemon = daemon_factory(config_dir)
    run_id = daemon.submit("LONG")["run"]["id"]
    assert daemon.wait_final(run_id)["state"] == "succeeded"
    last_seq = max(event["seq"] for event in daemon.events(run_id))
    monkeypatch.setattr(duft_api, "LOG_LINES", 20)
    bus = CountingBus(daemon.state_dir)
    app = create_app(daemon.state_dir, auth=False, bus=bus)
    async with TestClient(TestServer(app)) as client, client.get("/api/v2/log") as response:
        assert response.status == 200
        content = (await response.json())["content"]
    assert len(content) == 20
    assert content[-1].endswith(f"LONG (run {run_id}): succeeded")
    assert content[-2].endswith(f"LONG (run {run_id}): line 299")
    pages = [read for read in bus.event_reads if read.get("limit") != 1]
    assert pages and all(read["after"] >= last_seq - 20 for read in pages), pages
    assert len(bus.event_reads) <= 20, bus.event_reads


# -- everything else: DUFT's server ------------------------------------------------------


class FakeDuftServer:
    """A small aiohttp server standing in for DUFT's server: it echoes what it got, and streams
    its answer in several chunks."""

    def __init__(self) -> None:
        self.url = ""
        self.seen: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            {
                "method": request.method,
                "path": request.path_qs,
                "headers": dict(request.headers),
                "body": body,
            }
        )
        response = web.StreamResponse(headers={"Content-Type": "application/json", "X-Duft": "1"})
        await response.prepare(request)
        for part in (b'{"rows": [', b"1, 2, ", b"3]}"):
            await response.write(part)
        await response.write_eof()
        return response

    async def __aenter__(self) -> FakeDuftServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def test_other_api_v2_paths_go_upstream_or_answer_501(
    served: tuple[DaemonProcess, BridgeProcess],
    bridge_factory: Callable[..., BridgeProcess],
    http: aiohttp.ClientSession,
) -> None:
    """With --upstream, run-query and dashboards' data reach DUFT's server (method, path, query,
    body; its answer streamed back) without the bridge's credentials; without it, 501."""
    daemon, plain = served
    message = assert_duft_error(
        await post_json(http, f"{plain.url}/api/v2/run-query", {"query": "SELECT 1"}),
        501,
        "not_served",
    )
    assert "does not serve queries" in message
    async with FakeDuftServer() as duft:
        bridge = bridge_factory(daemon.state_dir, "--upstream", duft.url)
        async with bridge.session() as client:
            async with client.post(
                f"{bridge.url}/api/v2/run-query?page=2",
                json={"query": "SELECT 1"},
                headers={"Cookie": "sessionid=site-cookie"},
            ) as response:
                assert response.status == 200 and response.headers["X-Duft"] == "1"
                assert await response.json() == {"rows": [1, 2, 3]}
            async with client.get(f"{bridge.url}/api/v2/query-data/home") as response:
                assert response.status == 200
            async with client.get(f"{bridge.url}/api/v2/navigation") as response:
                assert response.status == 200  # served by the bridge, not forwarded
        async with aiohttp.ClientSession() as stranger:
            # Forwarding needs a credential too, also on public or self-checking paths
            # asked with another method than theirs.
            for method, path in (
                ("POST", "/api/v2/run-query"),
                ("GET", "/api/v2/uploads"),
                ("PUT", "/api/v2/token/"),
                ("GET", "/api/v2/token/refresh"),
                ("DELETE", "/api/v2/get-current-config"),
            ):
                async with stranger.request(method, f"{bridge.url}{path}", json={}) as response:
                    assert response.status == 401, (method, path)
    assert [(s["method"], s["path"]) for s in duft.seen] == [
        ("POST", "/api/v2/run-query?page=2"),
        ("GET", "/api/v2/query-data/home"),
    ]
    assert json.loads(duft.seen[0]["body"]) == {"query": "SELECT 1"}
    assert duft.seen[0]["headers"]["Content-Length"] == str(len(duft.seen[0]["body"]))
    for seen in duft.seen:
        names = {name.lower() for name in seen["headers"]}
        assert "authorization" not in names and "cookie" not in names
        assert bridge.token not in json.dumps(seen["headers"])


async def test_forwarder_refuses_a_request_without_identity_when_auth_is_on(
    tmp_path: Path,
) -> None:
    """Defence in depth: the upstream forwarder alone (no auth middleware in front) answers
    401 to a request with no identity while logins are on, and forwards nothing."""
    async with FakeDuftServer() as duft:
        app = web.Application(middlewares=[errors_middleware])
        app[CREDENTIALS] = Credentials(tmp_path, enabled=True)
        upstream.add_routes(app, duft.url)
        async with (
            TestClient(TestServer(app)) as client,
            client.get("/api/v2/query-data/home") as response,
        ):
            assert response.status == 401
    assert duft.seen == []


# -- a built UI at / -----------------------------------------------------------------------


async def test_ui_folder_is_served_with_history_fallback(
    served: tuple[DaemonProcess, BridgeProcess], bridge_factory: Callable[..., BridgeProcess]
) -> None:
    """--ui DIR serves DIR's files at /, index.html for client-side routes, and never for /api/."""
    daemon, _ = served
    bridge = bridge_factory(daemon.state_dir, "--ui", str(UI_STUB))
    index = (UI_STUB / "index.html").read_text(encoding="utf-8")
    async with bridge.session() as client:
        for path in ("/", "/dashboard/home", "/settings/connections"):
            async with client.get(f"{bridge.url}{path}") as response:
                assert response.status == 200 and await response.text() == index
                assert response.headers["Content-Type"].startswith("text/html")
        async with client.get(f"{bridge.url}/ui.js") as response:
            assert response.status == 200
            assert await response.text() == (UI_STUB / "ui.js").read_text(encoding="utf-8")
        async with client.get(f"{bridge.url}/api/nothing-here") as response:
            assert response.status == 404
        async with client.get(f"{bridge.url}/%2e%2e/%2e%2e/etc/passwd") as response:
            assert await response.text() == index  # never a file outside the folder


async def test_embedded_config_gives_duft_ui_a_sidebar_of_runnable_tasks(
    daemon: DaemonProcess, bridge_factory: Callable[..., BridgeProcess]
) -> None:
    """On the embedded duft-config the UI gets its own settings, a theme, and a sidebar whose data
    tasks all exist and can run."""
    bridge = bridge_factory(daemon.state_dir)
    async with bridge.session() as client:
        _, config = await get_json(client, f"{bridge.url}/api/v2/get-current-config")
        _, navigation = await get_json(client, f"{bridge.url}/api/v2/navigation")
        _, theme = await get_json(client, f"{bridge.url}/api/v2/theme")
    assert config["settings"]["appName"] == "DUFT"
    assert theme["themes"][0]["name"] == "default"
    listed = [item["task"] for item in navigation["system"]["dataTasks"]["items"]]
    runnable = {task["id"] for task in daemon.request(Op.TASKS)["tasks"] if task["runnable"]}
    assert listed and set(listed) <= runnable
