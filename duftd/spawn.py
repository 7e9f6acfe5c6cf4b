"""The only place duftd starts or signals a process.

Every worker gets its own session (and so its own process group), so one signal to the
group reaches the task and everything it started, a notebook's kernel included.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

# Environment passed through to workers: what programs need to behave, nothing secret.
PASS_THROUGH = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
# Longest line read from a worker's stdout/stderr before it is cut into pieces.
LINE_LIMIT = 64 * 1024


def worker_environment(extra: dict[str, str]) -> dict[str, str]:
    """A minimal environment: pass-through basics plus the worker's duft variables."""
    env = {name: os.environ[name] for name in PASS_THROUGH if name in os.environ}
    env["PYTHONUNBUFFERED"] = "1"  # so output reaches the daemon line by line, as it happens
    env.update(extra)
    return env


async def start_worker(
    argv: list[str], cwd: Path, env: dict[str, str]
) -> asyncio.subprocess.Process:
    """Start a worker in a new session with its output piped to the daemon."""
    return await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        limit=LINE_LIMIT,
    )


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to a whole process group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still exists (signal 0 probes without sending)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def process_environ(pid: int) -> bytes:
    """The environment a process was started with ('' when unreadable or gone)."""
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""
