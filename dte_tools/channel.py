"""A worker's durable event channel: records written straight into a pipe duftd reads.

duftd creates one pipe per worker process and keeps its reading end; the worker is
started holding the writing end. Each event is one record, a line of JSON
``[kind, ts, data]`` (JSON has no raw newline), written with a synchronous ``os.write``
under a per-process lock. Other processes may share the pipe (a forked child, a program
the task started): a write of up to ``PIPE_BUF`` bytes is never mixed with another's, so a
longer record goes as pieces of that size, each a line ``+PID:...`` (``=PID:...`` the last),
which duftd puts back together per writer. When :meth:`EventChannel.emit` returns, the
bytes are in the kernel's pipe buffer, which belongs to duftd: whatever the process does
next (``os._exit``, SIGKILL, a crash of the interpreter) they are read and stored. A full
pipe blocks the writer: a task that logs faster than duftd stores is slowed down, never
cut short.

The task's own ``sys.stdout``/``sys.stderr`` writes go through the same channel
(:class:`ChannelStream`), so a log line and a traceback are stored in the order the task
wrote them. Output written to file descriptors 1 and 2 directly (a subprocess, a C
library) still reaches duftd through the worker's stdout and stderr pipes.

Standard library only: task code imports this.
"""

from __future__ import annotations

import io
import json
import os
import select
import sys
import threading
import time
from typing import Any

from dte_tools.wire import ENV_CHANNEL, Kind

# duftd refuses (and counts as lost) a longer record; longer text fields are cut first.
MAX_RECORD_BYTES = 1024 * 1024
# A longer text field of one event is cut to this; even JSON-escaped (6 bytes a character
# at worst) the record stays under MAX_RECORD_BYTES.
MAX_FIELD_CHARS = MAX_RECORD_BYTES // 8
# A longer stdout/stderr line is sent in pieces of this many characters.
LINE_PIECE_CHARS = 64 * 1024
# Writes of up to this many bytes into a pipe are atomic (POSIX), whoever else writes.
PIPE_BUF = select.PIPE_BUF
PIECE, LAST_PIECE = b"+", b"="

_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
_string = json.encoder.encode_basestring_ascii


def encode_record(kind: str, data: dict[str, Any]) -> bytes:
    """One framed record; an over-long text field is cut to its head and a note.

    ``kind`` is one of :class:`Kind`'s names (no character JSON would escape), so only the
    data goes through the encoder: the record is built about twice as fast."""
    record = f'["{kind}",{time.time()!r},{_encode(data)}]\n'.encode()
    if len(record) <= MAX_RECORD_BYTES:
        return record
    cut = {key: cut_field(value) for key, value in data.items()}
    record = f'["{kind}",{time.time()!r},{_ENCODER.encode(cut)}]\n'.encode()
    if len(record) <= MAX_RECORD_BYTES:
        return record
    # Large non-text data: say so rather than send what duftd would refuse.
    note = {"message": f"a {kind} event of {len(record)} bytes was too large to send"}
    return f'["{Kind.NOTICE}",{time.time()!r},{_ENCODER.encode(note)}]\n'.encode()


def _encode(data: dict[str, Any]) -> str:
    """JSON of an event's data; all-text data (log lines, output) without the encoder's
    per-call cost, which dominated a task's log call."""
    if all(type(value) is str for value in data.values()):
        return "{" + ",".join(f"{_string(k)}:{_string(v)}" for k, v in data.items()) + "}"
    return _ENCODER.encode(data)


def pieces(record: bytes) -> list[bytes]:
    """A record longer than ``PIPE_BUF`` as lines of at most ``PIPE_BUF`` bytes, each tagged
    with this process's id (``+`` continued, ``=`` the last) for duftd to join."""
    pid = b"%d:" % os.getpid()
    size = PIPE_BUF - len(pid) - 2  # the tag and the newline
    body = record[:-1]  # without its newline
    chunks = [body[start : start + size] for start in range(0, len(body), size)]
    return [
        (LAST_PIECE if n == len(chunks) - 1 else PIECE) + pid + chunk + b"\n"
        for n, chunk in enumerate(chunks)
    ]


