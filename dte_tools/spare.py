"""A spare script worker: ``python -m dte_tools.spare``, started by duftd ahead of need.

It imports what every task needs (pyzmq, the bus client) while nothing waits on it, then
reads its one assignment from stdin, ``{"argv": [script, ...], "cwd", "env"}``, and runs
the script exactly as ``python script ...`` would: as ``__main__``, with the script's
folder first on ``sys.path`` and the run's variables in ``os.environ``.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import traceback
from pathlib import Path

import zmq  # noqa: F401 - imported ahead of the task: the reason a spare exists

import dte_tools.daemon_link  # noqa: F401 - the same


def main() -> int:
    line = sys.stdin.readline()
    if not line:
        return 0  # duftd stopped before handing us a run
    job = json.loads(line)
    os.chdir(job["cwd"])
    os.environ.update(job["env"])
    script = Path(job["argv"][0]).resolve()
    sys.argv = [str(script), *job["argv"][1:]]
    extra = [p for p in job["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[0:1] = [str(script.parent), *extra]
    sys.stdin.close()
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - a task's stdin, as a cold worker has
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
    sys.exit(main())
