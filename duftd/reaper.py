"""A worker's launcher where no cgroup can contain it: a child subreaper that kills every
process the worker leaves behind.

    python reaper.py ARGV...

As a subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), this process receives every orphaned
descendant of the worker, however it detached (``setsid``, a scrubbed environment), instead
of init. When the worker ends, whatever it left is SIGKILLed, level by level, until no
descendant is left; then the launcher exits as the worker did.

The worker runs in a process group of its own, so duftd's signals to the launcher's group
reach only the launcher: SIGTERM is passed on to the worker's group, and SIGUSR1 (what
duftd sends where it would SIGKILL a run) kills the worker's group and every descendant
at once. A SIGKILL would end the launcher itself and let the orphans go.

Run by path with ``python -I``, so it uses only the standard library.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
KILL_NOW = signal.SIGUSR1


def children() -> list[int]:
    """Pids of this process's children (dead ones not yet reaped included)."""
    me = str(os.getpid())
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == me:  # the field after the state is the ppid
            found.append(int(proc.name))
    return found


def kill_descendants() -> None:
    """SIGKILL every child and reap it; its orphans become children in turn, until none."""
    while pids := children():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for _ in pids:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break


def exit_like(code: int) -> None:
    """Exit with the worker's status: its exit code, or death by the same signal."""
    if code < 0:
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # their handlers cannot be set
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code if code >= 0 else 128 - code)


def main(argv: list[str]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"duftd launcher: not a subreaper (errno {ctypes.get_errno()})", file=sys.stderr)
    # Descriptors duftd passed (the worker's event channels) go on to the worker.
    worker = subprocess.Popen(argv, process_group=0, close_fds=False)
    killed = False

    def pass_on(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signum)

    def kill_now(signum: int, frame: object) -> None:
        nonlocal killed
        killed = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        kill_descendants()  # the worker too: wait() below then cannot tell how it ended

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    signal.signal(KILL_NOW, kill_now)
    code = worker.wait()
    kill_descendants()
    exit_like(-signal.SIGKILL if killed else code)


if __name__ == "__main__":
    main(sys.argv[1:])
