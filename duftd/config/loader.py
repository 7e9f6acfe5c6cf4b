"""Load a duft-config folder into a :class:`LoadedConfig`, with precise diagnostics.

Real configs are messy, so loading never raises for content: it loads what it can and
records a :class:`Diagnostic` (file, line, task, connection, field) for the rest. An
error drops one entry (invalid JSON drops its file) or makes one task not runnable; a
warning never stops anything. Decisions where DESIGN.md is silent:

- Apps are the folders under ``apps/``; each may have ``data_tasks.json`` and
  ``data_connections.json``. A missing ``data_connections.json`` or
  ``user/config.json`` is fine (nothing declared, no user values).
- A task whose id or app name makes a bad address is kept (not runnable) unless its
  address clashes with a well-named task's.
- ``allowQueryEngine`` is a string (``"True"``) in DUFT itself: kept as written, no
  warning. Duplicate JSON keys (the later value wins, as in DUFT) are warned about.
- A repeated connection id in one file is an error; the first entry is used.
- Per connection id, one warning when used by tasks but without user values.
- A ``scheduledDataTasks`` entry whose cron can never fire is an error (the entry is
  dropped); one naming an unknown task is a warning.

Its size is the diagnostics: each field of each file has its own clear message.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from pathlib import Path
from typing import Any

from dte_tools.redact import MIN_SECRET_LENGTH, short_secrets
from duftd.config.model import (
    ConnectionParam,
    ConnectionSpec,
    LoadedConfig,
    ScheduledTask,
    TaskSpec,
    UserConfig,
)
from duftd.config.schedule import ScheduleError, cron_text
from duftd.config.source import (
    JsonDoc,
    Reporter,
    Where,
    collector_paused,
    json_type,
    keep_extra,
    unknown_hint,
)
from duftd.config.tasks import name_problem, read_task_file
from duftd.errors import ConfigError, DuftError

CONNECTION_MODELLED = {"id", "name", "description", "params", "testquery"}
CONNECTION_FIELDS = CONNECTION_MODELLED | {"allowQueryEngine", "type"}  # known to DUFT, kept
CONNECTION_PARAM_FIELDS = {"name", "type", "label"}
USER_SECTIONS = ("dataConnectionParameters", "scheduledDataTasks", "settings")


def load_config(root: Path) -> LoadedConfig:
    """Read ``root``; raises :class:`ConfigError` only when it is no duft-config folder."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder; give the path of a duft-config folder")
    if not (root / "system").is_dir():
        raise ConfigError(
            f"{root} is not a duft-config folder: it has no system/ folder "
            "(expected system/data_tasks.json)"
        )
    with collector_paused():
        config = _Loader(root.resolve()).load()
    config.identity = folder_identity(config.root)
    return config


def folder_identity(root: Path) -> tuple[int, int] | None:
    """Which folder ``root`` is now (device, inode): a folder swapped in by rename differs."""
    try:
        status = root.stat()
    except OSError:
        return None
    return (status.st_dev, status.st_ino)


