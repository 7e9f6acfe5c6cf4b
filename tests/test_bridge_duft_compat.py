"""The endpoints DUFT's own web UI calls, answered by the bridge with the shapes that UI reads."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests import test_bridge_api as shared
from tests.harness import DaemonProcess
from tests.test_bridge_api import BridgeProcess, sse, until, wait_final

# The bridge fixtures, shared with the API tests.
bridge_factory = shared.bridge_factory
bridge = shared.bridge
http = shared.http

UI_ORIGIN = "http://localhost:5173"  # where DUFT's UI runs in development
JSON_UTF8 = {"Content-Type": "application/json; charset=utf-8"}
MARKERS = {"script_start", "script_complete", "scriptError"}


def assert_duft_error(status: int, body: Any, expected_status: int, code: str) -> None:
    """An error in DUFT's shape: a top-level ``message`` (what DUFT's UI shows), our ``code``."""
    assert status == expected_status, body
    assert set(body) == {"message", "code"}, body
    assert body["code"] == code and body["message"], body


async def run_data_task(
    http: aiohttp.ClientSession, bridge: BridgeProcess, task: str, **params: Any
) -> tuple[int, Any]:
    body = {"data_task_id": task, "parameters": params}
    async with http.post(f"{bridge.url}/run-data-task", json=body, headers=JSON_UTF8) as response:
        return response.status, await response.json()


def log_lines(daemon: DaemonProcess, run_id: int) -> list[str]:
    """The run's stored log, stdout and stderr lines, in order."""
    lines: list[str] = []
    for event in daemon.events(run_id):
        if event["kind"] == "log":
            lines += event["data"]["message"].splitlines()
        elif event["kind"] in ("stdout", "stderr"):
            lines += event["data"]["text"].splitlines()
    return [line for line in lines if line.strip()]