def cut_field(value: Any) -> Any:
    """A text field short enough to travel (its head and a note), anything else as it is."""
    if not isinstance(value, str) or len(value) <= MAX_FIELD_CHARS:
        return value
    return f"{value[:MAX_FIELD_CHARS]}... [{len(value) - MAX_FIELD_CHARS} more characters cut]"


class EventChannel:
    """The writing end of this process's channel; ``emit`` returns once duftd holds the bytes."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self.broken = False  # duftd closed its end: nobody is left to store anything

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        record = encode_record(kind, data)
        with self._lock:
            if self.broken:
                return
            try:
                if len(record) <= PIPE_BUF:
                    self._write(record)
                else:
                    for piece in pieces(record):
                        self._write(piece)
            except (BrokenPipeError, OSError):
                self.broken = True

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def after_fork(self) -> None:
        """A forked child gets a fresh lock (the parent's may have been held by another thread)."""
        self._lock = threading.Lock()


class ChannelStream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of a task: each line becomes a stdout/stderr event on the
    channel, in order with the task's log lines; a partial line is sent when flushed."""

    def __init__(self, channel: EventChannel, kind: str, original: io.TextIOBase) -> None:
        super().__init__()
        self._channel = channel
        self._kind = kind
        self._original = original
        self._partial: list[str] = []
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def buffer(self) -> Any:
        """Bytes written here go to the file descriptor (and duftd's output pipe) directly."""
        return self._original.buffer  # type: ignore[attr-defined]

    def fileno(self) -> int:
        return self._original.fileno()

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "strict"

    def isatty(self) -> bool:
        return False

    def reconfigure(self, **options: Any) -> None:
        """Accepted and ignored (tasks call ``sys.stdout.reconfigure(encoding="utf-8")``):
        lines always travel as text, line by line."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            if "\n" not in text:
                if text:
                    self._partial.append(text)
                if sum(map(len, self._partial)) > LINE_PIECE_CHARS:
                    self._send("".join(self._partial))
                    self._partial.clear()
                return len(text)
            head, *middle, tail = text.split("\n")
            self._send("".join([*self._partial, head]))
            for line in middle:
                self._send(line)
            self._partial = [tail] if tail else []
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._partial:
                self._send("".join(self._partial))
                self._partial.clear()

    def _send(self, line: str) -> None:
        line = line.rstrip("\r")
        for start in range(0, max(len(line), 1), LINE_PIECE_CHARS):
            self._channel.emit(self._kind, {"text": line[start : start + LINE_PIECE_CHARS]})


_current: EventChannel | None = None


def adopt(fd: int, capture_output: bool) -> EventChannel:
    """Make ``fd`` this process's channel; with ``capture_output``, route ``sys.stdout`` and
    ``sys.stderr`` through it.

    The descriptor is closed on exec, but the environment tells a program the task starts
    where to open the same pipe (:func:`current`), so a helper script's lines are durable
    too while this process lives."""
    global _current
    os.set_inheritable(fd, False)
    _current = EventChannel(fd)
    os.register_at_fork(after_in_child=_current.after_fork)
    os.environ[ENV_CHANNEL] = f"/proc/{os.getpid()}/fd/{fd}:{os.fstat(fd).st_ino}"
    if capture_output:
        sys.stdout = ChannelStream(_current, Kind.STDOUT, sys.stdout)  # type: ignore[arg-type]
        sys.stderr = ChannelStream(_current, Kind.STDERR, sys.stderr)  # type: ignore[arg-type]
    return _current


def current() -> EventChannel | None:
    """This process's channel: the one duftd gave it, else its parent's, opened through
    ``/proc`` while that parent lives (None when there is neither)."""
    if _current is None and ENV_CHANNEL in os.environ:
        _open_inherited(os.environ[ENV_CHANNEL])
    return _current


def _open_inherited(where: str) -> None:
    path, _, inode = where.rpartition(":")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return  # the process holding it is gone
    if str(os.fstat(fd).st_ino) != inode:  # its number now names something else
        os.close(fd)
        return
    adopt(fd, capture_output=False)
