"""Reading config JSON so every finding can name its file and line.

``json.loads`` forgets positions; :func:`parse_json` keeps the offset of every object
(and its duplicate keys) so a diagnostic about a task points at the task's line. The
:class:`Reporter` collects diagnostics for one load.
"""

from __future__ import annotations

import difflib
import json
import json.decoder
import json.scanner
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


def parse_json(text: str) -> tuple[Any, dict[int, int], list[tuple[int, list[str]]]]:
    """``json.loads`` that also returns each object's offset and its duplicate keys."""
    offsets: dict[int, int] = {}
    duplicates: list[tuple[int, list[str]]] = []
    pending: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in items:
            if key in obj:
                pending.append(key)
            obj[key] = value
        return obj

    def parse_object(s_and_end: tuple[str, int], *args: Any) -> tuple[Any, int]:
        obj, end = json.decoder.JSONObject(s_and_end, *args)  # type: ignore[attr-defined]
        offsets[id(obj)] = s_and_end[1] - 1
        if pending:  # nested objects took theirs already: these are obj's own
            duplicates.append((s_and_end[1] - 1, pending[:]))
            pending.clear()
        return obj, end

    decoder = json.JSONDecoder(object_pairs_hook=pairs)
    decoder.parse_object = parse_object  # type: ignore[assignment]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # the C scanner has no hook
    return decoder.decode(text), offsets, duplicates


@dataclass
class JsonDoc:
    """One parsed file; ``data`` stays referenced so the ids in ``offsets`` stay valid."""

    rel: str
    data: Any
    text: str
    offsets: dict[int, int]

    def line_col(self, offset: int) -> Where:
        return self.text.count("\n", 0, offset) + 1, offset - self.text.rfind("\n", 0, offset)

    def where(self, obj: Any, default: Where = NOWHERE) -> Where:
        offset = self.offsets.get(id(obj))
        return default if offset is None else self.line_col(offset)


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
            data, offsets, duplicates = parse_json(text)
        except json.JSONDecodeError as exc:
            where = (exc.lineno, exc.colno)
            self.report("error", rel, f"invalid JSON: {exc.msg}; {skipped}", where=where)
            return None
        except RecursionError:
            self.report("error", rel, f"JSON nested too deeply; {skipped}")
            return None
        doc = JsonDoc(rel, data, text, offsets)
        for offset, keys in duplicates:
            for key in keys:
                message = f"duplicate key {key!r} in one object; the later value is used"
                self.report("warning", rel, message, field=key, where=doc.line_col(offset))
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
