"""Reading ``data_tasks.json`` entries into :class:`TaskSpec`, one task's faults at a time.

A fault in one entry never hides the others. An *error* in a task's own fields makes
that task not runnable (``problems``); a *warning* never does. Decisions where DESIGN.md
is silent:

- A task's own bad structure (bad ``pythonFile``, ``dataConnections`` not a list of ids,
  a parameter that is not an object, a bad ``timeoutSeconds``) makes it not runnable:
  running it anyway would fail later and less clearly.
- Task ids and app folder names become addresses (``ID`` / ``app:ID``) used in PUB
  topics and URLs, so ``/``, ``:``, whitespace, control characters, ``.`` and ``..``
  are refused there.
- Flags written as strings (``"True"``) or 0/1 read as booleans, with a warning;
  anything else reads as false (for ``allowOverride`` the safe side).
- ``pythonFile`` suffixes are matched case-insensitively (``.PY`` is a script).

Its size is the leniency above: each tolerated deviation of a published file has its
own check and warning, next to the rule it bends.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path, PureWindowsPath
from typing import Any

from dte_tools.wire import MAX_NAME_LENGTH
from duftd.config.model import ParameterSpec, TaskSpec, folder_listing, script_file_problem
from duftd.config.source import JsonDoc, Reporter, Where, json_type, keep_extra, unknown_hint

TASK_FIELDS = {
    "id", "name", "description", "pythonFile", "hideInUI", "executeFromRoot",
    "dataConnections", "supportedParameters", "timeoutSeconds", "resources",
}  # fmt: skip
PARAMETER_FIELDS = {"title", "description", "defaultValue", "allowOverride", "promptUser"}
SCRIPT_KINDS = {".py": "script", ".ipynb": "notebook"}
_BAD_NAME_CHAR = re.compile(r"[\s/:\x00-\x1f\x7f-\x9f]")


def name_problem(name: str) -> str | None:
    """Why ``name`` (a task id or app folder) cannot be part of an address, or None."""
    if name in (".", ".."):
        return f"is {name!r}"
    bad = _BAD_NAME_CHAR.search(name)
    if bad is None:
        return None
    char = bad.group()
    shown = "a space" if char == " " else repr(char) if char in "/:" else f"U+{ord(char):04X}"
    return f"contains {shown}"


def python_file_problem(folder: Path, name: str) -> str | None:
    """Why a ``pythonFile`` value is not a bare script name (the file is checked apart)."""
    must = f"pythonFile {name!r} must be a bare file name inside {folder}"
    if not name.strip():
        return "pythonFile is empty; name the .py or .ipynb file in data_tasks/"
    if any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in name):
        return f"pythonFile {name!r} contains control characters"
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return f"{must}, not an absolute path"
    if "/" in name or "\\" in name:
        return f"{must}, without folders"
    if name in (".", ".."):
        return must
    if Path(name).suffix.lower() not in SCRIPT_KINDS:
        return f"pythonFile {name!r} must end in .py or .ipynb"
    return None


def read_task_file(reporter: Reporter, path: Path, app: str | None) -> list[TaskSpec]:
    """Every usable entry of one ``data_tasks.json`` (first wins on a repeated id)."""
    doc = reporter.read_json(path)
    if doc is None:
        return []
    tasks: list[TaskSpec] = []
    seen: dict[str, tuple[int, Where]] = {}
    scripts = folder_listing(path.parent / "data_tasks")
    for index, raw in enumerate(reporter.entries(doc, "dataTasks")):
        where = doc.where(raw)
        if not isinstance(raw, dict):
            message = f"dataTasks[{index}] must be an object, found {json_type(raw)}"
            reporter.report("error", doc.rel, message, field=f"dataTasks[{index}]", where=where)
            continue
        tid = raw.get("id")
        if not isinstance(tid, str) or not tid:
            message = f"dataTasks[{index}] has no string id (found {tid!r}); the entry is ignored"
            reporter.report("error", doc.rel, message, field="id", where=where)
            continue
        if tid in seen:
            first, first_where = seen[tid]
            message = (
                f"duplicate id: dataTasks[{index}] (line {where[0]}) repeats dataTasks[{first}] "
                f"(line {first_where[0]}); the first is used, this one is ignored"
            )
            reporter.report("error", doc.rel, message, task=tid, field="id", where=where)
            continue
        seen[tid] = (index, where)
        tasks.append(_TaskBuilder(reporter, doc, path, app, raw, tid, where, scripts).build())
    return tasks


class _TaskBuilder:
    """Turns one raw ``dataTasks`` entry into a :class:`TaskSpec`, reporting as it goes."""

    def __init__(
        self,
        reporter: Reporter,
        doc: JsonDoc,
        path: Path,
        app: str | None,
        raw: dict[str, Any],
        tid: str,
        where: Where,
        scripts: dict[str, os.DirEntry[str]],
    ) -> None:
        self.reporter, self.doc, self.path, self.app = reporter, doc, path, app
        self.raw, self.tid, self.where = raw, tid, where
        self.scripts = scripts  # the data_tasks/ folder's listing
        self.problems: list[str] = []

    def error(self, field: str | None, message: str, at: Where | None = None) -> None:
        self.problems.append(message)
        self._report("error", field, message, at)

    def warn(self, field: str | None, message: str, at: Where | None = None) -> None:
        self._report("warning", field, message, at)

    def _report(self, severity: Any, field: str | None, message: str, at: Where | None) -> None:
        where = at or self.where
        self.reporter.report(
            severity, self.doc.rel, message, task=self.tid, field=field, where=where
        )

    def build(self) -> TaskSpec:
        raw, tid, app = self.raw, self.tid, self.app
        topics = "it goes into event topics ev/<address>/<run>/; use letters, digits, - _ ."
        if problem := name_problem(tid):
            self.error("id", f"task id {tid!r} {problem}: {topics}")
        if app is not None and (problem := name_problem(app)):
            self.error(None, f"app folder name {app!r} {problem}: {topics}")
        address = tid if app is None else f"{app}:{tid}"
        if len(address) > MAX_NAME_LENGTH:
            self.error(
                "id",
                f"task address {address[:40]!r}... is {len(address)} characters; requests on "
                f"the bus accept at most {MAX_NAME_LENGTH}: use a shorter id",
            )
        for key in sorted(set(raw) - TASK_FIELDS):
            self.warn(key, f"unknown field {key!r}{unknown_hint(key, TASK_FIELDS)}")
        folder = self.path.parent / "data_tasks"
        python_file = raw.get("pythonFile")
        file_checked, file_problem = False, None
        if not isinstance(python_file, str):
            found = "missing" if python_file is None else f"{json_type(python_file)}, not a name"
            self.error("pythonFile", f"pythonFile is {found}; name the .py or .ipynb file")
            python_file = ""
        elif problem := python_file_problem(folder, python_file):
            self.error("pythonFile", problem)
        else:
            if " " in python_file:
                message = (
                    f"pythonFile {python_file!r} contains a space: it runs, but quote it in shells"
                )
                self.warn("pythonFile", message)
            file_checked, file_problem = (
                True,
                script_file_problem(folder, python_file, self.scripts),
            )
            if file_problem:
                self.error("pythonFile", file_problem)
        task = TaskSpec(
            id=tid,
            address=tid if app is None else f"{app}:{tid}",
            app=app,
            name=self.text("name", tid),
            description=self.text("description", ""),
            python_file=python_file,
            hide_in_ui=self.flag("hideInUI", raw.get("hideInUI")),
            execute_from_root=self.flag("executeFromRoot", raw.get("executeFromRoot")),
            data_connections=self.connections(),
            supported_parameters=self.parameters(),
            timeout_seconds=self.timeout(),
            resources=self.resources(),
            source_file=self.path,
            source_line=self.where[0],
            data_tasks_dir=folder,
            script_path=folder / python_file,
            kind=SCRIPT_KINDS.get(Path(python_file).suffix.lower(), "script"),
            problems=self.problems,
        )
        keep_extra(task, raw, TASK_FIELDS)
        task._file_checked, task._file_problem = file_checked, file_problem
        return task

    def text(self, key: str, default: str) -> str:
        value = self.raw.get(key)
        if value is None or isinstance(value, str):
            return value or default
        self.warn(key, f"{key} should be a string, found {json_type(value)}; read as text")
        return json.dumps(value)

    def flag(self, field: str, value: Any, at: Where | None = None) -> bool:
        if value is None or isinstance(value, bool):
            return bool(value)
        text = value.strip().lower() if isinstance(value, str) else value
        if text in ("true", "false", 0, 1):
            result = "true" if text in ("true", 1) else "false"
            self.warn(field, f"{field} is {value!r}, not {result}; read as {result}", at)
            return result == "true"
        self.warn(field, f"{field} should be true or false, found {value!r}; read as false", at)
        return False

    def connections(self) -> list[str]:
        value = self.raw.get("dataConnections")
        if value is None:
            return []
        if not isinstance(value, list):
            message = f"dataConnections must be a list of connection ids, found {json_type(value)}"
            self.error("dataConnections", message)
            return []
        ids: list[str] = []
        for i, cid in enumerate(value):
            if not isinstance(cid, str) or not cid:
                self.error(f"dataConnections[{i}]", f"connection id {cid!r} is not a string id")
            elif cid in ids:
                self.warn("dataConnections", f"connection {cid!r} is listed twice")
            else:
                ids.append(cid)
        return ids

    def parameters(self) -> dict[str, ParameterSpec]:
        value = self.raw.get("supportedParameters")
        if value is None:
            return {}
        if not isinstance(value, dict):
            found = json_type(value)
            message = f"supportedParameters must be an object (name -> spec), found {found}"
            self.error("supportedParameters", message)
            return {}
        params: dict[str, ParameterSpec] = {}
        for name, raw in value.items():
            field = f"supportedParameters.{name}"
            at = self.doc.where(raw, self.where)
            if not isinstance(raw, dict):
                message = f"parameter {name!r} must be an object, found {json_type(raw)}"
                self.error(field, message, at)
                continue
            for key in sorted(set(raw) - PARAMETER_FIELDS):
                self.warn(
                    f"{field}.{key}",
                    f"unknown field {key!r}{unknown_hint(key, PARAMETER_FIELDS)}",
                    at,
                )
            allow = self.flag(f"{field}.allowOverride", raw.get("allowOverride"), at)
            prompt = self.flag(f"{field}.promptUser", raw.get("promptUser"), at)
            if "defaultValue" not in raw:
                consequence = (
                    "it is passed on only when a caller gives it"
                    if allow
                    else "and allowOverride is false, so it is never passed on"
                )
                self.warn(field, f"parameter {name!r} has no defaultValue: {consequence}", at)
            if prompt and not allow:
                message = (
                    "promptUser is true but allowOverride is false: a prompted value is ignored"
                )
                self.warn(field, message, at)
            title, description = raw.get("title"), raw.get("description")
            spec = ParameterSpec(
                title=title if isinstance(title, str) else name,
                description=description if isinstance(description, str) else "",
                default_value=raw.get("defaultValue"),
                has_default="defaultValue" in raw,
                allow_override=allow,
                prompt_user=prompt,
            )
            keep_extra(spec, raw, PARAMETER_FIELDS)
            params[name] = spec
        return params

    def timeout(self) -> float | None:
        value = self.raw.get("timeoutSeconds")
        if value is None:
            return None
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value <= 0:
            message = f"timeoutSeconds must be a positive number of seconds, found {value!r}"
            self.error("timeoutSeconds", message)
            return None
        return float(value)

    def resources(self) -> dict[str, float]:
        """Dask resources (``{"memory_gb": 8}``): names with positive amounts."""
        value = self.raw.get("resources")
        if value is None:
            return {}
        if not isinstance(value, dict):
            message = (
                "resources must be an object of resource names and amounts "
                f'(e.g. {{"memory_gb": 8}}), found {json_type(value)}'
            )
            self.error("resources", message)
            return {}
        amounts: dict[str, float] = {}
        for name, amount in value.items():
            number = isinstance(amount, int | float) and not isinstance(amount, bool)
            problem = name_problem(name) if name else "is empty"
            if problem:
                self.error("resources", f"resource name {name!r} {problem}")
            elif not number or not math.isfinite(amount) or amount <= 0:
                message = f"resource {name!r} must be a positive number, found {amount!r}"
                self.error(f"resources.{name}", message)
            else:
                amounts[name] = float(amount)
        return amounts
