"""The only place duftd starts or signals a process.

Every worker gets its own session (and so its own process group), so one signal to the
group reaches the task and everything it started. Where the machine allows, each worker
also gets its own cgroup (:mod:`duftd.containment`), which holds every process it starts
however it detaches, so ending a run ends them all; elsewhere each worker runs under a
subreaper launcher (:mod:`duftd.reaper`) that does the same when the worker ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from dte_tools.wire import ENV_WORKER_ID
from duftd import reaper
from duftd.containment import CgroupTree
from duftd.fd_wait import readable

# Environment passed through to workers: what programs need to behave, nothing secret.
PASS_THROUGH = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
# Workers run a little below the daemon's priority: tasks are batch work, while the
# daemon must keep answering clients and storing events however hard they run.
WORKER_NICENESS = 5

# How workers are contained, chosen by contain_workers() at daemon start: the cgroup tree
# they are put in, or else subreaper launchers (whose live pids are kept).
_cgroups: CgroupTree | None = None
_reaper = False
_launchers: set[int] = set()
# Not the default executor, which connection tests can fill.
_containing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duftd-containment")


def contain_workers(subreaper: bool = False) -> str:
    """Choose how workers are contained (once, at start): a cgroup each where the machine
    allows and ``subreaper`` is not asked for, else a subreaper launcher each; returns
    what was chosen."""
    global _cgroups, _reaper
    _cgroups = None if subreaper else CgroupTree.find()
    _reaper = _cgroups is None
    if _cgroups is not None:
        return f"cgroup v2 per worker under {_cgroups.base}"
    why = "asked for" if subreaper else "no writable cgroup v2 with cgroup.kill here"
    return f"a subreaper launcher per worker ({why})"


def release_containment() -> None:
    """Remove the (empty) cgroups this daemon made, at its stop."""
    if _cgroups is not None:
        _cgroups.close()


def worker_environment(extra: dict[str, str]) -> dict[str, str]:
    """A minimal environment: pass-through basics plus the worker's duft variables."""
    env = {name: os.environ[name] for name in PASS_THROUGH if name in os.environ}
    env["PYTHONUNBUFFERED"] = "1"  # so output reaches the daemon line by line, as it happens
    env.update(extra)
    return env


def contained_by_cgroups() -> bool:
    """Whether workers get a cgroup each (else each runs under a subreaper launcher)."""
    return _cgroups is not None


async def start_worker(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    stdin: int,
    stdout: int,
    stderr: int,
    pass_fds: tuple[int, ...] = (),
) -> asyncio.subprocess.Process:
    """Start a worker in a new session, reading the given stdin (where it is handed its
    job), its output into the given pipes, ``pass_fds`` inherited."""
    if _reaper:
        argv = [sys.executable, "-I", reaper.__file__, *argv]
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        pass_fds=pass_fds,
        start_new_session=True,
    )
    if ENV_WORKER_ID in env:
        await contain(env[ENV_WORKER_ID], process.pid)
    if _reaper:
        _launchers.add(process.pid)
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, process.pid, WORKER_NICENESS)
    return process


async def contain(worker_id: str, pid: int) -> None:
    """Move a new worker (``pid``, its own group) into its cgroup, where workers get one.

    The worker may be importing already, but it runs no task code before its job arrives
    on stdin, which is written only after this: all the task starts is inside. Moving a
    process into a cgroup waits on the kernel (5-32 ms measured here), so it is done in a
    thread of its own while the loop goes on."""
    if _cgroups is None:
        return
    try:
        await asyncio.get_running_loop().run_in_executor(
            _containing, _cgroups.adopt, worker_id, pid
        )
    except BaseException:  # cancelled: nobody will ever hand this worker a job
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        raise


class WorkerProcess(Protocol):
    """What duftd needs of a worker's process: an asyncio one, or one the fork server made
    (:mod:`duftd.runs.forks`). ``returncode`` is set once it has exited and been reaped."""

    pid: int
    returncode: int | None


async def wait_exit(process: WorkerProcess) -> int:
    """The process's exit status, as soon as it exits.

    ``Process.wait()`` also waits for the output pipes to close, which a leftover child
    holding them could delay forever; a pidfd says when the process itself is gone.
    """
    try:
        pidfd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        pidfd = None
    if pidfd is not None:
        try:
            await readable(pidfd)
        finally:
            os.close(pidfd)
    # Its parent (asyncio's child watcher, or the fork server) reaps it a moment later,
    # and neither offers anything to await.
    while process.returncode is None:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    _launchers.discard(process.pid)
    return process.returncode


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to a whole process group; False when no process of it is left.

    A launcher's group is the launcher alone: it passes SIGTERM on, and is asked to kill
    everything of its worker instead of being SIGKILLed (which would free the orphans)."""
    if sig == signal.SIGKILL and pgid in _launchers:
        sig = reaper.KILL_NOW
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def process_environ(pid: int) -> bytes:
    """The environment a process was started with ('' when unreadable or gone)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def processes_with_env(entry: str) -> list[int]:
    """Pids of processes whose environment holds exactly ``entry`` (``NAME=value``).

    Every process of a run inherits its worker id, even one that left the run's process
    group (a Jupyter kernel starts its own session), unless it scrubbed its environment:
    the cgroup is what finds those.
    """
    needle = b"\0" + entry.encode() + b"\0"
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and needle in b"\0" + process_environ(int(proc.name)):
            found.append(int(proc.name))
    return found


def kill_worker(worker_id: str) -> int:
    """SIGKILL every process of a worker: all of its cgroup, and any process (with its
    group) carrying its marker; returns how many there were."""
    contained = _cgroups.kill(worker_id) if _cgroups is not None else set()
    marked = processes_with_env(f"{ENV_WORKER_ID}={worker_id}")
    for pid in marked:
        try:
            signal_group(os.getpgid(pid), signal.SIGKILL)
        except ProcessLookupError:
            continue
    return len(contained | set(marked))
