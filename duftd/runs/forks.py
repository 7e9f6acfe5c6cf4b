"""duftd's end of the script fork server (:mod:`dte_tools.forkserver`).

Script workers are forked, ready, from one process that has imported what they need,
instead of each starting Python and importing pyzmq and the task tools (~35 ms of CPU a
run). Only where workers get a cgroup each: under a subreaper launcher a worker must be
the launcher's child, so there workers are started as before.

A forked worker is the server's child, not duftd's, so the server reports each exit
status. Should the server itself end (killed), the workers it forked can no longer
report theirs: they are killed and recorded as such, and the next worker is forked from a
new server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import structlog

from duftd import spawn

log = structlog.get_logger("duftd.forks")

FORK_SERVER = [sys.executable, "-m", "dte_tools.forkserver"]
MAX_MESSAGE_BYTES = 4096


@dataclass(eq=False)
class ForkedProcess:
    """A worker the fork server made; ``returncode`` is set when the server reports it."""

    pid: int
    returncode: int | None = None


class ForkServer:
    """One running fork server: forks workers, and takes in their exit statuses."""

    def __init__(self, process: asyncio.subprocess.Process, connection: socket.socket) -> None:
        self._process = process
        self._connection = connection
        self._replies: deque[asyncio.Future[ForkedProcess]] = deque()
        self._children: dict[int, ForkedProcess] = {}
        self.running = True
        connection.setblocking(False)
        asyncio.get_running_loop().add_reader(connection.fileno(), self._receive)

    @classmethod
    async def start(cls, env: dict[str, str], cwd: Path) -> ForkServer:
        """Start a server; its errors, if it ever has any, go to duftd's own stderr."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        nothing = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            process = await spawn.start_worker(
                [*FORK_SERVER, str(theirs.fileno())],
                cwd,
                env,
                stdin=nothing,
                stdout=sys.stderr.fileno(),
                stderr=sys.stderr.fileno(),
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
            os.close(nothing)
        return cls(process, ours)

    async def fork(
        self, env: dict[str, str], cwd: Path, stdin: int, stdout: int, stderr: int, channel: int
    ) -> ForkedProcess:
        """A new worker holding these pipe ends, in its own session, waiting for its job."""
        if not self.running:
            raise OSError("the script fork server has ended")
        request = json.dumps({"env": env, "cwd": str(cwd)}).encode()
        reply = asyncio.get_running_loop().create_future()
        socket.send_fds(self._connection, [request], [stdin, stdout, stderr, channel])
        self._replies.append(reply)
        return await reply

    def _receive(self) -> None:
        while True:
            try:
                data = self._connection.recv(MAX_MESSAGE_BYTES)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._ended()
                return
            message = json.loads(data)
            if "exit" in message:
                child = self._children.pop(message["exit"], None)
                if child is not None:
                    child.returncode = message["status"]
                continue
            reply = self._replies.popleft()
            if "pid" in message:
                # Known before the reply is awaited: its exit may be in this same read.
                child = self._children[message["pid"]] = ForkedProcess(message["pid"])
                reply.set_result(child)
            else:
                reply.set_exception(OSError(message.get("error", "the fork server refused")))

    def _ended(self) -> None:
        """The server is gone: nothing it forked can report an exit any more."""
        if not self.running:
            return
        self.running = False
        asyncio.get_running_loop().remove_reader(self._connection.fileno())
        self._connection.close()
        while self._replies:
            self._replies.popleft().set_exception(OSError("the script fork server ended"))
        if self._children:
            log.error(
                "the script fork server ended; the workers it forked are killed, since "
                "their exit status can no longer be read",
                workers=len(self._children),
            )
        for child in self._children.values():
            spawn.signal_group(child.pid, signal.SIGKILL)
            child.returncode = -signal.SIGKILL
        self._children.clear()

    async def close(self) -> None:
        """Stop the server (after every worker it forked has been reaped)."""
        if self.running:
            self._ended()
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()
        await spawn.wait_exit(self._process)