async def frames_of_one_run(
    http: aiohttp.ClientSession, bridge: BridgeProcess, task: str, **params: Any
) -> tuple[int, list[dict[str, Any]]]:
    """Open /sse/dte/, start a run the way DUFT's UI does, and collect frames up to its end."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(20), http.get(f"{bridge.url}/sse/dte/") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        stream = sse(response)
        _, first = await anext(stream)  # the current state, sent on connect
        assert first == {"isRunning": False, "message": "No data task is running", "dataTask": None}
        status, body = await run_data_task(http, bridge, task, **params)
        assert status == 202, body
        async for event_id, frame in stream:
            assert event_id is None
            frames.append(frame)
            if frame["dataTask"] in ("script_complete", "scriptError"):
                break
    return body["run_id"], frames


async def test_run_data_task_starts_a_run_like_duft_server(
    daemon: DaemonProcess, bridge: BridgeProcess, http: aiohttp.ClientSession
) -> None:
    """POST /run-data-task answers 202 with 'Script started successfully' and runs the task with its
    parameters."""
    status, body = await run_data_task(http, bridge, "SAMPLE", steps=2, sleep_time=0, name="Arya")
    assert status == 202
    assert "Script started successfully" in body["message"]
    assert body["data_task_id"] == "SAMPLE" and body["joined"] is False
    run = await wait_final(http, bridge, body["run_id"])
    assert run["state"] == "succeeded" and run["requested_by"] == "duft-ui"
    assert run["params"]["name"] == "Arya" and run["params"]["steps"] == 2

    async with http.post(f"{bridge.url}/run-data-task", json={"parameters": {}}) as response:
        assert_duft_error(response.status, await response.json(), 400, "bad_request")
    assert_duft_error(*await run_data_task(http, bridge, "NO-SUCH-TASK"), 404, "unknown_task")
    assert_duft_error(
        *await run_data_task(http, bridge, "SAMPLE", steps="two"), 422, "bad_parameter"
    )
    body_text = b'{"data_task_id": "SAMPLE"}'
    async with http.post(
        f"{bridge.url}/run-data-task", data=body_text, headers={"Content-Type": "text/plain"}
    ) as response:
        assert_duft_error(response.status, await response.json(), 415, "unsupported_media_type")


async def test_dte_status_names_the_running_task(
    bridge: BridgeProcess, http: aiohttp.ClientSession
) -> None:
    """GET /api/v2/dte-status is {is_running, current_script}: the running task's id, then null once
    it ends."""

    async def status() -> dict[str, Any]:
        async with http.get(
            f"{bridge.url}/api/v2/dte-status", headers={"Origin": UI_ORIGIN}
        ) as response:
            assert response.status == 200
            assert response.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
            return await response.json()

    assert await status() == {"is_running": False, "current_script": None}
    _, body = await run_data_task(http, bridge, "SAMPLE", steps=40, sleep_time=0.25)

    async def sample_running() -> bool:
        return await status() == {"is_running": True, "current_script": "SAMPLE"}

    await until(sample_running, 15, "dte-status to report SAMPLE running")
    async with http.post(f"{bridge.url}/api/runs/{body['run_id']}/cancel", json={}) as response:
        assert response.status == 200
    await wait_final(http, bridge, body["run_id"])
    assert await status() == {"is_running": False, "current_script": None}


async def test_sse_dte_frames_mark_start_lines_and_completion(
    daemon: DaemonProcess, bridge: BridgeProcess, http: aiohttp.ClientSession
) -> None:
    """/sse/dte/ sends script_start, one frame per log or stdout line (dataTask = task id), then
    script_complete."""
    run_id, frames = await frames_of_one_run(
        http, bridge, "SAMPLE", steps=3, sleep_time=0, name="Arya"
    )
    assert all(set(frame) == {"isRunning", "message", "dataTask"} for frame in frames)
    assert frames[0]["dataTask"] == "script_start" and frames[0]["isRunning"] is True
    assert frames[-1]["dataTask"] == "script_complete" and frames[-1]["isRunning"] is False
    lines = frames[1:-1]
    assert all(frame["dataTask"] == "SAMPLE" and frame["isRunning"] is True for frame in lines)
    assert [frame["message"] for frame in lines] == log_lines(daemon, run_id)
    assert "Arya: step 3 of 3" in [frame["message"] for frame in lines]
    assert "Hello from print(), Arya: stdout is captured too." in [
        frame["message"] for frame in lines
    ]


async def test_sse_dte_marks_a_failed_run_as_script_error(
    daemon: DaemonProcess, bridge: BridgeProcess, http: aiohttp.ClientSession
) -> None:
    """A run that fails ends its /sse/dte/ frames with a visible "<task> failed: <reason>" line,
    then scriptError, after its error lines."""
    run_id, frames = await frames_of_one_run(
        http, bridge, "SAMPLE", steps=2, sleep_time=0, simulate_error=True
    )
    assert frames[0]["dataTask"] == "script_start"
    assert frames[-1]["dataTask"] == "scriptError" and frames[-1]["isRunning"] is False
    messages = [frame["message"] for frame in frames[1:-2]]
    assert messages == log_lines(daemon, run_id)
    assert any("Simulated error at step 1" in message for message in messages)
    assert not MARKERS & {frame["dataTask"] for frame in frames[1:-1]}
    failed = frames[-2]
    assert failed["dataTask"] == "SAMPLE" and failed["message"].startswith("SAMPLE failed: ")
    assert len(failed["message"]) <= 150


async def test_sse_dte_marks_a_cancelled_run_as_script_error(
    bridge: BridgeProcess, http: aiohttp.ClientSession
) -> None:
    """Cancelling a run DUFT's UI started ends its frames with scriptError."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(20), http.get(f"{bridge.url}/sse/dte/") as response:
        stream = sse(response)
        await anext(stream)  # the current state: nothing running
        _, body = await run_data_task(http, bridge, "SAMPLE", steps=40, sleep_time=0.25)
        async for _, frame in stream:
            frames.append(frame)
            if frame["message"].endswith("step 1 of 40"):
                async with http.post(
                    f"{bridge.url}/api/runs/{body['run_id']}/cancel", json={}
                ) as cancel:
                    assert cancel.status == 200
            if frame["dataTask"] in ("script_complete", "scriptError"):
                break
    assert frames[0]["dataTask"] == "script_start"
    assert frames[-1]["dataTask"] == "scriptError" and "cancelled" in frames[-1]["message"]
    assert frames[-2]["message"].startswith("SAMPLE cancelled: ")
