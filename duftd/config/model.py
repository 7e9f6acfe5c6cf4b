"""The duft-config model: tasks, parameters, connections, user values, diagnostics.

Field aliases are DUFT's JSON names (``pythonFile``, ``defaultValue``...), so
``model_dump(by_alias=True)`` gives back what a DUFT user wrote. Unknown JSON fields
are kept (``extra="allow"``) so nothing a user wrote is lost; the loader warns about
them. The models hold already-checked values: :mod:`duftd.config.loader` builds them.

Addressing: a system task is addressed by its bare id; an app task as ``<app>:<id>``.
A bare id that is no system task but exists in exactly one app means that app task.
"""

from __future__ import annotations

import difflib
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, computed_field

from duftd.errors import AmbiguousTaskError, TaskNotRunnableError, UnknownTaskError

Severity = Literal["error", "warning"]


def folder_listing(folder: Path) -> dict[str, os.DirEntry[str]]:
    """The entries of ``folder`` by name ({} when it cannot be listed).

    A config load checks every task's script against one listing. A stat per task made
    the loading thread drop and retake the GIL thousands of times a second, and each
    quick retake beat the control loop waiting for it: with 5,000 tasks, control stalled
    for up to half a second during a reload.
    """
    try:
        with os.scandir(folder) as entries:
            return {entry.name: entry for entry in entries}
    except OSError:
        return {}


