"""The worker process of a notebook run: ``python -m duftd.notebook.runner NOTEBOOK OUTPUT``.

It fetches the run's parameters from duftd, injects them, executes every cell with
nbclient on a kernel of this environment, and reports cell by cell on the bus. Log
lines sent from inside a cell go straight from the kernel to duftd (the kernel inherits
the run's environment), so they arrive while the cell is still running. The executed
notebook, outputs included, is written to OUTPUT whatever happens.
"""

from __future__ import annotations

import asyncio
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError
from nbformat import NotebookNode

from dte_tools.backends import DaemonBackend
from dte_tools.wire import Kind
from duftd.notebook.kernel import KERNEL_NAME, ProjectKernelSpecManager
from duftd.notebook.params import inject

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Run in the kernel after the last cell: deliver the task's queued events before the
# kernel is shut down (immediately, which would skip the kernel's own exit handlers).
CLOSE_TASK_TOOLS = "import sys as _s\n_m = _s.modules.get('dte_tools.task')\n_m and _m.close()"


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


class ReportingClient(NotebookClient):
    """An nbclient that reports cells and stream output to duftd as they happen."""

    def __init__(self, nb: NotebookNode, backend: DaemonBackend, **kwargs: Any) -> None:
        super().__init__(nb, **kwargs)
        self.backend = backend
        self.code_indexes = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
        self.finished_cells = 0

    def _cell_event(self, phase: str, cell_index: int) -> None:
        number = self.code_indexes.index(cell_index) + 1 if cell_index in self.code_indexes else 0
        self.backend.emit(
            Kind.CELL,
            {"phase": phase, "index": cell_index, "number": number, "count": len(self.code_indexes)},
        )

    async def on_execute(self, cell: NotebookNode, cell_index: int) -> None:
        self._cell_event("started", cell_index)

    async def on_executed(self, cell: NotebookNode, cell_index: int, execute_reply: dict[str, Any]) -> None:
        self.finished_cells += 1
        self._cell_event("finished", cell_index)
        total = len(self.code_indexes)
        self.backend.emit(
            Kind.PROGRESS,
            {"done": self.finished_cells, "total": total, "message": f"cell {self.finished_cells}/{total}"},
        )

    def output(self, outs: list[NotebookNode], msg: dict[str, Any], display_id: str | None, cell_index: int) -> NotebookNode | None:
        """Stream output lines become stdout/stderr events the moment the kernel sends them."""
        if msg["msg_type"] == "stream":
            kind = Kind.STDERR if msg["content"].get("name") == "stderr" else Kind.STDOUT
            for line in msg["content"].get("text", "").splitlines():
                self.backend.emit(kind, {"text": strip_ansi(line)})
        return super().output(outs, msg, display_id, cell_index)


async def close_task_tools(client: NotebookClient) -> None:
    """Ask the kernel to flush the task's queued events; bounded, best effort."""
    if client.kc is None:
        return
    try:
        msg_id = client.kc.execute(CLOSE_TASK_TOOLS, silent=True, store_history=False)
        await asyncio.wait_for(client.async_wait_for_reply(msg_id), 15)
    except (TimeoutError, RuntimeError, DeadKernelError):
        pass


def kernel_manager(sockets_dir: Path) -> AsyncKernelManager:
    """A manager for a kernel of this environment, talking over private IPC sockets."""
    manager = AsyncKernelManager(
        kernel_name=KERNEL_NAME, kernel_spec_manager=ProjectKernelSpecManager()
    )
    manager.transport = "ipc"  # no TCP ports to take, nothing in plain text on the network
    manager.ip = str(sockets_dir / "kernel")
    return manager


async def execute(nb: NotebookNode, backend: DaemonBackend, cwd: Path) -> dict[str, Any] | None:
    """Run every cell; returns the failure (cell, exception, traceback) or None."""
    with tempfile.TemporaryDirectory(prefix="duftd-kernel-") as sockets_dir:
        return await _execute(nb, backend, cwd, kernel_manager(Path(sockets_dir)))


async def _execute(
    nb: NotebookNode, backend: DaemonBackend, cwd: Path, manager: AsyncKernelManager
) -> dict[str, Any] | None:
    client = ReportingClient(
        nb,
        backend,
        timeout=None,
        shutdown_kernel="immediate",
        resources={"metadata": {"path": str(cwd)}},
    )
    client.km = manager  # set after construction so the client still owns (and stops) it
    client.on_cell_execute = client.on_execute
    client.on_cell_executed = client.on_executed
    failure = None
    async with client.async_setup_kernel():
        try:
            for index, cell in enumerate(nb.cells):
                await client.async_execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
        except CellExecutionError as error:
            failure = {
                "cell_index": index,
                "ename": error.ename,
                "evalue": strip_ansi(error.evalue),
                "traceback": strip_ansi(error.traceback).splitlines()[-40:],
            }
        except DeadKernelError:
            failure = {"cell_index": index, "ename": "DeadKernelError", "evalue": "the kernel died", "traceback": []}
        finally:
            await close_task_tools(client)
    return failure


def main(argv: list[str]) -> int:
    notebook_path, output_path = Path(argv[1]), Path(argv[2])
    backend = DaemonBackend.from_environment()
    nb = nbformat.read(notebook_path, as_version=4)
    how = inject(nb, backend.parameters({}))
    if how == "top":
        backend.emit(Kind.NOTICE, {"message": "no `params = {}` first cell or `parameters` tag: parameters injected at the top"})
    failure = None
    try:
        failure = asyncio.run(execute(nb, backend, Path.cwd()))
    finally:
        output_path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, output_path)
    if failure is not None:
        backend.emit(Kind.FAILURE, failure)
        backend.close()
        return 1
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
