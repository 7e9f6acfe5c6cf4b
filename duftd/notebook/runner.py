"""The worker process of a notebook run: ``python -m duftd.notebook.runner NOTEBOOK OUTPUT``.

It fetches the run's parameters from duftd, injects them, executes every cell with
nbclient on a kernel of this environment, and reports cell by cell on the bus. Log
lines sent from inside a cell go straight from the kernel to duftd (the kernel inherits
the run's environment), so they arrive while the cell is still running. The executed
notebook, outputs included, is written to OUTPUT however the cells end. SIGTERM (duftd
cancelling the run or timing it out) interrupts the running cell, lets the task deliver
its last events, shuts the kernel down and still writes OUTPUT; a runner that takes
longer than duftd's grace period is killed, and duftd then kills the kernel too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import ensure_async
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError
from nbformat import NotebookNode

from dte_tools.backends import DaemonBackend
from dte_tools.wire import ENV_WORKER_ID, Kind
from duftd.notebook.kernel import KERNEL_NAME, ProjectKernelSpecManager
from duftd.notebook.params import inject
from duftd.notebook.scratch import kernel_dir

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Run in the kernel after the last cell: deliver the task's queued events before the
# kernel is shut down (immediately, which would skip the kernel's own exit handlers).
CLOSE_TASK_TOOLS = "import sys as _s\n_m = _s.modules.get('dte_tools.task')\n_m and _m.close()"
CLOSE_TIMEOUT_S = 15.0
# When stopping, duftd's grace period (5 s by default) bounds everything left to do.
STOP_CLOSE_TIMEOUT_S = 2.0
INTERRUPT_INTERVAL_S = 0.5


@dataclass
class Result:
    """How the cells went: the failing cell's report, or the signal that stopped the run."""

    failure: dict[str, Any] | None = None
    signum: int | None = None
    cell_index: int | None = None  # the last cell started


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


class ReportingClient(NotebookClient):
    """An nbclient that reports cells and stream output to duftd as they happen."""

    def __init__(self, nb: NotebookNode, backend: DaemonBackend, **kwargs: Any) -> None:
        super().__init__(nb, **kwargs)
        self.backend = backend
        # The cells nbclient will execute: code, not blank, not tagged to be skipped.
        self.code_indexes = [
            i
            for i, c in enumerate(nb.cells)
            if c.cell_type == "code"
            and c.source.strip()
            and self.skip_cells_with_tag not in c.metadata.get("tags", [])
        ]
        self.finished_cells = 0

    def _cell_event(self, phase: str, cell_index: int, **extra: Any) -> None:
        number = self.code_indexes.index(cell_index) + 1 if cell_index in self.code_indexes else 0
        self.backend.emit(
            Kind.CELL,
            {
                "phase": phase,
                "index": cell_index,
                "number": number,
                "count": len(self.code_indexes),
                **extra,
            },
        )

    async def on_execute(self, cell: NotebookNode, cell_index: int) -> None:
        self._cell_event("started", cell_index)

    async def on_executed(
        self, cell: NotebookNode, cell_index: int, execute_reply: dict[str, Any]
    ) -> None:
        """A cell that raised (or was interrupted) is finished but not progress."""
        status = execute_reply.get("content", {}).get("status", "ok")
        self._cell_event("finished", cell_index, status=status)
        if status != "ok":
            return
        self.finished_cells += 1
        total = len(self.code_indexes)
        self.backend.emit(
            Kind.PROGRESS,
            {
                "done": self.finished_cells,
                "total": total,
                "message": f"cell {self.finished_cells}/{total}",
            },
        )

    def output(
        self, outs: list[NotebookNode], msg: dict[str, Any], display_id: str | None, cell_index: int
    ) -> NotebookNode | None:
        """Stream output lines become stdout/stderr events the moment the kernel sends them."""
        if msg["msg_type"] == "stream":
            kind = Kind.STDERR if msg["content"].get("name") == "stderr" else Kind.STDOUT
            for line in msg["content"].get("text", "").splitlines():
                self.backend.emit(kind, {"text": strip_ansi(line)})
        return super().output(outs, msg, display_id, cell_index)