def script_file_problem(
    folder: Path, name: str, listing: dict[str, os.DirEntry[str]] | None = None
) -> str | None:
    """Why ``folder/name`` is no script file to run now (missing, not a file, links out).

    ``listing`` (see :func:`folder_listing`) answers for a plain file without a system
    call; without it, one lstat does (every submit looks again). Only a link is followed:
    only a link can lead out of the folder (``name`` is a bare file name).
    """
    path = folder / name
    try:
        if listing is not None:
            entry = listing.get(name)
            if entry is None:
                raise FileNotFoundError(path)
            link = entry.is_symlink()
            regular = not link and entry.is_file(follow_symlinks=False)
        else:
            mode = path.lstat().st_mode
            link, regular = stat.S_ISLNK(mode), stat.S_ISREG(mode)
        if link:
            target = path.resolve()
            if not target.is_relative_to(folder.resolve()):
                return f"pythonFile {name!r} is a link to {target}, outside {folder}"
            regular = stat.S_ISREG(path.stat().st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return f"pythonFile {name!r} not found: expected {path}"
    if not regular:
        return f"pythonFile {name!r} is not a file: {path}"
    return None


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class ParameterSpec(_Model):
    """One entry of a task's ``supportedParameters``."""

    title: str = ""
    description: str = ""
    default_value: Any = Field(None, alias="defaultValue")
    has_default: bool = False  # ``defaultValue: null`` is a default; a missing key is not
    allow_override: bool = Field(False, alias="allowOverride")
    prompt_user: bool = Field(False, alias="promptUser")


class TaskSpec(_Model):
    """A declared data task, runnable or not (``problems`` says why not)."""

    id: str
    address: str
    app: str | None = None
    name: str = ""
    description: str = ""
    python_file: str = Field("", alias="pythonFile")
    hide_in_ui: bool = Field(False, alias="hideInUI")
    execute_from_root: bool = Field(False, alias="executeFromRoot")
    data_connections: list[str] = Field(default_factory=list, alias="dataConnections")
    supported_parameters: dict[str, ParameterSpec] = Field(
        default_factory=dict, alias="supportedParameters"
    )
    timeout_seconds: float | None = Field(None, alias="timeoutSeconds")
    # Dask resources a run needs on the worker it is placed on (``--launcher dask``).
    resources: dict[str, float] = Field(default_factory=dict)
    source_file: Path
    source_line: int | None = None  # where the entry starts in source_file
    data_tasks_dir: Path
    script_path: Path  # data_tasks_dir / python_file; meaningful only when runnable
    kind: Literal["script", "notebook"] = "script"
    problems: list[str] = Field(default_factory=list)
    # Whether the script file was looked at when loading, and what was wrong with it then.
    _file_checked: bool = PrivateAttr(False)
    _file_problem: str | None = PrivateAttr(None)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def runnable(self) -> bool:
        return not self.problems


class ConnectionParam(_Model):
    """One user-configurable value of a connection (``type: "password"`` is secret)."""

    name: str
    type: str = "text"
    label: str = ""


class ConnectionSpec(_Model):
    """A connection declared in a ``data_connections.json``."""

    id: str
    name: str = ""
    description: str = ""
    testquery: str | None = None
    params: list[ConnectionParam] = Field(default_factory=list)
    app: str | None = None
    source_file: Path | None = None

    @property
    def password_fields(self) -> set[str]:
        return {p.name for p in self.params if p.type.lower() == "password"}


class ScheduledTask(_Model):
    """A ``scheduledDataTasks`` entry, keyed by its name in the file.

    DUFT keys an entry by the task id it runs; an explicit ``task`` field (an address)
    lets several schedules run one task. ``cron`` is the six-field expression (seconds
    first) that :mod:`duftd.config.schedule` made of ``schedule``.
    """

    task: str
    description: str = ""
    schedule: dict[str, Any] = Field(default_factory=dict)
    cron: str = ""


class UserConfig(_Model):
    """``user/config.json``; other top-level keys (``djangoDatabases``...) are kept."""

    data_connection_parameters: dict[str, dict[str, Any]] = Field(
        default_factory=dict, alias="dataConnectionParameters"
    )
    scheduled_data_tasks: dict[str, ScheduledTask] = Field(
        default_factory=dict, alias="scheduledDataTasks"
    )
    settings: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Diagnostic:
    """One finding about the config, precise enough to fix without searching."""

    severity: Severity
    file: str
    message: str
    task_id: str | None = None
    connection_id: str | None = None
    field: str | None = None
    line: int | None = None
    column: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        parts = [where]
        if self.task_id is not None:
            parts.append(f"task {self.task_id}")
        if self.connection_id is not None:
            parts.append(f"connection {self.connection_id}")
        if self.field is not None:
            parts.append(f"field {self.field}")
        parts.append(self.message)
        return ": ".join(parts)


@dataclass
class LoadedConfig:
    """Everything read from one duft-config folder, with what was wrong in it."""

    root: Path
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    system_connections: dict[str, ConnectionSpec] = field(default_factory=dict)
    app_connections: dict[str, dict[str, ConnectionSpec]] = field(default_factory=dict)
    user: UserConfig = field(default_factory=UserConfig)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    identity: tuple[int, int] | None = None  # the folder loaded (loader.folder_identity)
    # resolve.secret_values by (app, declared connections): filled as tasks are submitted.
    secrets_by_scope: dict[tuple[str | None, tuple[str, ...]], tuple[str, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]

    def connections_for(self, task: TaskSpec) -> dict[str, ConnectionSpec]:
        """System connections plus the task's app connections (the app's win)."""
        merged = dict(self.system_connections)
        if task.app is not None:
            merged.update(self.app_connections.get(task.app, {}))
        return merged

    def task(self, address: str) -> TaskSpec:
        """The task at ``address`` (``ID``, ``app:ID``, or an id unique among apps)."""
        found = self.tasks.get(address)
        if found is not None:
            return found
        if ":" not in address:
            in_apps = [t for t in self.tasks.values() if t.app is not None and t.id == address]
            if len(in_apps) == 1:
                return in_apps[0]
            if in_apps:
                choices = ", ".join(sorted(t.address for t in in_apps))
                raise AmbiguousTaskError(
                    f"task id {address!r} exists in several apps of {self.root}: {choices}; "
                    "use one of these qualified addresses"
                )
        raise UnknownTaskError(f"unknown task {address!r} in {self.root}; {self._hint(address)}")

    def runnable_task(self, address: str) -> TaskSpec:
        """Like :meth:`task`, but refuses a task that cannot run, saying why.

        The script file is looked at again now, so a script written (or deleted) since
        the config was loaded counts; the returned spec then carries the fresh problems.
        """
        task = self.task(address)
        if task._file_checked:
            now = script_file_problem(task.data_tasks_dir, task.python_file)
            if now != task._file_problem:
                problems = [p for p in task.problems if p != task._file_problem]
                task = task.model_copy(update={"problems": problems + ([now] if now else [])})
                task._file_problem = now
        if task.problems:
            raise TaskNotRunnableError(
                f"task {task.address} cannot run: {'; '.join(task.problems)} "
                f"(declared in {task.source_file})"
            )
        return task

    def _hint(self, address: str) -> str:
        names = set(self.tasks) | {t.id for t in self.tasks.values()}
        close: list[str] = []
        for name in difflib.get_close_matches(address, sorted(names), n=5, cutoff=0.6):
            close += [a for a, t in sorted(self.tasks.items()) if name in (a, t.id)]
        folded = address.casefold().rsplit(":", 1)[-1]
        close += [a for a, t in sorted(self.tasks.items()) if t.id.casefold() == folded]
        close = list(dict.fromkeys(close))[:8]
        if close:
            return f"did you mean {', '.join(close)}? (`duft validate` lists every task)"
        return (
            "tasks are declared in system/data_tasks.json (address: ID) and "
            "apps/<app>/data_tasks.json (address: app:ID); `duft validate` lists them"
        )
