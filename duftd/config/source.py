"""Reading config JSON so every finding can name its file and line.

``json.loads`` forgets positions; :func:`parse_json` keeps the line of every object
(and its duplicate keys) so a diagnostic about a task points at the task's line. The
:class:`Reporter` collects diagnostics for one load.
"""

from __future__ import annotations

import difflib
import gc
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from duftd.config.model import Diagnostic, Severity

Where = tuple[int | None, int | None]
NOWHERE: Where = (None, None)


def json_type(value: Any) -> str:
    """``a string``, ``an object``... for messages about the wrong JSON type."""
    for kind, name in ((bool, "a boolean"), (int | float, "a number"), (str, "a string")):
        if isinstance(value, kind):
            return name
    return {list: "an array", dict: "an object"}.get(type(value), "null")


def unknown_hint(key: str, known: set[str]) -> str:
    """Text after ``unknown field 'x'``: a likely misspelling, or that it is kept."""
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.7)
    return f"; did you mean {close[0]}?" if close else " (kept, but duftd does not use it)"


def keep_extra(model: Any, raw: dict[str, Any], known: set[str]) -> None:
    """Keep unknown JSON fields on a model (``extra="allow"``) unless they shadow a field."""
    extra = model.__pydantic_extra__
    for key in set(raw) - known:
        if key not in type(model).model_fields:
            extra[key] = raw[key]


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a config is built, then freeze what it built.

    Loading makes a large tree of new objects, and the collector would walk it again and
    again as it grows: a third of a 5,000-task load, each pass holding the GIL that the
    daemon's control loop waits for. A config lives until the next reload, so it is moved
    out of the collector's reach afterwards (as the daemon does with everything loaded at
    start-up); else the first collection would walk all of it at once. Reference counting
    still frees what is dropped.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


# Text up to the next brace outside a JSON string (strings are skipped whole).
_TO_BRACE = re.compile(r'[^"{}]*(?:"[^"\\]*(?:\\.[^"\\]*)*"[^"{}]*)*([{}])')


def object_positions(text: str) -> list[Where]:
    """The line and column of each object's ``{`` in valid JSON, in the order the
    objects close; one pass, counting newlines only between one brace and the next."""
    positions: list[Where] = []
    open_braces: list[Where] = []
    line, line_start, counted_to = 1, 0, 0
    for match in _TO_BRACE.finditer(text):
        offset = match.end() - 1
        if match.group(1) == "{":
            if (newlines := text.count("\n", counted_to, offset)) > 0:
                line += newlines
                line_start = text.rfind("\n", counted_to, offset) + 1
            counted_to = offset
            open_braces.append((line, offset - line_start + 1))
        else:
            positions.append(open_braces.pop())
    return positions


def parse_json(text: str) -> tuple[Any, dict[int, Where], list[tuple[Where, list[str]]]]:
    """``json.loads`` that also returns each object's position and its duplicate keys.

    The C decoder calls ``object_pairs_hook`` once per object as it closes, so the n-th
    call belongs to the n-th object of :func:`object_positions`: positions cost one regex
    pass instead of the pure-Python scanner, which was twice as slow.
    """
    objects: list[dict[str, Any]] = []
    repeated: list[tuple[int, list[str]]] = []  # (object number, its repeated keys)

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)  # the later value wins, as in DUFT
        if len(obj) < len(items):
            seen: set[str] = set()
            keys = [key for key, _ in items if key in seen or seen.add(key)]  # type: ignore[func-returns-value]
            repeated.append((len(objects), keys))
        objects.append(obj)
        return obj

    data = json.loads(text, object_pairs_hook=pairs)
    at = object_positions(text)
    positions = {id(obj): where for obj, where in zip(objects, at, strict=True)}
    return data, positions, [(at[number], keys) for number, keys in repeated]


@dataclass
class JsonDoc:
    """One parsed file; ``data`` stays referenced so the ids in ``positions`` stay valid."""

    rel: str
    data: Any
    positions: dict[int, Where]

    def where(self, obj: Any, default: Where = NOWHERE) -> Where:
        return self.positions.get(id(obj), default)


class Reporter:
    """Collects the diagnostics of one load; reads JSON files, reporting what is wrong."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.diagnostics: list[Diagnostic] = []

    def report(
        self,
        severity: Severity,
        file: str,
        message: str,
        *,
        task: str | None = None,
        connection: str | None = None,
        field: str | None = None,
        where: Where = NOWHERE,
    ) -> None:
        diagnostic = Diagnostic(severity, file, message, task, connection, field, *where)
        self.diagnostics.append(diagnostic)

    def rel(self, path: Path) -> str:
        """``path`` relative to the config root when inside it, as in diagnostics."""
        inside = path.is_relative_to(self.root)
        return path.relative_to(self.root).as_posix() if inside else str(path)

    def read_json(self, path: Path) -> JsonDoc | None:
        """The parsed file, or None when it is absent or unreadable (then reported)."""
        rel = self.rel(path)
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.report("error", rel, f"cannot read the file: {exc.strerror}")
            return None
        except UnicodeDecodeError as exc:
            self.report("error", rel, f"not UTF-8 text (bad byte at offset {exc.start})")
            return None
        skipped = "nothing in this file was loaded"
        try:
            data, positions, duplicates = parse_json(text)
        except json.JSONDecodeError as exc:
            where = (exc.lineno, exc.colno)
            self.report("error", rel, f"invalid JSON: {exc.msg}; {skipped}", where=where)
            return None
        except RecursionError:
            self.report("error", rel, f"JSON nested too deeply; {skipped}")
            return None
        doc = JsonDoc(rel, data, positions)
        for where, keys in duplicates:
            for key in keys:
                message = f"duplicate key {key!r} in one object; the later value is used"
                self.report("warning", rel, message, field=key, where=where)
        return doc

    def entries(self, doc: JsonDoc, key: str) -> list[Any]:
        """The list of a ``{"<key>": [...]}`` file, or [] with an error."""
        data = doc.data
        if isinstance(data, dict) and isinstance(data.get(key), list):
            for extra in sorted(set(data) - {key}):
                message = f"unknown top-level field {extra!r}"
                self.report("warning", doc.rel, message, field=extra, where=doc.where(data))
            return data[key]
        if not isinstance(data, dict):
            found = f"the top level is {json_type(data)}"
        elif key not in data:
            found = f"{key} is missing"
        else:
            found = f"{key} is {json_type(data[key])}"
        message = f'expected {{"{key}": [...]}}, but {found}; nothing in this file was loaded'
        self.report("error", doc.rel, message, field=key, where=doc.where(data))
        return []
