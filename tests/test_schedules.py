"""Scheduled data tasks: parsing, firing on time through a real daemon, skipping while the
previous run is active, reloading, and ``duft schedules``."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from dte_tools.wire import Kind, Op
from duftd.config import load_config
from tests.harness import REPO, DaemonProcess, add_script_task, wait_for

EVERY_TWO_SECONDS = {
    "second": "*/2",
    "minute": "*",
    "hour": "*",
    "day_of_month": "*",
    "month": "*",
    "day_of_week": "*",
}

# A task that runs until the test creates release-<run id> beside the config (30 s at most).
GATED = """
import os, sys, time
from pathlib import Path
from services.dte_tools.data_task_tools import initialise_data_task
environment = initialise_data_task("Gated", params={})
gate = Path(os.environ["DUFT_CONFIG_DIR"]).parent / f"release-{os.environ['DUFT_RUN_ID']}"
deadline = time.monotonic() + 30
while not gate.exists():
    if time.monotonic() > deadline:
        sys.exit(2)
    time.sleep(0.02)  # wait-ok: the gate's polling interval
environment.log_message("released")
"""


def set_schedules(config_dir: Path, schedules: dict[str, Any]) -> None:
    path = config_dir / "user" / "config.json"
    user = json.loads(path.read_text(encoding="utf-8"))
    user["scheduledDataTasks"] = schedules
    path.write_text(json.dumps(user, indent=2), encoding="utf-8")


def scheduled_runs(daemon: DaemonProcess, task: str) -> list[dict[str, Any]]:
    runs = daemon.request(Op.RUNS, task=task)["runs"]
    return [run for run in runs if run["requested_by"].startswith("schedule:")]


def duft(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The ``duft`` command line as a user runs it (the state folder comes from ``env``)."""
    command = [sys.executable, "-m", "clients.cli.main", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=REPO, env=env)


def test_schedules_load_with_warnings_for_unknown_tasks_and_errors_for_bad_cron(
    config_dir: Path,
) -> None:
    """DUFT's cron object becomes a six-field expression (seconds first, missing second
    means 0); an unknown task is a warning, a cron that can never fire an error."""
    set_schedules(
        config_dir,
        {
            "SAMPLE": {"schedule": {"cron": {"minute": "*/5", "day_of_week": "mon-fri"}}},
            "nightly": {"task": "SAMPLE-NOTEBOOK", "schedule": {"cron": "30 2 * * *"}},
            "NOPE": {"schedule": {"cron": EVERY_TWO_SECONDS}},
            "feb-31": {
                "task": "SAMPLE",
                "schedule": {"cron": {"day_of_month": "31", "month": "2"}},
            },
        },
    )
    config = load_config(config_dir)

    schedules = config.user.scheduled_data_tasks
    assert schedules["SAMPLE"].cron == "0 */5 * * * mon-fri"
    assert (schedules["nightly"].task, schedules["nightly"].cron) == (
        "SAMPLE-NOTEBOOK",
        "0 30 2 * * *",
    )
    assert "feb-31" not in schedules
    [warning] = [d for d in config.warnings if d.field == "scheduledDataTasks.NOPE"]
    assert "cannot be found" in warning.message
    [error] = [d for d in config.errors if d.field == "scheduledDataTasks.feb-31.schedule"]
    assert "never fires" in error.message