async def close_task_tools(client: NotebookClient, bound_s: float) -> None:
    """Ask the kernel to flush the task's queued events; bounded, best effort."""
    if client.kc is None or client.km is None or not await ensure_async(client.km.is_alive()):
        return  # a dead kernel would only be noticed after nbclient's 5 s reply poll
    try:
        msg_id = client.kc.execute(CLOSE_TASK_TOOLS, silent=True, store_history=False)
        await asyncio.wait_for(client.async_wait_for_reply(msg_id), bound_s)
    except (TimeoutError, RuntimeError, DeadKernelError):
        pass


def kernel_manager(folder: Path) -> AsyncKernelManager:
    """A manager for a kernel of this environment, talking over private IPC sockets."""
    manager = AsyncKernelManager(
        kernel_name=KERNEL_NAME, kernel_spec_manager=ProjectKernelSpecManager()
    )
    manager.transport = "ipc"  # no TCP ports to take, nothing in plain text on the network
    manager.ip = str(folder / "kernel")
    manager.connection_file = str(folder / "kernel.json")
    return manager


class StopRequest:
    """SIGTERM (duftd cancels or times out the run) or SIGINT: interrupt the cell, end in order."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._kernel: AsyncKernelManager | None = None  # set once the kernel is ready
        self._interrupter: asyncio.Task[None] | None = None

    def __call__(self, signum: int) -> None:
        if self.signum is not None:
            return  # already stopping; duftd escalates to SIGKILL if it takes too long
        self.signum = signum
        if self._kernel is not None:
            self._interrupter = asyncio.ensure_future(self._interrupt(self._kernel))

    def kernel_ready(self, kernel: AsyncKernelManager) -> None:
        """From now on a stop interrupts the kernel (before, no cell has started)."""
        self._kernel = kernel

    def done(self) -> None:
        """The cells are over: stop interrupting, so the kernel can flush the task's events."""
        if self._interrupter is not None:
            self._interrupter.cancel()

    @staticmethod
    async def _interrupt(kernel: AsyncKernelManager) -> None:
        """Interrupt until :meth:`done`: an interrupt that lands between cells is ignored."""
        while True:
            with contextlib.suppress(Exception):  # a dead or stopping kernel: nothing to do
                await ensure_async(kernel.interrupt_kernel())
            await asyncio.sleep(INTERRUPT_INTERVAL_S)


@contextlib.asynccontextmanager
async def running_kernel(client: NotebookClient, stop: StopRequest) -> AsyncIterator[None]:
    """Start the client's kernel with ``stop`` handling SIGTERM/SIGINT; always shut it down.

    nbclient's ``async_setup_kernel`` is not used: its own signal handler shuts the kernel
    down under the running cell and then fails on exit, so a cancelled run ended in a
    traceback, with the task's queued events lost.
    """
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    try:
        if not client.km.has_kernel:  # a spare's kernel is already up
            await client.async_start_new_kernel()
        if client.kc is None:
            await client.async_start_new_kernel_client()
        stop.kernel_ready(client.km)
        yield
    finally:
        await shutdown_kernel(client)


async def shutdown_kernel(client: NotebookClient) -> None:
    """Stop the kernel at once and remove its connection file; fine when it already died."""
    kc, km = client.kc, client.km
    client.kc = None
    if kc is not None:
        await ensure_async(kc.stop_channels())
    if km is None:
        return
    try:
        if km.has_kernel and km.provisioner is not None:
            # SIGKILL to the kernel's process group, without jupyter_client's wait for its
            # end (polled every 0.1 s): the cells are over and the task's events flushed.
            await km.provisioner.kill()
    finally:
        await ensure_async(km.cleanup_resources())


