"""The notebook worker: ``python -m duftd.notebook.runner KERNEL_DIR CHANNEL_FD KERNEL_FD``.

duftd starts it (often ahead of need, as a warm spare) with two durable event channels:
its own, and one for the kernel. It starts a kernel of this environment holding the
kernel's channel, reads its job (:mod:`dte_tools.job`) on stdin, injects the run's
parameters from it, executes every cell with nbclient, and reports cell
by cell. Log lines sent from inside a cell go from the kernel straight into its own
channel, so they are duftd's the moment the call returns, whatever happens to the kernel
next. The executed notebook, outputs included, is written to the job's output path
however the cells end. SIGTERM (duftd cancelling the run or timing it out) interrupts the
running cell, shuts the kernel down and still writes the output; a runner that takes
longer than duftd's grace period is killed, and duftd then kills the kernel too.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import ensure_async
from nbclient.exceptions import CellExecutionError, DeadKernelError
from nbformat import NotebookNode

from dte_tools import channel
from dte_tools.backends import DaemonBackend
from dte_tools.job import Job
from dte_tools.redact import Redactor
from dte_tools.wire import Kind
from duftd.notebook.kernel import StopRequest, join_run, running_kernel, start_kernel
from duftd.notebook.params import inject
from duftd.notebook.reporting import ReportingClient, strip_ansi


@dataclass
class Result:
    """How the cells went: the failing cell's report, or the signal that stopped the run."""

    failure: dict[str, Any] | None = None
    signum: int | None = None
    cell_index: int | None = None  # the last cell started


async def execute(
    nb: NotebookNode,
    backend: DaemonBackend,
    manager: AsyncKernelManager,
    kernel_client: Any,
    job: Job,
    kernel_channel: int,
) -> Result:
    """Run the notebook's cells on the (started) kernel, in the job's folder."""
    client = ReportingClient(nb, backend, timeout=None, resources={"metadata": {"path": job.cwd}})
    client.km, client.kc = manager, kernel_client
    stop = StopRequest()
    result = Result()
    async with running_kernel(client, stop):
        await join_run(client, job, kernel_channel)
        try:
            for index, cell in enumerate(nb.cells):
                if stop.signum is not None:
                    break
                result.cell_index = index
                await client.async_execute_cell(
                    cell, index, execution_count=client.code_cells_executed + 1
                )
        except CellExecutionError as error:
            if stop.signum is None:  # an interrupted cell is the stop, not the task's failure
                result.failure = {
                    "cell_index": index,
                    "ename": error.ename,
                    "evalue": strip_ansi(error.evalue),
                    "traceback": strip_ansi(error.traceback).splitlines()[-40:],
                }
        except DeadKernelError:
            result.failure = {
                "cell_index": index,
                "ename": "DeadKernelError",
                "evalue": "the kernel died",
                "traceback": [],
            }
        finally:
            stop.done()
    result.signum = stop.signum
    return result


def write_notebook(nb: NotebookNode, path: Path, redactor: Redactor) -> None:
    """Write the executed notebook, its secrets masked before it is on disk; a cancel that
    comes meanwhile waits until it is whole.

    Written in place, not renamed from a temporary file: duftd masks this one path again
    when the runner was killed while writing, and a temporary file would escape that.
    """
    text = redactor.mask(nbformat.writes(nb)) + "\n"  # as nbformat.write ends it
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        path.write_text(text, encoding="utf-8")
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


async def run(folder: Path, kernel_channel: int) -> int:
    """Start the kernel, wait for the job, run it; the exit code."""
    manager, kernel_client = await start_kernel(folder, kernel_channel)
    job = await asyncio.get_running_loop().run_in_executor(None, Job.read, sys.stdin)
    if job is None:  # duftd stopped before handing us a run
        kernel_client.stop_channels()
        await ensure_async(manager.shutdown_kernel(now=True))
        return 0
    job.enter()
    notebook_path, output_path = Path(job.argv[0]), Path(job.argv[1])
    backend = DaemonBackend.from_environment()
    try:
        nb = nbformat.read(notebook_path, as_version=4)
    except Exception as error:  # any unreadable file: one line for the user, not a traceback
        print(f"cannot read notebook {notebook_path.name}: {error}", file=sys.stderr)
        kernel_client.stop_channels()
        await ensure_async(manager.shutdown_kernel(now=True))
        return 2
    how = inject(nb, job.params)
    if how == "top":
        message = "no `params = {}` first cell or `parameters` tag: parameters put at the top"
        backend.emit(Kind.NOTICE, {"message": message})
    result = Result()
    try:
        result = await execute(nb, backend, manager, kernel_client, job, kernel_channel)
    finally:
        write_notebook(nb, output_path, Redactor(job.secrets))
    if result.signum is not None:
        name = signal.Signals(result.signum).name
        where = (
            "before any cell ran" if result.cell_index is None else f"in cell {result.cell_index}"
        )
        backend.emit(
            Kind.NOTICE, {"message": f"stopped by {name} {where}; later cells did not run"}
        )
        return 128 + result.signum
    if result.failure is not None:
        backend.emit(Kind.FAILURE, result.failure)
        return 1
    return 0


def main(argv: list[str]) -> int:
    folder = Path(argv[1])
    folder.mkdir(mode=0o700)
    channel.adopt(int(argv[2]), capture_output=True)
    try:
        return asyncio.run(run(folder, int(argv[3])))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    code = main(sys.argv)
    # Everything is written and in duftd's pipes: skip tearing down nbclient, jupyter_client
    # and their threads (about 50 ms the run would otherwise wait for).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
