"""The script worker: ``python -m dte_tools.spare CHANNEL_FD``, started by duftd.

It imports what every task needs (pyzmq, the bus client), often while nothing waits on
it (a warm spare), then reads its one job from stdin (:mod:`dte_tools.job`) and runs the
script exactly as ``python script ...`` would: as ``__main__``, with the script's folder
first on ``sys.path`` and the run's variables in ``os.environ``. Its events, and its
``sys.stdout``/``sys.stderr`` lines, go through the channel it was started with.
"""

from __future__ import annotations

import gc
import os
import runpy
import sys
import traceback
from pathlib import Path

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
    script = Path(job.argv[0]).resolve()
    sys.argv = [str(script), *job.argv[1:]]
    sys.path[0:1] = job.import_paths(str(script.parent))
    sys.stdin.close()
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - a task's stdin, as a cold worker has
    channel.adopt(int(argv[1]), capture_output=True)
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit:
        raise
    except BaseException:
        print_task_traceback(str(script))
        return 1
    return 0


def print_task_traceback(script: str) -> None:
    """The traceback as ``python script`` prints it: without this module's and runpy's frames."""
    kind, error, tb = sys.exc_info()
    while tb is not None and tb.tb_frame.f_code.co_filename != script:
        tb = tb.tb_next
    traceback.print_exception(kind, error, tb)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
