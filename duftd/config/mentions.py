"""Connections a task's source names but its ``dataConnections`` do not list.

duftd hands such a connection over with a warning on the run (as DUFT does) unless strict;
``duft validate`` finds them ahead of time by looking for each known connection id as a
quoted string in the task's script, or in a notebook's code cells.
"""

from __future__ import annotations

import json
import re

from duftd.config.model import Diagnostic, LoadedConfig, TaskSpec


def undeclared_mentions(config: LoadedConfig) -> list[Diagnostic]:
    """One warning per runnable task and connection id its source quotes undeclared."""
    found: list[Diagnostic] = []
    for task in config.tasks.values():
        if not task.runnable:
            continue
        known = set(config.connections_for(task)) | set(config.user.data_connection_parameters)
        source = _source(task)
        for cid in sorted(known - set(task.data_connections)):
            if re.search(rf"""(['"]){re.escape(cid)}\1""", source):
                found.append(
                    Diagnostic(
                        "warning",
                        str(task.source_file),
                        f"{task.python_file} reads connection {cid!r}, which dataConnections "
                        "does not list; add it (duftd hands it over with a warning, and "
                        "refuses it with --strict-connections)",
                        task_id=task.address,
                        connection_id=cid,
                        field="dataConnections",
                        line=task.source_line,
                    )
                )
    return found


def _source(task: TaskSpec) -> str:
    try:
        text = task.script_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    if task.kind != "notebook":
        return text
    try:
        cells = json.loads(text).get("cells", [])
        return "\n".join(
            "".join(c.get("source", "")) for c in cells if c.get("cell_type") == "code"
        )
    except (ValueError, AttributeError, TypeError):
        return text
