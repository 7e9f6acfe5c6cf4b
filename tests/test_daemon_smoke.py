"""The shortest path through the daemon: submit the sample task and watch it succeed."""

from __future__ import annotations

from dte_tools.wire import Op
from tests.harness import DaemonProcess


def test_sample_task_succeeds_with_its_log_and_progress(daemon: DaemonProcess) -> None:
    """A submitted script run succeeds, its log, progress and print() output stored in order."""
    reply = daemon.submit("SAMPLE", name="Arya", sleep_time=0, steps=3)
    assert reply["joined"] is False
    run = daemon.wait_final(reply["run"]["id"])
    assert run["state"] == "succeeded", run
    events = daemon.events(run["id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    kinds = {e["kind"] for e in events}
    assert {"state", "log", "progress", "stdout"} <= kinds
    assert any("Arya" in e["data"].get("message", "") for e in events)
    states = [e["data"]["state"] for e in events if e["kind"] == "state"]
    assert states == ["queued", "starting", "running", "succeeded"]
    assert daemon.request(Op.HEALTH)["runs"] == {"succeeded": 1}
