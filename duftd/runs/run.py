"""The work of one run: its live record, its job document, its folder and its tidy-up.

The run manager decides when a run starts and records its states; what the run itself
needs (the job its worker is given, where a notebook's executed copy goes, what is
removed or masked afterwards) lives here.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dte_tools import wire
from dte_tools.job import Job
from dte_tools.redact import Redactor
from dte_tools.wire import State
from duftd.config import LoadedConfig, TaskSpec, secret_values
from duftd.ingest import RunLink
from duftd.runs.root_layout import prepare_root_copy

if TYPE_CHECKING:
    from duftd.runs.launchers import Placed


@dataclass(frozen=True)
class WorkerEndpoints:
    """Where workers reach the daemon, and the folders runs use."""

    control: str
    ingest: str
    data_dir: Path
    runs_dir: Path  # per-run folders: executed notebooks, executeFromRoot copies


@dataclass(eq=False)
class LiveRun:
    """A run that is queued, starting or running, with the spec it was submitted with."""

    id: int
    task: TaskSpec
    # The config as it was at submit (a reload does not change a live run); kept out of
    # repr because it holds the user's connection values.
    config: LoadedConfig = field(repr=False)
    params: dict[str, Any]
    link: RunLink
    folder: Path  # the run's own folder in the state folder
    state: str = State.QUEUED
    supervisor: Placed | None = None
    data_dir: Path | None = None  # on its Dask worker, for a run placed there
    cancel_reason: str | None = None
    worker_id: str = ""  # in the environment of every process of the run
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def output_path(self) -> Path | None:
        """Where a notebook run's executed copy is written (None for scripts)."""
        if self.task.kind != "notebook":
            return None
        return self.folder / self.task.script_path.name

    def job(self, endpoints: WorkerEndpoints) -> Job:
        """The run's job document: the one place a worker's run is described."""
        task = self.task
        env = {
            wire.ENV_RUN_ID: str(self.id),
            wire.ENV_RUN_TOKEN: self.link.token.decode(),
            wire.ENV_CONTROL: endpoints.control,
            wire.ENV_INGEST: endpoints.ingest,
            wire.ENV_CONFIG_DIR: str(self.config.root),
        }
        script, cwd = task.script_path, task.data_tasks_dir
        if task.execute_from_root:
            # The task may replace duft-config itself: run a copy from the folder above it,
            # with the task's own folder still importable.
            script = prepare_root_copy(task.script_path, self.folder / "root-copy")
            cwd = self.config.root.parent
            env["PYTHONPATH"] = str(task.data_tasks_dir)
        if task.kind == "notebook":
            # The runner masks the executed notebook before it is on disk.
            argv = [str(script), str(self.output_path)]
            return Job(argv, str(cwd), env, self.params, self.secrets)
        # DUFT passes a script's parameters as its JSON argument; they hold no secrets.
        return Job([str(script), json.dumps(self.params)], str(cwd), env, self.params)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The values masked wherever the run's output is kept."""
        return tuple(secret_values(self.config, self.task))

    def tidy(self) -> None:
        """Drop an executeFromRoot copy; mask secrets in the executed notebook kept for the user."""
        shutil.rmtree(self.folder / "root-copy", ignore_errors=True)
        output = self.output_path
        if output is not None:  # the runner masked it, unless it was killed while writing
            mask_notebook(output, Redactor(self.secrets))


def mask_notebook(path: Path, redactor: Redactor) -> None:
    """Mask secrets in an executed notebook on disk (one a runner could not finish)."""
    if redactor and path.is_file():
        text = path.read_text(encoding="utf-8")
        masked = redactor.mask(text)
        if masked != text:
            path.write_text(masked, encoding="utf-8")
