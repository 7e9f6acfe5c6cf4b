"""The kernel a notebook task runs on: always this project's own Python environment.

A notebook's saved kernelspec is ignored on purpose: data tasks must run in the same
environment as the engine (DUFT's rule), and no ``ipykernel install`` is ever needed.
"""

from __future__ import annotations

import sys

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

KERNEL_NAME = "duftd-python"


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
