"""Containment: a run's descendants die with it however they detach. A child that starts
its own session and scrubs its environment (so neither the process group nor the
DUFT_WORKER_ID marker finds it) is gone soon after its run ends, script or notebook,
finished or cancelled, with a cgroup per worker and with the subreaper launcher."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dte_tools.wire import Op
from duftd.containment import CgroupTree, cgroup2_mount, own_cgroup
from tests.harness import DaemonProcess, add_script_task, meet_dir, wait_for, wait_gone
from tests.test_notebooks import add_notebook_task, code

# Starts a child in a session of its own with nothing of the run's environment, which
# sleeps for ten minutes; the child's pid goes to a note the test reads.
DETACH = """\
import json, os, subprocess, sys
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(600)  # wait-ok: the escapee"],
    start_new_session=True,
    env={"PATH": "/usr/bin:/bin"},
    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
meet = os.path.join(os.path.dirname(os.environ["DUFT_CONFIG_DIR"]), "meet")
os.makedirs(meet, exist_ok=True)
with open(os.path.join(meet, "child-" + os.environ["DUFT_RUN_ID"] + ".json"), "w") as f:
    json.dump(child.pid, f)
"""
# The same, then a worker that ignores SIGTERM and hangs, so only SIGKILL ends it.
DETACH_AND_HANG = (
    DETACH
    + """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    time.sleep(3600)  # wait-ok: a hung task is the point
"""
)
GONE_WITHIN_S = 5.0
MECHANISMS = {
    "cgroup": pytest.param(
        ("--containment", "auto"),
        marks=pytest.mark.skipif(
            CgroupTree.find() is None,
            reason="no writable cgroup v2 with cgroup.kill on this machine",
        ),
    ),
    "subreaper": pytest.param(("--containment", "subreaper")),
}
LOGGED = {"cgroup": "cgroup v2 per worker", "subreaper": "a subreaper launcher per worker"}


def escapee(config_dir: Path, run_id: int) -> int:
    """The pid of the detached child run ``run_id`` started (it is alive when noted)."""
    note = meet_dir(config_dir) / f"child-{run_id}.json"
    return int(wait_for(lambda: note.exists() and note.read_text(), 10, "the child's pid"))


@pytest.mark.parametrize("mechanism", MECHANISMS.values(), ids=MECHANISMS.keys())
@pytest.mark.parametrize("kind", ["script", "notebook"])
def test_detached_child_with_scrubbed_environment_dies_with_its_run(
    kind: str,
    mechanism: tuple[str, ...],
    config_dir: Path,
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    """The run succeeds, and its setsid child with no DUFT_* variables is gone within 5 s
    of the run's end (the daemon logged its containment at start)."""
    if kind == "script":
        add_script_task(config_dir, "DETACH", DETACH)
    else:
        add_notebook_task(config_dir, "DETACH", [code(DETACH)])
    daemon = daemon_factory(config_dir, *mechanism)
    name = "subreaper" if "subreaper" in mechanism else "cgroup"
    assert LOGGED[name] in daemon.log_text()
    run_id = daemon.submit("DETACH")["run"]["id"]
    assert daemon.wait_final(run_id, 60)["state"] == "succeeded"
    wait_gone([escapee(config_dir, run_id)], GONE_WITHIN_S)


@pytest.mark.parametrize("mechanism", MECHANISMS.values(), ids=MECHANISMS.keys())
def test_cancelled_run_that_ignores_sigterm_takes_its_detached_child_along(
    mechanism: tuple[str, ...], config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A worker that ignores SIGTERM is SIGKILLed after the grace period, and its detached
    child with a scrubbed environment goes with it."""
    add_script_task(config_dir, "HANG", DETACH_AND_HANG)
    daemon = daemon_factory(config_dir, *mechanism, "--cancel-grace", "0.5")
    run_id = daemon.submit("HANG")["run"]["id"]
    child = escapee(config_dir, run_id)
    daemon.request(Op.CANCEL, run=run_id)
    run = daemon.wait_final(run_id)
    assert run["state"] == "cancelled" and "SIGKILL" in run["reason"]
    wait_gone([child], GONE_WITHIN_S)


@pytest.mark.parametrize("mechanism", MECHANISMS.values(), ids=MECHANISMS.keys())
def test_task_that_sigkills_itself_fails_with_sigkill_as_reason(
    mechanism: tuple[str, ...], config_dir: Path, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    """A worker that dies by SIGKILL is reported as killed by SIGKILL, under either
    mechanism: the subreaper launcher dies the same way (it cannot reset SIGKILL's handler,
    so it must not try) instead of exiting 1 with a traceback."""
    add_script_task(
        config_dir, "SELFKILL", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
    )
    daemon = daemon_factory(config_dir, *mechanism)
    run_id = daemon.submit("SELFKILL")["run"]["id"]
    run = daemon.wait_final(run_id, 60)
    assert run["state"] == "failed", run
    assert (run["exit_code"], run["reason"]) == (-9, "killed by signal SIGKILL"), run


def test_cgroup_mount_and_own_path_are_read_from_proc() -> None:
    """The cgroup v2 mount is found in /proc/mounts text wherever it is, and the daemon's
    own cgroup from the 0:: line of /proc/self/cgroup."""
    mounts = (
        "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"
        "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    )
    assert cgroup2_mount(mounts) == Path("/sys/fs/cgroup/unified")
    assert cgroup2_mount("proc /proc proc rw 0 0\n") is None
    assert own_cgroup("4:memory:/x\n0::/user.slice/duftd.service\n") == "/user.slice/duftd.service"