class _Loader(Reporter):
    def load(self) -> LoadedConfig:
        config = LoadedConfig(root=self.root, diagnostics=self.diagnostics)
        system = self.root / "system"
        found: list[TaskSpec] = []
        if (system / "data_tasks.json").is_file():
            found += read_task_file(self, system / "data_tasks.json", None)
        else:
            self.report("error", "system/data_tasks.json", 'missing; create it: {"dataTasks": []}')
        config.system_connections = self.connection_file(system / "data_connections.json", None)
        apps = self.root / "apps"
        try:
            app_dirs = sorted(p for p in apps.iterdir() if p.is_dir()) if apps.is_dir() else []
        except OSError as exc:
            self.report("error", "apps", f"cannot list the app folders: {exc.strerror}")
            app_dirs = []
        for app_dir in app_dirs:
            found += read_task_file(self, app_dir / "data_tasks.json", app_dir.name)
            conns = self.connection_file(app_dir / "data_connections.json", app_dir.name)
            if conns:
                config.app_connections[app_dir.name] = conns
        self.place_tasks(config, found)
        config.user = self.user_file(self.root / "user" / "config.json")
        self.check_shared_ids(found)
        self.check_connections(config)
        self.check_schedules(config)
        return config

    # -- connections and user values ------------------------------------------------

    def connection_file(self, path: Path, app: str | None) -> dict[str, ConnectionSpec]:
        doc = self.read_json(path)
        if doc is None:
            return {}
        connections: dict[str, ConnectionSpec] = {}
        for index, raw in enumerate(self.entries(doc, "dataConnections")):
            where = doc.where(raw)
            cid = raw.get("id") if isinstance(raw, dict) else None
            if not isinstance(cid, str) or not cid:
                message = f"dataConnections[{index}] is not an object with a string id; ignored"
                self.report("error", doc.rel, message, field="id", where=where)
                continue
            if cid in connections:
                message = f"dataConnections[{index}] repeats id {cid!r}; the first is used"
                self.report("error", doc.rel, message, connection=cid, field="id", where=where)
                continue
            connections[cid] = self.connection(doc, raw, cid, app, path, where)
        return connections

    def connection(
        self, doc: JsonDoc, raw: dict[str, Any], cid: str, app: str | None, path: Path, at: Where
    ) -> ConnectionSpec:
        def warn(field: str, message: str, where: Where = at) -> None:
            self.report("warning", doc.rel, message, connection=cid, field=field, where=where)

        for key in sorted(set(raw) - CONNECTION_FIELDS):
            warn(key, f"unknown field {key!r}{unknown_hint(key, CONNECTION_FIELDS)}")
        texts: dict[str, Any] = {k: raw.get(k) for k in ("name", "description", "testquery")}
        for key, value in texts.items():
            if value is not None and not isinstance(value, str):
                warn(key, f"{key} should be a string, found {json_type(value)}; ignored")
                texts[key] = None
        raw_params = raw.get("params", [])
        if not isinstance(raw_params, list):
            warn("params", f"params must be a list, found {json_type(raw_params)}; ignored")
            raw_params = []
        params: list[ConnectionParam] = []
        for i, p in enumerate(raw_params):
            where = doc.where(p, at)
            if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not p["name"]:
                warn(f"params[{i}]", f"params[{i}] is not an object with a name; ignored", where)
                continue
            for key in sorted(set(p) - CONNECTION_PARAM_FIELDS):
                warn(f"params[{i}].{key}", f"unknown field {key!r} in a connection param", where)
            kind, label = p.get("type", "text"), p.get("label", "")
            params.append(
                ConnectionParam(
                    name=p["name"],
                    type=kind if isinstance(kind, str) else "text",
                    label=label if isinstance(label, str) else "",
                )
            )
        spec = ConnectionSpec(
            id=cid,
            name=texts["name"] or cid,
            description=texts["description"] or "",
            testquery=texts["testquery"],
            params=params,
            app=app,
            source_file=path,
        )
        keep_extra(spec, raw, CONNECTION_MODELLED)
        return spec

    def user_file(self, path: Path) -> UserConfig:
        doc = self.read_json(path)
        if doc is None:
            return UserConfig()
        if not isinstance(doc.data, dict):
            self.report("error", doc.rel, f"expected an object, found {json_type(doc.data)}")
            return UserConfig()
        sections: dict[str, dict[str, Any]] = {}
        for key in USER_SECTIONS:
            value = doc.data.get(key, {})
            if not isinstance(value, dict):
                message = f"{key} must be an object, found {json_type(value)}; ignored"
                self.report("error", doc.rel, message, field=key, where=doc.where(doc.data))
                value = {}
            sections[key] = value
        values: dict[str, dict[str, Any]] = {}
        for cid, entry in sections["dataConnectionParameters"].items():
            if isinstance(entry, dict):
                values[cid] = entry
                continue
            message = f"values for {cid!r} must be an object, found {json_type(entry)}; ignored"
            field = "dataConnectionParameters"
            self.report("error", doc.rel, message, connection=cid, field=field)
        schedules: dict[str, ScheduledTask] = {}
        for name, entry in sections["scheduledDataTasks"].items():
            schedule = entry.get("schedule", {}) if isinstance(entry, dict) else None
            if not isinstance(entry, dict) or not isinstance(schedule, dict):
                message = "must be an object with a schedule object; ignored"
                field = f"scheduledDataTasks.{name}"
                where = doc.where(entry)
                self.report("error", doc.rel, message, task=name, field=field, where=where)
                continue
            description, task = entry.get("description"), entry.get("task")
            where = doc.where(entry)
            try:
                cron = cron_text(schedule)
            except ScheduleError as error:
                field = f"scheduledDataTasks.{name}.schedule"
                message = f"{error}; this schedule never fires"
                self.report("error", doc.rel, message, task=name, field=field, where=where)
                continue
            item = ScheduledTask(
                task=task if isinstance(task, str) and task else name,
                description=description if isinstance(description, str) else "",
                schedule=schedule,
                cron=cron,
            )
            keep_extra(item, entry, {"description", "schedule", "task"})
            schedules[name] = item
        user = UserConfig(
            data_connection_parameters=values,
            scheduled_data_tasks=schedules,
            settings=sections["settings"],
        )
        keep_extra(user, doc.data, set(USER_SECTIONS))
        return user

    # -- across files ----------------------------------------------------------------

    def warn_at_task(self, spec: TaskSpec, message: str, **kwargs: Any) -> None:
        where = (spec.source_line, None)
        self.report("warning", self.rel(spec.source_file), message, where=where, **kwargs)

    def place_tasks(self, config: LoadedConfig, found: list[TaskSpec]) -> None:
        """Index tasks by address; well-named ones first, so a bad id cannot take a key."""
        bad = {id(t) for t in found if name_problem(t.id) or name_problem(t.app or "-")}
        for task in sorted(found, key=lambda t: id(t) in bad):  # stable: file order kept
            if task.address in config.tasks:
                message = f"address {task.address!r} clashes with another task; ignored"
                rel, where = self.rel(task.source_file), (task.source_line, None)
                self.report("error", rel, message, task=task.id, field="id", where=where)
                continue
            config.tasks[task.address] = task

    def check_shared_ids(self, found: list[TaskSpec]) -> None:
        """Explain how to address tasks whose ids appear in several files."""
        by_id: dict[str, list[TaskSpec]] = defaultdict(list)
        for task in found:
            by_id[task.id].append(task)
        for tid, tasks in by_id.items():
            in_system = any(t.app is None for t in tasks)
            for task in (t for t in tasks if t.app is not None and len(tasks) > 1):
                others = ", ".join(self.rel(t.source_file) for t in tasks if t is not task)
                meaning = "addresses the system task" if in_system else "is ambiguous"
                message = (
                    f"id also declared in {others}: the bare id {tid} {meaning}; "
                    f"address this one as {task.address}"
                )
                self.warn_at_task(task, message, task=tid, field="id")

    def check_connections(self, config: LoadedConfig) -> None:
        user_rel = self.rel(self.root / "user" / "config.json")
        values = config.user.data_connection_parameters
        used: dict[str, list[str]] = defaultdict(list)
        for task in config.tasks.values():
            declared = config.connections_for(task)
            for cid in task.data_connections:
                if cid in declared:
                    used[cid].append(task.address)
                    continue
                files = "system/data_connections.json"
                if task.app is not None:
                    files += f" or apps/{task.app}/data_connections.json"
                resolves = "its values in user/config.json" if cid in values else "{} (no values)"
                message = (
                    f"connection {cid!r} is not declared in {files}; it resolves to {resolves}"
                )
                field = "dataConnections"
                self.warn_at_task(task, message, task=task.id, connection=cid, field=field)
        declared_ids = set(config.system_connections)
        for conns in config.app_connections.values():
            declared_ids |= set(conns)
        listed = {cid for t in config.tasks.values() for cid in t.data_connections}
        field = "dataConnectionParameters"
        for cid in values:
            if cid in declared_ids:
                continue
            close = difflib.get_close_matches(cid, sorted(declared_ids), n=1, cutoff=0.6)
            message = f"values stored under {cid!r}, which no data_connections.json declares"
            message += f" (did you mean {close[0]}?)" if close else ""
            message += "" if cid in listed else "; no task can receive them"
            self.report("warning", user_rel, message, connection=cid, field=field)
        for cid, entry in values.items():
            spec = config.system_connections.get(cid) or next(
                (c[cid] for c in config.app_connections.values() if cid in c), None
            )
            fields = spec.password_fields if spec is not None else set()
            for key in short_secrets(entry, fields):
                message = (
                    f"the {key} value is shorter than {MIN_SECRET_LENGTH} characters, so it is "
                    "not treated as a password (not masked in logs); set a longer one"
                )
                self.report("warning", user_rel, message, connection=cid, field=f"{field}.{key}")
        for cid, addresses in used.items():
            if cid not in values:
                message = (
                    f"connection {cid!r} is used by {', '.join(addresses)} but has no values "
                    "here; it resolves to {}"
                )
                self.report("warning", user_rel, message, connection=cid, field=field)

    def check_schedules(self, config: LoadedConfig) -> None:
        user_rel = self.rel(self.root / "user" / "config.json")
        for name, item in config.user.scheduled_data_tasks.items():
            field = f"scheduledDataTasks.{name}"
            try:
                config.task(item.task)  # a task that cannot run is reported at the task
            except DuftError as exc:
                message = f"schedules a task that cannot be found: {exc}"
                self.report("warning", user_rel, message, task=item.task, field=field)
