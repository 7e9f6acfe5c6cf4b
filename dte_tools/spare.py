"""The script worker: ``python -m dte_tools.spare CHANNEL_FD``, started by duftd.

It imports what every task needs (pyzmq, the bus client), often while nothing waits on
it (a warm spare), then reads its one job from stdin (:mod:`dte_tools.job`) and runs the
script exactly as ``python script ...`` would: as ``__main__``, with the script's folder
first on ``sys.path`` and the run's variables in ``os.environ``. Its events, and its
``sys.stdout``/``sys.stderr`` lines, go through the channel it was started with.

It ends the way the interpreter's exit would, without tearing the interpreter down
(:func:`finish`): that teardown was a third of a short run.
"""

from __future__ import annotations

import _io
import atexit
import gc
import io
import os
import signal
import sys
import threading
import traceback
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

import zmq  # noqa: F401 - imported ahead of the task: the reason a spare exists

import dte_tools.daemon_link  # noqa: F401 - the same
from dte_tools import channel
from dte_tools.job import Job


def main(argv: list[str]) -> int:
    # What the spare holds now lives as long as the process: out of every collection the
    # task triggers, and out of finish()'s search for the task's files.
    gc.collect()
    gc.freeze()
    job = Job.read(sys.stdin)
    if job is None:
        return 0  # duftd stopped before handing us a run
    job.enter()
    script = Path(job.argv[0]).resolve()
    sys.argv = [str(script), *job.argv[1:]]
    sys.path[0:1] = job.import_paths(str(script.parent))
    sys.stdin.close()
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - a task's stdin, as a cold worker has
    channel.adopt(int(argv[1]), capture_output=True)
    module = main_module(str(script))
    finish(run_script(str(script), module), module)


def main_module(script: str) -> types.ModuleType:
    """The task's ``__main__`` (as ``runpy.run_path`` makes it), in ``sys.modules`` from
    now until the process ends, as in ``python script``: a thread still running after the
    script, or an atexit handler, finds the script's module there."""
    module = types.ModuleType("__main__")
    module.__dict__.update(
        __file__=script, __cached__=None, __loader__=None, __package__="", __spec__=None
    )
    sys.modules["__main__"] = module
    return module


def run_script(script: str, module: types.ModuleType) -> int:
    """Run the task in ``module``; its exit code as ``python script`` would have it (minus a
    signal's number: ended by that signal)."""
    try:
        with io.open_code(script) as source:
            code = compile(source.read(), script, "exec")
        exec(code, module.__dict__)
    except SystemExit as leaving:
        return exit_code(leaving)
    except KeyboardInterrupt:
        print_task_traceback(script)
        return -signal.SIGINT  # the interpreter ends by the signal it was interrupted by
    except BaseException:
        print_task_traceback(script)
        return 1
    return 0


def exit_code(leaving: SystemExit) -> int:
    """The interpreter's reading of ``sys.exit(code)``: None is 0, an int is itself, and
    anything else is printed to stderr and is 1."""
    code = leaving.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF  # what the parent sees of any int
    print(code, file=sys.stderr)
    return 1


def print_task_traceback(script: str) -> None:
    """The traceback as ``python script`` prints it: without this module's and runpy's frames."""
    kind, error, tb = sys.exc_info()
    while tb is not None and tb.tb_frame.f_code.co_filename != script:
        tb = tb.tb_next
    traceback.print_exception(kind, error, tb)


