"""The only place duftd starts or signals a process.

Every worker gets its own session (and so its own process group), so one signal to the
group reaches the task and everything it started. Where the machine allows, each worker
also gets its own cgroup (:mod:`duftd.containment`), which holds every process it starts
however it detaches, so ending a run ends them all; elsewhere each worker runs under a
subreaper launcher (:mod:`duftd.reaper`) that does the same when the worker ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from dte_tools.wire import ENV_WORKER_ID
from duftd import reaper
from duftd.containment import CgroupTree

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
# Where workers are started (start_worker).
_STARTER = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="duftd-start")


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


class WorkerProcess:
    """A started worker: its pid, the writing end of its stdin (where its job goes), and
    its exit status once it is reaped.

    A thread of its own waits for it and reaps it, as asyncio's child watcher did; it was
    started in a thread too (:func:`start_worker`)."""

    def __init__(self, popen: subprocess.Popen[bytes], stdin: int) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stdin = stdin
        threading.Thread(target=popen.wait, name=f"reap-{popen.pid}", daemon=True).start()

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (a negative one: killed by that signal), else None."""
        return self._popen.returncode

    def close_stdin(self) -> None:
        if self.stdin >= 0:
            os.close(self.stdin)
            self.stdin = -1


async def start_worker(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    stdout: int,
    stderr: int,
    pass_fds: tuple[int, ...] = (),
) -> WorkerProcess:
    """Start a worker in a new session, its output into the given pipes, ``pass_fds``
    inherited, and its stdin a pipe (where it is handed its job).

    In a thread: the fork and exec hold their caller for 0.5-15 ms under load, which on
    the loop fell into another run's hand-over or end (a trivial script's end took 20 ms
    longer while the next spare started). Threads of their own, so that nothing else run
    in threads (a connection test waiting out its timeout) can hold up a worker's start."""
    if _reaper:
        argv = [sys.executable, "-I", reaper.__file__, *argv]
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_STARTER, _start, argv, cwd, env, stdout, stderr, pass_fds)


def _start(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    stdout: int,
    stderr: int,
    pass_fds: tuple[int, ...],
) -> WorkerProcess:
    job_read, job_write = os.pipe2(os.O_CLOEXEC)
    try:
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=job_read,
            stdout=stdout,
            stderr=stderr,
            pass_fds=pass_fds,
            start_new_session=True,
        )
    except BaseException:
        os.close(job_write)
        raise
    finally:
        os.close(job_read)
    os.set_blocking(job_write, False)
    # The worker may be importing already, but it runs no task code before its job arrives
    # on stdin, which is written only after this adopt: all the task starts is inside.
    if _cgroups is not None and ENV_WORKER_ID in env:
        _cgroups.adopt(env[ENV_WORKER_ID], popen.pid)
    if _reaper:
        _launchers.add(popen.pid)
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, popen.pid, WORKER_NICENESS)
    return WorkerProcess(popen, job_write)


async def write_all(fd: int, data: bytes) -> None:
    """Write ``data`` into a non-blocking pipe, waiting whenever it is full."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await _writable(fd)


async def _writable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    room = loop.create_future()
    loop.add_writer(fd, lambda: room.done() or room.set_result(None))
    try:
        await room
    finally:
        loop.remove_writer(fd)


async def wait_exit(process: WorkerProcess) -> int:
    """The process's exit status, as soon as it exits.

    A pidfd says when the process itself is gone (its output pipes may stay open longer,
    held by a leftover child).
    """
    try:
        pidfd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        pidfd = None
    code = None
    if pidfd is not None:
        loop = asyncio.get_running_loop()
        gone = loop.create_future()
        loop.add_reader(pidfd, lambda: gone.done() or gone.set_result(None))
        try:
            await gone
            code = exit_status(pidfd)
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
    # Else its reaping thread was first, or is a moment from it (nothing to await).
    while code is None and process.returncode is None:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    _launchers.discard(process.pid)
    return code if code is not None else process.returncode  # type: ignore[return-value]


def exit_status(pidfd: int) -> int | None:
    """The exit status of the exited child behind ``pidfd`` (minus the signal that killed
    it), read without reaping it: the child watcher still reaps it, and took 1-2 ms more
    to say. None if the watcher was first."""
    try:
        seen = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOWAIT | os.WNOHANG)
    except ChildProcessError:
        return None
    if seen is None:
        return None
    return seen.si_status if seen.si_code == os.CLD_EXITED else -seen.si_status


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