async def _execute(
    nb: NotebookNode,
    backend: DaemonBackend,
    cwd: Path,
    manager: AsyncKernelManager,
    warm: WarmKernel | None = None,
) -> Result:
    client = ReportingClient(nb, backend, timeout=None, resources={"metadata": {"path": str(cwd)}})
    client.km = manager
    if warm is not None:
        client.kc = warm.client
        await warm.join_run(client)
    client.on_cell_execute = client.on_execute
    client.on_cell_executed = client.on_executed
    stop = StopRequest()
    result = Result()
    async with running_kernel(client, stop):
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
            await close_task_tools(
                client, CLOSE_TIMEOUT_S if stop.signum is None else STOP_CLOSE_TIMEOUT_S
            )
    result.signum = stop.signum
    return result


def write_notebook(nb: NotebookNode, path: Path) -> None:
    """Write the executed notebook; a cancel that comes meanwhile waits until it is whole.

    Written in place, not renamed from a temporary file: duftd masks secrets in this one
    path, and a temporary file left by a killed runner would keep them.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        nbformat.write(nb, path)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@dataclass
class WarmKernel:
    """A spare's kernel, started and ready before its run existed."""

    manager: AsyncKernelManager
    client: Any  # the kernel client, channels started
    job: dict[str, Any]

    async def join_run(self, notebook: NotebookClient) -> None:
        """Give the kernel the run's environment and folder, as a cold one would have had."""
        env, cwd = self.job["env"], self.job["cwd"]
        paths = [cwd, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
        code = (
            f"import os as _o, sys as _s\n_o.environ.update({env!r})\n_o.chdir({cwd!r})\n"
            f"_s.path[0:0] = {paths!r}"
        )
        msg_id = self.client.execute(code, silent=True, store_history=False)
        await notebook.async_wait_for_reply(msg_id)


async def run(
    notebook_path: Path, output_path: Path, folder: Path, warm: WarmKernel | None = None
) -> int:
    """Execute the notebook for the run in this process's environment; the exit code."""
    backend = DaemonBackend.from_environment()
    try:
        nb = nbformat.read(notebook_path, as_version=4)
    except Exception as error:  # any unreadable file: one line for the user, not a traceback
        print(f"cannot read notebook {notebook_path.name}: {error}", file=sys.stderr)
        backend.close()
        return 2
    how = inject(nb, backend.parameters({}))
    if how == "top":
        message = "no `params = {}` first cell or `parameters` tag: parameters put at the top"
        backend.emit(Kind.NOTICE, {"message": message})
    result = Result()
    manager = warm.manager if warm else kernel_manager(folder)
    try:
        result = await _execute(nb, backend, Path.cwd(), manager, warm)
    finally:
        write_notebook(nb, output_path)
    code = 0
    if result.signum is not None:
        name = signal.Signals(result.signum).name
        where = (
            "before any cell ran" if result.cell_index is None else f"in cell {result.cell_index}"
        )
        message = f"stopped by {name} {where}; later cells did not run"
        backend.emit(Kind.NOTICE, {"message": message})
        code = 128 + result.signum
    elif result.failure is not None:
        backend.emit(Kind.FAILURE, result.failure)
        code = 1
    backend.close()
    return code


async def spare(folder: Path) -> int:
    """Start a kernel and wait for a run on stdin (see duftd.runs.spares), then run it."""
    manager = kernel_manager(folder)
    await ensure_async(manager.start_kernel())
    client = manager.client()
    client.start_channels()
    await ensure_async(client.wait_for_ready(timeout=60))
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line:  # duftd stopped before handing us a run
        client.stop_channels()
        await ensure_async(manager.shutdown_kernel(now=True))
        return 0
    job = json.loads(line)
    os.chdir(job["cwd"])
    os.environ.update(job["env"])
    notebook, output = job["argv"]
    return await run(Path(notebook), Path(output), folder, WarmKernel(manager, client, job))


def main(argv: list[str]) -> int:
    folder = kernel_dir(os.environ[ENV_WORKER_ID])
    folder.mkdir(mode=0o700)
    try:
        if argv[1:] == ["--spare"]:
            return asyncio.run(spare(folder))
        return asyncio.run(run(Path(argv[1]), Path(argv[2]), folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    code = main(sys.argv)
    # Everything is written and delivered: skip tearing down nbclient, jupyter_client and
    # their threads (about 50 ms the run would otherwise wait for).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
