"""The UI bridge's JSON API and run streams, against a real duftd and a real duft-bridge process."""

from __future__ import annotations

import asyncio
import json
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dte_tools import locate
from tests.harness import DaemonProcess, environment_without_duft

START_TIMEOUT_S = 15.0
FINAL_STATES = {"succeeded", "failed", "cancelled", "lost"}

# -- a real bridge process and an SSE reader (also used by the other bridge tests) --------


class BridgeProcess:
    """One ``python -m clients.bridge`` on a free port, serving one daemon's state folder."""

    def __init__(self, state_dir: Path, log_path: Path, extra_args: list[str]) -> None:
        self.state_dir = state_dir
        self.log_path = log_path
        self.extra_args = extra_args
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.token = ""  # from the ready-to-open URL it prints (none with --no-auth)

    def start(self) -> BridgeProcess:
        env = environment_without_duft()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "clients.bridge",
                    "--port",
                    "0",
                    "--state-dir",
                    str(self.state_dir),
                    *self.extra_args,
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                text=True,
            )
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(START_TIMEOUT_S):
                raise AssertionError(f"duft-bridge did not start within {START_TIMEOUT_S} s")
        line = self.process.stdout.readline()
        if "serving http://" not in line:
            raise AssertionError(f"duft-bridge did not start: {line!r}\n{self.log_text()}")
        url = line.split("serving ", 1)[1].split()[0]
        base, _, token = url.partition("/?token=")
        self.url, self.token = base.rstrip("/"), token
        return self

    @property
    def headers(self) -> dict[str, str]:
        """What an API client sends to be let in."""
        return {"Authorization": f"token {self.token}"} if self.token else {}

    def session(self) -> aiohttp.ClientSession:
        """An HTTP client that sends this bridge's token with every request."""
        return aiohttp.ClientSession(headers=self.headers, timeout=aiohttp.ClientTimeout(total=30))

    def log_text(self) -> str:
        return (
            self.log_path.read_text(encoding="utf-8", errors="replace")
            if self.log_path.exists()
            else ""
        )

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("duft-bridge did not stop within 10 s of SIGTERM") from None
        finally:
            if self.process.stdout is not None:
                self.process.stdout.close()


@pytest.fixture
def bridge_factory(tmp_path: Path) -> Iterator[Callable[..., BridgeProcess]]:
    """Start real duft-bridge processes (extra arguments after the state folder); all are
    stopped at the end."""
    started: list[BridgeProcess] = []

    def start(state_dir: Path, *extra_args: str) -> BridgeProcess:
        bridge = BridgeProcess(state_dir, tmp_path / f"bridge{len(started)}.log", list(extra_args))
        started.append(bridge)
        return bridge.start()

    yield start
    for bridge in started:
        assert bridge.stop() == 0, bridge.log_text()


@pytest.fixture
def bridge(daemon: DaemonProcess, bridge_factory: Callable[..., BridgeProcess]) -> BridgeProcess:
    """A bridge serving the ``daemon`` fixture's daemon."""
    return bridge_factory(daemon.state_dir)


@pytest.fixture
async def http(bridge: BridgeProcess) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client that authenticates to the ``bridge`` fixture with its token."""
    async with bridge.session() as session:
        yield session


async def sse(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str | None, Any]]:
    """``(id, data)`` of each SSE message of ``response`` (data parsed as JSON)."""
    event_id: str | None = None
    data: list[str] = []
    async for raw in response.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield event_id, json.loads("\n".join(data))
            event_id, data = None, []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                event_id = value
            elif name == "data":
                data.append(value)


async def read_stream(
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
    wait_s: float = 20.0,
) -> list[tuple[str | None, Any]]:
    """The messages of one SSE response, to its end or the first ``stop_after`` of them."""
    messages: list[tuple[str | None, Any]] = []
    async with asyncio.timeout(wait_s), http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        async for message in sse(response):
            messages.append(message)
            if stop_after is not None and len(messages) >= stop_after:
                break
    return messages


async def until(check: Callable[[], Any], wait_s: float, what: str) -> Any:
    """Await ``check()`` until it is truthy; fail naming ``what`` after ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {wait_s} s waiting for {what}")
        await asyncio.sleep(0.05)  # wait-ok: polling interval of a bounded wait


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as response:
        return response.status, await response.json()