def test_schedule_fires_on_time_and_skips_while_the_run_is_active(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A ``second: "*/2"`` schedule starts a run at the even second it is due, recorded as
    requested by the schedule; the next firing, while that run is still going, is skipped
    (a notice with skipped true on the active run, no second run queued); once the run
    ends the schedule starts the next one."""
    add_script_task(config_dir, "GATED", GATED)
    set_schedules(
        config_dir,
        {"GATED": {"description": "every two seconds", "schedule": {"cron": EVERY_TWO_SECONDS}}},
    )
    daemon = daemon_factory(config_dir)

    [run] = wait_for(lambda: scheduled_runs(daemon, "GATED"), 5, "the first scheduled run")
    assert run["requested_by"] == "schedule:GATED"
    [schedule] = daemon.request(Op.SCHEDULES)["schedules"]
    due, fired = schedule["last"]["due"]["ts"], schedule["last"]["fired"]["ts"]
    assert due % 2 == 0 and 0 <= fired - due < 1 and 0 <= run["created_at"] - due < 1

    def skip_notice() -> dict[str, Any] | None:
        notices = [e for e in daemon.events(run["id"]) if e["kind"] == Kind.NOTICE]
        return notices[0] if notices else None

    notice = wait_for(skip_notice, 5, "a skipped firing recorded on the active run")
    assert notice["data"]["skipped"] is True and notice["data"]["schedule"] == "GATED"
    assert (
        f"still {daemon.request(Op.RUN, run=run['id'])['run']['state']}"
        in notice["data"]["message"]
    )
    assert len(daemon.request(Op.RUNS, task="GATED")["runs"]) == 1
    assert daemon.request(Op.HEALTH)["queued"] == 0
    assert daemon.request(Op.SCHEDULES)["schedules"][0]["last"]["outcome"] == "skipped"

    (config_dir.parent / f"release-{run['id']}").touch()
    assert daemon.wait_final(run["id"])["state"] == "succeeded"
    wait_for(lambda: len(scheduled_runs(daemon, "GATED")) == 2, 5, "the next scheduled run")


def test_reload_picks_up_changed_schedules_without_a_backlog(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A daily schedule shows its next three firings a day apart, all in the future; after
    the user's schedule changes, ``duft reload`` makes the new one fire, and firings
    missed before it are not made up."""
    set_schedules(config_dir, {"SAMPLE": {"schedule": {"cron": {"hour": "9", "minute": "0"}}}})
    daemon = daemon_factory(config_dir)
    now = datetime.now().timestamp()

    [daily] = daemon.request(Op.SCHEDULES)["schedules"]
    assert (daily["key"], daily["task"], daily["cron"]) == ("SAMPLE", "SAMPLE", "0 0 9 * * *")
    stamps = [moment["ts"] for moment in daily["next"]]
    assert now < stamps[0]
    assert all(abs(b - a - 86400) <= 3600 for a, b in itertools.pairwise(stamps))  # DST: +-1 h
    assert all("T09:00:00" in moment["iso"] for moment in daily["next"])

    set_schedules(config_dir, {"SAMPLE": {"schedule": {"cron": EVERY_TWO_SECONDS}}})
    reloaded_at = datetime.now().timestamp()
    reloaded = duft(daemon.env, "reload")
    assert reloaded.returncode == 0 and "reloaded " in reloaded.stdout, reloaded.stderr

    [fast] = daemon.request(Op.SCHEDULES)["schedules"]
    assert fast["cron"] == "*/2 * * * * *" and fast["next"][0]["ts"] > reloaded_at
    [run] = wait_for(lambda: scheduled_runs(daemon, "SAMPLE"), 5, "the reloaded schedule to fire")
    assert run["created_at"] > reloaded_at


def test_duft_schedules_names_the_time_zone_and_next_firings(
    config_dir: Path, daemon_factory: Callable[..., DaemonProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``duft schedules`` states the machine's time zone and lists each schedule's next
    firings in it (here Asia/Kathmandu, UTC+05:45); ``--json`` gives the same data, and
    with no daemon it reads the config and says so."""
    monkeypatch.setenv("TZ", "Asia/Kathmandu")
    set_schedules(
        config_dir,
        {
            "morning": {
                "task": "SAMPLE",
                "description": "every morning",
                "schedule": {"cron": {"hour": "9", "minute": "0"}},
            }
        },
    )
    daemon = daemon_factory(config_dir)

    text = duft(daemon.env, "schedules")
    assert text.returncode == 0, text.stderr
    assert "time zone: Asia/Kathmandu (UTC+05:45)" in text.stdout
    assert "morning: task SAMPLE, cron '0 0 9 * * *' - every morning" in text.stdout
    assert text.stdout.count("T09:00:00+05:45") == 3

    data = json.loads(duft(daemon.env, "schedules", "--json", "--count", "2").stdout)
    assert data["timezone"] == "Asia/Kathmandu" and data["utc_offset"] == "+05:45"
    [item] = data["schedules"]
    assert [m["iso"][11:] for m in item["next"]] == ["09:00:00+05:45"] * 2
    assert all(datetime.fromisoformat(m["iso"]).timestamp() == m["ts"] for m in item["next"])

    no_daemon = {
        **daemon.env,
        "DUFT_STATE_DIR": str(config_dir.parent / "no-daemon"),
        "DUFT_CONFIG_DIR": str(config_dir),
        "TZ": "Asia/Kathmandu",
    }
    offline = duft(no_daemon, "schedules")
    assert offline.returncode == 0 and "no daemon running" in offline.stdout
    assert "Asia/Kathmandu" in offline.stdout and "T09:00:00+05:45" in offline.stdout
