"""The script fork server: ``python -m dte_tools.forkserver SOCKET_FD``, started by duftd.

A script worker spends ~35 ms of CPU starting Python and importing pyzmq and the task
tools before its run. Back to back on a small machine that CPU, not the tasks, set the
pace: each run cost more CPU than ``python script.py`` itself. The fork server pays it
once: it imports what a spare imports, then forks a ready worker on request in about a
millisecond. Each child becomes what ``python -m dte_tools.spare`` is (its own session, its
pipes on 0-2 and its channel, the worker's environment and folder), runs
:func:`dte_tools.spare.main`, and ends through the interpreter's own exit, as
``python script`` does.

duftd talks to it over one SOCK_SEQPACKET unix socket. A request is the worker's JSON
(``env``, ``cwd``) with its four pipe ends attached (stdin, stdout, stderr, channel); the
reply is ``{"pid": n}`` or ``{"error": text}``, in request order. When a child ends the
server sends ``{"exit": pid, "status": code}`` (a negative code: ended by that signal),
since only a parent can read an exit status; a child's pid always reaches duftd before
its exit does. The server ends when duftd closes the socket.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import sys

import dte_tools.spare

MAX_REQUEST_BYTES = 1024 * 1024
PIPES = 4  # stdin, stdout, stderr, channel


def main(argv: list[str]) -> int:
    server = socket.socket(fileno=int(argv[1]))
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select through the wakeup fd
    gc.freeze()  # shared with every child, untouched: no copies of these pages, no scans
    while True:
        try:
            readable, _, _ = select.select([server, wake_read], [], [])
        except InterruptedError:
            continue
        if wake_read in readable:
            while _drain(wake_read):
                pass
            _report_exits(server)
        if server not in readable:
            continue
        message, fds, _, _ = socket.recv_fds(server, MAX_REQUEST_BYTES, PIPES)
        if not message:
            return 0  # duftd is gone or stopping: children finish on their own
        if len(fds) != PIPES:
            _close(fds)
            _send(server, {"error": f"expected {PIPES} pipe ends, got {len(fds)}"})
            continue
        request = json.loads(message)
        try:
            pid = os.fork()
        except OSError as error:
            _close(fds)
            _send(server, {"error": f"fork failed: {error}"})
            continue
        if pid == 0:
            return _become_worker(server, (wake_read, wake_write), request, fds)
        _close(fds)
        _send(server, {"pid": pid})


def _become_worker(
    server: socket.socket, wake: tuple[int, int], request: dict, fds: list[int]
) -> int:
    """In the child: shed the server's state, take the worker's pipes, environment and
    folder, and run as a spare does."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    server.close()
    _close(list(wake))
    os.setsid()
    stdin, stdout, stderr, channel = fds
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    return dte_tools.spare.main([sys.argv[0], str(channel)])


def _report_exits(server: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(server, {"exit": pid, "status": os.waitstatus_to_exitcode(status)})


def _drain(fd: int) -> bool:
    try:
        return bool(os.read(fd, 4096))
    except BlockingIOError:
        return False


def _send(server: socket.socket, message: dict) -> None:
    with contextlib.suppress(OSError):  # duftd is gone: the next receive ends the server
        server.send(json.dumps(message).encode())


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