async def post_json(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(url, json=body) as response:
        return response.status, await response.json()


async def wait_final(
    http: aiohttp.ClientSession, bridge: BridgeProcess, run_id: int
) -> dict[str, Any]:
    async def final() -> dict[str, Any] | None:
        _, body = await get_json(http, f"{bridge.url}/api/runs/{run_id}")
        return body["run"] if body["run"]["state"] in FINAL_STATES else None

    return await until(final, 30, f"run {run_id} to finish")


def stored(daemon: DaemonProcess, run_id: int) -> list[dict[str, Any]]:
    """The run's events as the daemon stored them, in the bridge's event shape."""
    return [
        {"run_id": run_id, "task_id": e.get("task_id", "SAMPLE"), **e}
        for e in daemon.events(run_id)
    ]


def comparable(events: list[dict[str, Any]]) -> list[tuple[int, str, Any]]:
    return [(e["seq"], e["kind"], e["data"]) for e in events]


def assert_error(status: int, body: Any, expected_status: int, code: str) -> None:
    assert status == expected_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"], body


# -- tasks ------------------------------------------------------------------------------


async def test_tasks_list_hides_hidden_tasks_unless_all(
    bridge: BridgeProcess, http: aiohttp.ClientSession
) -> None:
    """GET /api/tasks lists visible tasks; ?all=1 adds hidden ones; a bad flag is a 400."""
    status, body = await get_json(http, f"{bridge.url}/api/tasks")
    assert status == 200
    ids = {task["id"] for task in body["tasks"]}
    assert {"SAMPLE", "SAMPLE-NOTEBOOK", "DEMO-ETL"} <= ids
    assert "SLOW-SAMPLE" not in ids
    status, body = await get_json(http, f"{bridge.url}/api/tasks?all=1")
    assert status == 200
    assert "SLOW-SAMPLE" in {task["id"] for task in body["tasks"]}
    assert_error(*await get_json(http, f"{bridge.url}/api/tasks?all=maybe"), 400, "bad_request")


async def test_task_detail_has_its_parameters(
    bridge: BridgeProcess, http: aiohttp.ClientSession
) -> None:
    """GET /api/tasks/{id} gives each parameter's title, description, default and overridability;
    unknown ids are 404."""
    status, body = await get_json(http, f"{bridge.url}/api/tasks/SAMPLE")
    assert status == 200
    steps = body["task"]["parameters"]["steps"]
    assert steps["title"] == "Steps" and steps["default"] == 10 and steps["allow_override"] is True
    assert steps["description"]
    assert_error(*await get_json(http, f"{bridge.url}/api/tasks/NO-SUCH-TASK"), 404, "unknown_task")


# -- runs -------------------------------------------------------------------------------


async def test_submit_reports_ignored_parameters_and_joins_the_active_run(
    bridge: BridgeProcess, http: aiohttp.ClientSession
) -> None:
    """POST /api/tasks/{id}/runs starts a run (201) naming ignored parameters; a second POST joins
    it (200)."""
    url = f"{bridge.url}/api/tasks/SAMPLE/runs"
    async with http.post(url, json={"steps": 40, "sleep_time": 0.25, "colour": "red"}) as response:
        assert response.status == 201
        first = await response.json()
        assert response.headers["Location"] == f"/api/runs/{first['run']['id']}"
    assert first["joined"] is False
    assert set(first["ignored"]) == {"colour"}
    assert first["run"]["params"]["steps"] == 40
    status, second = await post_json(http, url, {"steps": 1})
    assert status == 200 and second["joined"] is True
    assert second["run"]["id"] == first["run"]["id"]
    status, body = await post_json(http, f"{bridge.url}/api/runs/{first['run']['id']}/cancel", {})
    assert status == 200 and body["run"]["id"] == first["run"]["id"]
    assert (await wait_final(http, bridge, first["run"]["id"]))["state"] == "cancelled"


async def test_submit_refuses_bad_parameters_bodies_and_content_types(
    bridge: BridgeProcess, http: aiohttp.ClientSession
) -> None:
    """Bad parameter types are 422, bad JSON 400, non-JSON posts 415, unknown tasks 404; none starts
    a run."""
    url = f"{bridge.url}/api/tasks/SAMPLE/runs"
    assert_error(*await post_json(http, url, {"steps": "many"}), 422, "bad_parameter")
    assert_error(*await post_json(http, url, [1, 2]), 400, "bad_request")
    headers = {"Content-Type": "application/json"}
    async with http.post(url, data=b"{not json", headers=headers) as response:
        assert_error(response.status, await response.json(), 400, "bad_request")
    async with http.post(url, data={"steps": "3"}) as response:  # an HTML form's encoding
        assert_error(response.status, await response.json(), 415, "unsupported_media_type")
    async with http.post(
        url, data=b'{"steps": 3}', headers={"Content-Type": "text/plain"}
    ) as response:
        assert_error(response.status, await response.json(), 415, "unsupported_media_type")
    assert_error(
        *await post_json(http, f"{bridge.url}/api/tasks/NOPE/runs", {}), 404, "unknown_task"
    )
    status, body = await get_json(http, f"{bridge.url}/api/runs")
    assert status == 200 and body["runs"] == []


async def test_runs_are_listed_with_filters_and_fetched_one_by_one(
    bridge: BridgeProcess, http: aiohttp.ClientSession
) -> None:
    """GET /api/runs filters by task, state and limit; GET /api/runs/{id} gives one; unknown ids are
    404."""
    ok = await post_json(http, f"{bridge.url}/api/tasks/SAMPLE/runs", {"steps": 1, "sleep_time": 0})
    ok_run = await wait_final(http, bridge, ok[1]["run"]["id"])
    bad = await post_json(
        http,
        f"{bridge.url}/api/tasks/SAMPLE/runs",
        {"steps": 2, "sleep_time": 0, "simulate_error": True},
    )
    bad_run = await wait_final(http, bridge, bad[1]["run"]["id"])
    assert (ok_run["state"], bad_run["state"]) == ("succeeded", "failed")

    _, body = await get_json(http, f"{bridge.url}/api/runs")
    assert [run["id"] for run in body["runs"]] == [bad_run["id"], ok_run["id"]]
    _, body = await get_json(http, f"{bridge.url}/api/runs?state=failed")
    assert [run["id"] for run in body["runs"]] == [bad_run["id"]]
    _, body = await get_json(http, f"{bridge.url}/api/runs?task=SAMPLE&limit=1")
    assert [run["id"] for run in body["runs"]] == [bad_run["id"]]
    _, body = await get_json(http, f"{bridge.url}/api/runs?task=DEMO-ETL")
    assert body["runs"] == []
    assert_error(*await get_json(http, f"{bridge.url}/api/runs?limit=0"), 400, "bad_request")
    assert_error(*await get_json(http, f"{bridge.url}/api/runs?state=sleeping"), 400, "bad_request")

    status, body = await get_json(http, f"{bridge.url}/api/runs/{ok_run['id']}")
    assert status == 200 and body["run"]["state"] == "succeeded"
    assert body["run"]["params"] == {
        "name": "Daenerys",
        "sleep_time": 0,
        "steps": 1,
        "simulate_error": False,
    }
    assert_error(*await get_json(http, f"{bridge.url}/api/runs/999"), 404, "unknown_run")
    assert_error(*await get_json(http, f"{bridge.url}/api/runs/abc"), 404, "unknown_run")
    assert_error(
        *await post_json(http, f"{bridge.url}/api/runs/999/cancel", {}), 404, "unknown_run"
    )
    async with http.post(f"{bridge.url}/api/runs/{ok_run['id']}/cancel") as response:  # no JSON
        assert_error(response.status, await response.json(), 415, "unsupported_media_type")


async def test_foreign_hosts_and_origins_are_refused(
    bridge: BridgeProcess, http: aiohttp.ClientSession
) -> None:
    """A foreign Host (DNS rebinding) or a POST from a foreign origin is 403; a loopback origin gets
    CORS."""
    async with http.get(f"{bridge.url}/api/tasks", headers={"Host": "evil.example"}) as response:
        assert_error(response.status, await response.json(), 403, "forbidden_host")
    headers = {"Origin": "https://evil.example"}
    async with http.post(
        f"{bridge.url}/api/tasks/SAMPLE/runs", json={}, headers=headers
    ) as response:
        assert_error(response.status, await response.json(), 403, "forbidden_origin")
    preflight = {"Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST"}
    async with http.options(f"{bridge.url}/run-data-task", headers=preflight) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
        assert "Content-Type" in response.headers["Access-Control-Allow-Headers"]
    _, body = await get_json(http, f"{bridge.url}/api/runs")
    assert body["runs"] == []


async def test_health_relays_the_daemon_and_never_its_key(
    daemon: DaemonProcess, bridge: BridgeProcess, http: aiohttp.ClientSession
) -> None:
    """GET /api/health relays duftd's health; no answer of the bridge contains the connection
    key."""
    key = json.loads((daemon.state_dir / locate.CONNECTION_FILE_NAME).read_text())["key"]
    status, body = await get_json(http, f"{bridge.url}/api/health")
    assert status == 200 and body["daemon"]["pid"] == daemon.process.pid
    for path in ("/api/health", "/api/tasks?all=1", "/api/tasks/SAMPLE", "/api/runs", "/"):
        async with http.get(f"{bridge.url}{path}") as response:
            assert key not in await response.text()


# -- run streams --------------------------------------------------------------------------


async def test_run_stream_gives_history_then_live_to_the_final_state(
    daemon: DaemonProcess, bridge: BridgeProcess, http: aiohttp.ClientSession
) -> None:
    """A run's SSE stream, opened mid-run, carries every stored event once, ids = sequence numbers,
    then closes."""
    _, body = await post_json(
        http, f"{bridge.url}/api/tasks/SAMPLE/runs", {"steps": 6, "sleep_time": 0.1}
    )
    run_id = body["run"]["id"]
    messages = await read_stream(http, f"{bridge.url}/api/runs/{run_id}/events")
    events = [data for _, data in messages]
    assert [event_id for event_id, _ in messages] == [str(e["seq"]) for e in events]
    assert comparable(events) == comparable(stored(daemon, run_id))
    assert events[-1]["data"]["state"] == "succeeded"
    assert all(e["run_id"] == run_id and e["task_id"] == "SAMPLE" for e in events)


async def test_run_stream_resumes_after_last_event_id_with_no_gap_or_duplicate(
    daemon: DaemonProcess, bridge: BridgeProcess, http: aiohttp.ClientSession
) -> None:
    """Reconnecting with Last-Event-ID: N (or ?after=N) gives exactly N+1.. to the final state;
    after it, 204."""
    _, body = await post_json(
        http, f"{bridge.url}/api/tasks/SAMPLE/runs", {"steps": 8, "sleep_time": 0.1}
    )
    run_id = body["run"]["id"]
    url = f"{bridge.url}/api/runs/{run_id}/events"
    first = await read_stream(http, url, stop_after=7)
    last_id = first[-1][0]
    assert last_id == "7"
    rest = await read_stream(http, url, headers={"Last-Event-ID": last_id})
    events = [data for _, data in first + rest]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert comparable(events) == comparable(stored(daemon, run_id))
    assert events[-1]["data"]["state"] == "succeeded"

    by_query = await read_stream(http, f"{url}?after=10")
    assert [data["seq"] for _, data in by_query] == list(range(11, len(events) + 1))
    async with http.get(url, headers={"Last-Event-ID": str(len(events))}) as response:
        assert response.status == 204  # tells an EventSource to stop reconnecting
    async with http.get(url, headers={"Last-Event-ID": "seven"}) as response:
        assert_error(response.status, await response.json(), 400, "bad_request")
    assert_error(*await get_json(http, f"{bridge.url}/api/runs/999/events"), 404, "unknown_run")


async def test_all_events_stream_follows_every_run_live(
    bridge: BridgeProcess, http: aiohttp.ClientSession
) -> None:
    """GET /api/events?kind=state streams the state changes of a run started after it opened, in
    order."""
    async with asyncio.timeout(20), http.get(f"{bridge.url}/api/events?kind=state") as response:
        assert response.status == 200
        stream = sse(response)
        _, body = await post_json(
            http, f"{bridge.url}/api/tasks/SAMPLE/runs", {"steps": 2, "sleep_time": 0}
        )
        states = []
        async for _, event in stream:
            assert event["kind"] == "state" and event["run_id"] == body["run"]["id"]
            states.append(event["data"]["state"])
            if states[-1] in FINAL_STATES:
                break
    assert states == ["queued", "starting", "running", "succeeded"]


# -- when duftd goes away ------------------------------------------------------------------


async def test_unreachable_daemon_gives_503_then_the_bridge_recovers(
    daemon_factory: Callable[..., DaemonProcess],
    daemon: DaemonProcess,
    config_dir: Path,
    bridge: BridgeProcess,
    http: aiohttp.ClientSession,
) -> None:
    """With duftd stopped the API answers 503 and the page still loads; a new duftd (new ports, new
    key) is picked up."""
    assert daemon.stop() == 0
    assert_error(*await get_json(http, f"{bridge.url}/api/tasks"), 503, "daemon_unavailable")
    assert_error(
        *await post_json(http, f"{bridge.url}/api/tasks/SAMPLE/runs", {}), 503, "daemon_unavailable"
    )
    assert_error(*await get_json(http, f"{bridge.url}/api/runs/1"), 503, "daemon_unavailable")
    async with http.get(f"{bridge.url}/") as response:
        assert response.status == 200

    daemon_factory(config_dir, state_dir=daemon.state_dir)

    async def tasks_again() -> bool:
        status, _ = await get_json(http, f"{bridge.url}/api/tasks")
        return status == 200

    await until(tasks_again, 15, "the bridge to reach the new duftd")
    status, body = await post_json(
        http, f"{bridge.url}/api/tasks/SAMPLE/runs", {"steps": 1, "sleep_time": 0}
    )
    assert status == 201
    assert (await wait_final(http, bridge, body["run"]["id"]))["state"] == "succeeded"


async def test_run_stream_survives_a_daemon_crash_and_ends_at_the_recorded_state(
    daemon_factory: Callable[..., DaemonProcess],
    daemon: DaemonProcess,
    config_dir: Path,
    bridge: BridgeProcess,
    http: aiohttp.ClientSession,
) -> None:
    """A stream open while duftd is killed stays open, and once a new duftd marks the run lost it
    ends there, gap-free."""
    _, body = await post_json(
        http, f"{bridge.url}/api/tasks/SAMPLE/runs", {"steps": 60, "sleep_time": 0.2}
    )
    run_id = body["run"]["id"]
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(30), http.get(f"{bridge.url}/api/runs/{run_id}/events") as response:
        async for _, event in sse(response):
            events.append(event)
            if event["kind"] == "progress" and event["data"]["done"] == 2:
                daemon.stop(signal.SIGKILL)
                restarted = daemon_factory(config_dir, state_dir=daemon.state_dir)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["data"]["state"] == "lost"
    assert comparable(events) == comparable(stored(restarted, run_id))
