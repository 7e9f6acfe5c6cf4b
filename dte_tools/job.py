"""The job document: everything a worker learns about its one run, in one place.

duftd builds it (``duftd/runs/run.py``) and writes it as one JSON line on the worker's
stdin; the script worker (``dte_tools.spare``) and the notebook runner read it here. The
worker's channel and kernel folder are not in it: they are given when the process starts,
before its run is known (a warm spare starts ahead of need).

Standard library only, and cheap to import: task code imports this, and so does every
warm spare before its run (a dataclass would bring ``inspect`` in, 6 ms of a spare's
start).
"""

from __future__ import annotations

import json
import os
from typing import IO, Any, NamedTuple


class Job(NamedTuple):
    """One run for a worker: its arguments, working folder and extra environment.

    ``argv`` is ``[script, parameters as JSON]`` for a script (as DUFT passes them) and
    ``[notebook, executed copy]`` for a notebook. ``env`` holds the run's DUFT_* variables
    (its id and token among them: they never appear on a command line or in the
    environment a process was started with) and PYTHONPATH for an executeFromRoot copy.
    ``params`` are the run's resolved parameters (what ``find_json_arg`` returns; a script
    also gets them as its JSON argument, as in DUFT). ``secrets`` are the values a notebook
    runner masks in the executed notebook before it writes it; they are never put into
    the environment.
    """

    argv: list[str]
    cwd: str
    env: dict[str, str]
    params: dict[str, Any]
    secrets: tuple[str, ...] = ()

    def encode(self) -> bytes:
        return json.dumps(self._asdict()).encode() + b"\n"

    @classmethod
    def read(cls, stream: IO[str]) -> Job | None:
        """The job on ``stream``; None when duftd closed it without one (it is stopping)."""
        line = stream.readline()
        if not line:
            return None
        fields = json.loads(line)
        return cls(
            list(fields["argv"]),
            str(fields["cwd"]),
            dict(fields["env"]),
            dict(fields["params"]),
            tuple(fields["secrets"]),
        )

    def import_paths(self, first: str) -> list[str]:
        """``first`` (the script's or notebook's folder) and then the job's PYTHONPATH."""
        extra = self.env.get("PYTHONPATH", "")
        return [first, *(path for path in extra.split(os.pathsep) if path)]

    def enter(self) -> None:
        """Move this process into the run: its folder and its environment."""
        global _current
        os.chdir(self.cwd)
        os.environ.update(self.env)
        _current = self


_current: Job | None = None


def current() -> Job | None:
    """The job this process entered, if duftd gave it one."""
    return _current