def finish(code: int, module: types.ModuleType) -> NoReturn:
    """Exit with ``code`` (a negative one: by that signal) after doing what the
    interpreter's exit does that a task can see.

    In the interpreter's order: non-daemon threads are joined (after ``concurrent.futures``
    and other ``threading`` exit hooks), ``atexit`` handlers run (``logging.shutdown``,
    ``weakref.finalize``, ``multiprocessing``'s), the script's globals are cleared as the
    interpreter clears ``__main__`` (each object dropped in turn, so a file it left open is
    flushed and closed, a ``ZipFile`` written out, a ``NamedTemporaryFile`` removed) and its
    leftovers collected, every file object still open anywhere (in an imported module, say)
    is closed, and ``sys.stdout``/``sys.stderr`` are flushed into the channel. Then
    ``os._exit``: the interpreter's teardown (every module and object freed, ~26M
    instructions with what a spare imports, 20-36 ms) is skipped. Only ``__del__`` methods
    of objects that imported modules still hold, other than files, do not run.
    """
    steps = (
        threading._shutdown,  # type: ignore[attr-defined] - what the interpreter calls
        atexit._run_exitfuncs,
        lambda: clear_namespace(module.__dict__),
        gc.collect,
        lambda: close_files(standard_streams()),
        lambda: sys.stdout.flush(),
        lambda: sys.stderr.flush(),
    )
    try:
        for step in steps:
            try:
                step()
            except BaseException as error:  # reported, and the exit goes on, as at exit
                sys.unraisablehook(_Unraisable(error, step))
    finally:
        if code < 0:
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code)


def clear_namespace(names: dict[str, Any]) -> None:
    """Drop a module's globals the way the interpreter does at exit: names with one leading
    underscore first, then all but ``__builtins__``, each set to None in turn.

    Dropped one by one, objects go by reference count, a file's text layer before its
    buffer; left to the garbage collector (a script that defines a function holds its
    globals in a cycle) their order is arbitrary, and a buffer can be closed under its
    text layer, losing what it held."""
    for key in list(names):
        if key[:1] == "_" and key[1:2] != "_":
            names[key] = None
    for key in list(names):
        if key != "__builtins__":
            names[key] = None


def standard_streams() -> list[Any]:
    """sys.stdin/stdout/stderr (the task's and the original ones) and the layers below
    them: flushed, never closed (as at the interpreter's exit)."""
    found: list[Any] = []
    streams = (sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__)
    for stream in streams:
        while stream is not None and all(stream is not seen for seen in found):
            found.append(stream)
            try:
                stream = getattr(stream, "buffer", None) or getattr(stream, "raw", None)
            except Exception:
                stream = None
    return found


def close_files(keep: Iterable[Any]) -> None:
    """Close every open file object (text and binary, ``gzip``'s and the like included),
    outermost first: a text layer before its buffer, a ``GzipFile`` before the file it
    writes into, so that each flushes into a layer still open."""
    kept = {id(stream) for stream in keep}
    files = [
        obj
        for obj in gc.get_objects()
        if issubclass(type(obj), _io._IOBase) and id(obj) not in kept and not _closed(obj)
    ]
    while files:
        inner = {id(layer) for obj in files for layer in _layers_below(obj)}
        outer = [obj for obj in files if id(obj) not in inner] or files  # a cycle: all
        for obj in outer:
            _close(obj)
        done = {id(obj) for obj in outer}
        files = [obj for obj in files if id(obj) not in done and not _closed(obj)]


def _layers_below(obj: Any) -> list[Any]:
    """What a file object holds directly (a C wrapper's buffer or raw file, a Python
    one's attributes)."""
    found = []
    for held in gc.get_referents(obj):
        found.append(held)
        if type(held) is dict:
            found.extend(held.values())
    return found


def _closed(obj: Any) -> bool:
    try:
        return bool(obj.closed)
    except Exception:
        return True  # nothing we could close


def _close(obj: Any) -> None:
    try:
        obj.close()
    except Exception as error:
        sys.unraisablehook(_Unraisable(error, obj))


class _Unraisable:
    """What ``sys.unraisablehook`` takes: the interpreter's "Exception ignored in" report
    of what failed at exit."""

    def __init__(self, error: BaseException, obj: Any) -> None:
        self.exc_type = type(error)
        self.exc_value = error
        self.exc_traceback = error.__traceback__
        self.err_msg = None
        self.object = obj


if __name__ == "__main__":
    sys.exit(main(sys.argv))
