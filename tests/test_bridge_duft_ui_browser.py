"""A web UI written to DUFT's UI contract, served by `duft-bridge --ui`, in a real Chromium."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from tests import test_bridge_api as shared
from tests import test_bridge_browser as browser_test
from tests.harness import DaemonProcess, open_gate, read_note
from tests.test_bridge_api import BridgeProcess
from tests.test_bridge_duft_ui import UI_STUB, make_site

bridge_factory = shared.bridge_factory  # the fixtures, shared with the other bridge tests
browser = browser_test.browser
WAIT_MS = browser_test.WAIT_MS

pytestmark = browser_test.pytestmark


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """The published config whose sidebar lists a task that succeeds and one that fails."""
    config = make_site(tmp_path / "duft-config")
    navigation_file = config / "system" / "navigation.json"
    navigation = json.loads(navigation_file.read_text(encoding="utf-8"))
    navigation["dataTasks"]["items"] = [
        {"title": "Sample", "icon": "update-icon", "task": "SAMPLE", "prompt": "Run?"},
        {"title": "Sample error", "icon": "update-icon", "task": "SAMPLE-ERROR", "prompt": "Run?"},
    ]
    navigation_file.write_text(json.dumps(navigation), encoding="utf-8")
    return config


@pytest.fixture
def served(
    site: Path,
    daemon_factory: Callable[..., DaemonProcess],
    bridge_factory: Callable[..., BridgeProcess],
) -> tuple[DaemonProcess, BridgeProcess]:
    daemon = daemon_factory(site)
    return daemon, bridge_factory(daemon.state_dir, "--ui", str(UI_STUB))


@pytest.fixture
def page(browser: Browser, served: tuple[DaemonProcess, BridgeProcess]) -> Iterator[Page]:
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    yield page
    page.close()
    assert problems == []


def open_ui(page: Page, bridge: BridgeProcess) -> None:
    page.goto(f"{bridge.url}/?token={bridge.token}")
    page.wait_for_selector("body[data-ready]", timeout=WAIT_MS)


def lines(page: Page) -> list[str]:
    return page.eval_on_selector_all("#lines li", "items => items.map(li => li.textContent)")


def wait_status(page: Page, text: str) -> None:
    page.wait_for_function(
        "text => document.querySelector('#status').textContent === text", arg=text, timeout=WAIT_MS
    )


def test_ui_runs_tasks_from_its_sidebar_and_shows_lines_live_and_a_failure(
    served: tuple[DaemonProcess, BridgeProcess], page: Page
) -> None:
    """The UI loads get-current-config and navigation, starts a task from the sidebar, shows its
    lines live and its completion; then a failing task's lines and a visible failure line."""
    daemon, bridge = served
    open_ui(page, bridge)
    assert page.text_content("#app-name") == "DUFT (configurable)"

    page.click('#tasks button[data-task="SAMPLE"]')
    page.wait_for_function(
        """() => document.querySelector('#status').textContent === 'running'
              && document.querySelector('#dot').dataset.running === 'true'
              && document.querySelector('#lines').textContent.includes('Daenerys: step 1 of')""",
        timeout=WAIT_MS,
    )
    wait_status(page, "complete")
    shown = lines(page)
    assert "Sample Data Task completed for Daenerys." in shown
    steps = [line for line in shown if line.startswith("Daenerys: step")]
    assert steps == [f"Daenerys: step {i} of 10" for i in range(1, 11)]  # in order, all
    assert page.get_attribute("#dot", "data-running") == "false"

    page.click('#tasks button[data-task="SAMPLE-ERROR"]')
    wait_status(page, "error")
    shown = lines(page)
    assert any("Simulated error at step 5" in line for line in shown)
    assert shown[-1].startswith("SAMPLE-ERROR failed: ")
    assert page.text_content("#error") == ""
    assert [run["state"] for run in daemon.request("runs")["runs"]] == ["failed", "succeeded"]


def test_ui_opened_mid_run_shows_the_run_at_once(
    served: tuple[DaemonProcess, BridgeProcess], site: Path, page: Page
) -> None:
    """A page opened while a run is going shows it before the run writes another line."""
    daemon, bridge = served
    run_id = daemon.submit("GATED")["run"]["id"]
    read_note(site, "ready", run_id)  # the run is running and waits for the gate
    open_ui(page, bridge)
    page.wait_for_function(
        """() => document.querySelector('#status').textContent === 'running'
              && document.querySelector('#dot').dataset.running === 'true'""",
        timeout=WAIT_MS,
    )
    assert any(line.startswith(f"GATED is running (run {run_id}") for line in lines(page))
    open_gate(site, run_id)
    wait_status(page, "complete")
    assert any(line.startswith("ANA file: ") for line in lines(page))
