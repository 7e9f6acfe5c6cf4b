"""The bridge's page in a real headless Chromium: run tasks, watch them live, reload mid-run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from dte_tools.wire import Op
from tests import test_bridge_api as shared
from tests.harness import REPO, DaemonProcess, add_script_task
from tests.test_bridge_api import BridgeProcess

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = REPO / "artifacts" / "bridge.png"
WAIT_MS = 20_000

# Exits 0 after logging an error: the page must say "finished with errors", not "succeeded".
ERRORS_TASK = """\
import sys
from services.dte_tools.data_task_tools import find_json_arg, initialise_data_task

environment = initialise_data_task("Logs an error", params=find_json_arg(sys.argv))
environment.log_error("row 7 could not be loaded")
environment.log_message("done anyway")
"""

bridge_factory = shared.bridge_factory  # the fixture, shared with the API tests

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"needs Debian's {CHROMIUM}")


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def served(
    config_dir: Path,
    daemon_factory: Callable[..., DaemonProcess],
    bridge_factory: Callable[..., BridgeProcess],
) -> tuple[DaemonProcess, BridgeProcess]:
    """A daemon whose config has one extra task that logs an error and exits 0, and its bridge."""
    add_script_task(config_dir, "LOGS-ERROR", ERRORS_TASK, description="Logs an error, exits 0.")
    daemon = daemon_factory(config_dir)
    return daemon, bridge_factory(daemon.state_dir)


def shown_seqs(page: Page) -> list[int]:
    """Sequence numbers of the log lines on the page, top to bottom."""
    return page.eval_on_selector_all("#log li", "items => items.map(li => Number(li.dataset.seq))")


def displayed(events: list[dict[str, Any]]) -> list[int]:
    """Sequence numbers of the stored events the page shows as log lines (all but progress)."""
    return [event["seq"] for event in events if event["kind"] != "progress"]


def select_task(page: Page, task_id: str) -> None:
    page.click(f'#task-list button[data-task="{task_id}"]')
    page.wait_for_function(
        "id => document.querySelector('#task-id').textContent === id", arg=task_id, timeout=WAIT_MS
    )


def run_id_on_page(page: Page) -> int:
    page.wait_for_function("() => /run=\\d+/.test(location.hash)", timeout=WAIT_MS)
    return int(page.evaluate("() => new URLSearchParams(location.hash.slice(1)).get('run')"))


def wait_state(page: Page, text: str) -> None:
    page.wait_for_function(
        "text => document.querySelector('#run-state').textContent === text",
        arg=text,
        timeout=WAIT_MS,
    )


def test_page_runs_tasks_live_and_shows_the_whole_log_after_a_reload(
    served: tuple[DaemonProcess, BridgeProcess], browser: Browser
) -> None:
    """Run SAMPLE with changed parameters and watch it live; reload mid-run of SLOW-SAMPLE and still
    see every line once."""
    daemon, bridge = served
    page = browser.new_page(viewport={"width": 1366, "height": 768})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on(
        "requestfailed",  # streams cut by the reload are "aborted"; anything else is a problem
        lambda request: (
            "ERR_ABORTED" not in (request.failure or "")
            and problems.append(f"{request.url}: {request.failure}")
        ),
    )
    page.goto(f"{bridge.url}/?token={bridge.token}")  # the URL duft-bridge prints
    page.wait_for_selector("body[data-ready]", timeout=WAIT_MS)
    assert "token=" not in page.url  # the token went into a cookie, out of the address

    # SAMPLE with changed parameters: lines and progress arrive while it runs.
    select_task(page, "SAMPLE")
    assert page.input_value("#param-name") == "Daenerys"  # defaults are shown
    page.fill("#param-name", "Arya")
    page.fill("#param-steps", "6")
    page.fill("#param-sleep_time", "0.2")
    page.click("#run-button")
    page.wait_for_function(
        """() => document.querySelector('#run-state').textContent === 'running'
              && document.querySelector('#progress').value >= 2
              && document.querySelector('#log').textContent.includes('Arya: step 2 of 6')""",
        timeout=WAIT_MS,
    )
    moving = page.eval_on_selector("#progress", "bar => [bar.value, bar.max]")
    assert 2 <= moving[0] < 6 and moving[1] == 6
    wait_state(page, "succeeded")
    run_id = run_id_on_page(page)
    assert page.eval_on_selector("#progress", "bar => [bar.value, bar.max]") == [6, 6]
    assert shown_seqs(page) == displayed(daemon.events(run_id))
    assert "Sample Data Task completed for Arya." in page.text_content("#log")
    assert daemon.request(Op.RUN, run=run_id)["run"]["params"]["steps"] == 6
    page.wait_for_selector(f'#run-list button[data-run="{run_id}"]', timeout=WAIT_MS)

    # An exit code of 0 with a logged error is shown as such.
    select_task(page, "LOGS-ERROR")
    page.click("#run-button")
    wait_state(page, "finished with errors")
    assert "1 error(s)" in page.text_content("#run-outcome")

    # SLOW-SAMPLE is hidden: show hidden tasks, start it, reload the page mid-run.
    page.check("#show-hidden")
    page.wait_for_selector('#task-list button[data-task="SLOW-SAMPLE"]', timeout=WAIT_MS)
    select_task(page, "SLOW-SAMPLE")
    page.fill("#param-steps", "20")
    page.fill("#param-sleep_time", "0.2")
    page.click("#run-button")
    page.wait_for_function(
        "() => document.querySelectorAll('#log li').length >= 8", timeout=WAIT_MS
    )
    slow_id = run_id_on_page(page)
    page.reload()
    page.wait_for_selector("body[data-ready]", timeout=WAIT_MS)
    assert daemon.request(Op.RUN, run=slow_id)["run"]["state"] == "running"  # reloaded mid-run
    wait_state(page, "succeeded")
    seqs = shown_seqs(page)
    assert len(seqs) == len(set(seqs))
    assert seqs == displayed(daemon.events(slow_id))
    assert page.text_content("#task-id") == "SLOW-SAMPLE"

    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    assert problems == []
    page.close()
