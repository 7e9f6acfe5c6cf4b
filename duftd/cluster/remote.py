"""One run as a Dask task: :func:`run_job` is what the daemon submits.

This module is shipped to Dask workers by value (cloudpickle), so it imports only the
standard library at its top; this package is imported only once :func:`missing_package`
has said it is there. Specs and results are plain dicts for the same reason.
"""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path
from typing import Any

REQUIRED_PACKAGES = ("dte_tools", "duftd")


def missing_package() -> str | None:
    """Why this Python cannot run a duftd worker, or None."""
    for name in REQUIRED_PACKAGES:
        if importlib.util.find_spec(name) is None:
            return (
                f"the Dask worker's Python ({sys.executable} on {socket.gethostname()}) has no "
                f"{name}: install duftd (and the task's own libraries) in the environment the "
                "Dask workers run, the same version as the daemon's"
            )
    return None


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one run's worker on this Dask worker (see :func:`duftd.cluster.relay.run_here`);
    returns ``worker``, ``host`` and how the run went, or ``reason`` when it could not run."""
    from distributed import get_worker

    worker = get_worker()
    where = {"worker": str(worker.name), "host": socket.gethostname()}
    reason = missing_package()
    if reason is not None:
        return {**where, "reason": reason}
    from duftd.cluster.relay import run_here

    return run_here(spec, where, Path(worker.local_directory))
