"""The script worker: ``python -m dte_tools.spare CHANNEL_FD``, started by duftd.

It imports what every task needs (pyzmq, the bus client), often while nothing waits on
it (a warm spare), then reads its one job from stdin (:mod:`dte_tools.job`) and runs the
script exactly as ``python script ...`` would: as ``__main__``, with the script's folder
first on ``sys.path`` and the run's variables in ``os.environ``. Its events, and its
``sys.stdout``/``sys.stderr`` lines, go through the channel it was started with.
"""

from __future__ import annotations

import gc
import io
import os
import sys
import traceback
import types
from pathlib import Path
from typing import Any

import zmq  # noqa: F401 - imported ahead of the task: the reason a spare exists

import dte_tools.daemon_link  # noqa: F401 - the same
from dte_tools import channel
from dte_tools.job import Job


def main(argv: list[str]) -> int:
    # What the spare has loaded lives as long as the process: kept out of every collection
    # the task triggers and out of the interpreter's last ones at exit, which were most of
    # a short run's shutdown (~6 of ~7 ms).
    gc.freeze()
    job = Job.read(sys.stdin)
    if job is None:
        return 0  # duftd stopped before handing us a run
    job.enter()
    script = str(Path(job.argv[0]).resolve())
    sys.argv = [script, *job.argv[1:]]
    sys.path[0:1] = job.import_paths(str(Path(script).parent))
    sys.stdin.close()
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - a task's stdin, as a cold worker has
    channel.adopt(int(argv[1]), capture_output=True)
    sys.excepthook = TracebackFrom(script)
    run_as_main(script)
    return 0


def run_as_main(script: str) -> None:
    """Run the task as ``python script`` does: in a module ``__main__`` that stays in
    ``sys.modules``, so that at exit the interpreter clears its globals in its own order
    (a file the script left open is flushed through its text layer, then closed) and an
    atexit handler or a thread still running finds the script's module. ``runpy.run_path``
    takes its module out again, and a script defining a function (which holds the globals
    in a cycle) then lost what such a file held. An exception (SystemExit, an error, a
    KeyboardInterrupt) goes on to the interpreter, which ends the process as it would end
    ``python script``."""
    module = types.ModuleType("__main__")
    module.__dict__.update(__file__=script, __cached__=None, __package__=None, __spec__=None)
    sys.modules["__main__"] = module
    with io.open_code(script) as source:
        code = compile(source.read(), script, "exec")
    exec(code, module.__dict__)


class TracebackFrom:
    """``sys.excepthook`` printing the traceback as ``python script`` prints it: from the
    script's first frame, without this module's, the fork server's and runpy's. A task may
    set its own hook, as under plain python."""

    def __init__(self, script: str) -> None:
        self._script = script

    def __call__(self, kind: type[BaseException], error: BaseException, tb: Any) -> None:
        while tb is not None and tb.tb_frame.f_code.co_filename != self._script:
            tb = tb.tb_next
        traceback.print_exception(kind, error, tb)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
