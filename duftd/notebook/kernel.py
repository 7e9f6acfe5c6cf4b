"""A notebook run's kernel: which one, and its life from start to shutdown.

The kernel is always this project's own Python environment: a notebook's saved kernelspec
is ignored on purpose (data tasks run in the same environment as the engine, DUFT's
rule), and no ``ipykernel install`` is ever needed. It is started before the run is known
(a warm spare), holding its own durable event channel, and joins the run once the job
arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import ensure_async
from nbclient import NotebookClient

from dte_tools.job import Job

KERNEL_NAME = "duftd-python"
INTERRUPT_INTERVAL_S = 0.5
READY_TIMEOUT_S = 60


class ProjectKernelSpecManager(KernelSpecManager):
    """Answers every kernel name with this interpreter's ipykernel."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(
            argv=[
                sys.executable,
                "-m",
                "ipykernel_launcher",
                "-f",
                "{connection_file}",
                # History is useless for a batch run and costs time on every cell.
                "--HistoryManager.enabled=False",
            ],
            display_name="duftd (project Python)",
            language="python",
            metadata={"debugger": False},
        )


async def start_kernel(folder: Path, channel_fd: int) -> tuple[AsyncKernelManager, Any]:
    """Start a kernel talking over private IPC sockets in ``folder``, holding the event
    channel ``channel_fd`` (this process's copy is closed); returns it and a ready client."""
    manager = AsyncKernelManager(
        kernel_name=KERNEL_NAME, kernel_spec_manager=ProjectKernelSpecManager()
    )
    manager.transport = "ipc"  # no TCP ports to take, nothing in plain text on the network
    manager.ip = str(folder / "kernel")
    manager.connection_file = str(folder / "kernel.json")
    try:
        await ensure_async(manager.start_kernel(pass_fds=(channel_fd,)))
    finally:
        os.close(channel_fd)
    client = manager.client()
    client.start_channels()
    await ensure_async(client.wait_for_ready(timeout=READY_TIMEOUT_S))
    return manager, client


async def join_run(notebook: NotebookClient, job: Job, channel_fd: int) -> None:
    """Give the kernel the run's environment, folder and import paths, as a kernel started
    for the run would have had, and make ``channel_fd`` its event channel."""
    paths = job.import_paths(job.cwd)
    code = (
        "import os as _o, sys as _s\n"
        f"_o.environ.update({job.env!r})\n_o.chdir({job.cwd!r})\n_s.path[0:0] = {paths!r}\n"
        f"import dte_tools.channel as _c\n_c.adopt({channel_fd}, capture_output=False)\n"
        "del _o, _s, _c"
    )
    assert notebook.kc is not None
    msg_id = notebook.kc.execute(code, silent=True, store_history=False)
    await notebook.async_wait_for_reply(msg_id)


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
        """The cells are over: stop interrupting."""
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
    """The client's (started) kernel with ``stop`` handling SIGTERM/SIGINT; always shut down.

    nbclient's ``async_setup_kernel`` is not used: its own signal handler shuts the kernel
    down under the running cell and then fails on exit, so a cancelled run ended in a
    traceback.
    """
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    try:
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
            # end (polled every 0.1 s): the cells are over, and the task's events are in its
            # channel already.
            await km.provisioner.kill()
    finally:
        await ensure_async(km.cleanup_resources())
