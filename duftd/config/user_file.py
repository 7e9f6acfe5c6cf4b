"""Writing connection values into ``user/config.json``, safely.

The file holds the user's secrets and other programs' settings (DUFT Server's
``djangoDatabases``...), so a write must never lose or reorder anything else and must
never leave a half-written file behind:

- The document is parsed with key order kept, one connection's values are updated
  (existing keys stay where they are, new ones are appended) and it is written back
  with the indentation, final newline and byte-order mark it had.
- The new text goes to a temporary file in the same folder, is flushed to disk, gets
  the old file's permissions, and replaces the old file with ``os.replace`` (through
  ``Path.replace``; atomic on one file system), so a reader sees the old file or the new
  one, never a mix.
- A file that is not valid JSON, or whose ``dataConnectionParameters`` is not an
  object, is refused untouched: rewriting it would throw away what the user wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from duftd.errors import ConfigError

SECTION = "dataConnectionParameters"
BOM = "\ufeff"


def user_config_path(root: Path) -> Path:
    return Path(root) / "user" / "config.json"


def indent_of(text: str) -> str:
    """The indentation unit of a JSON text (its first indented line), default two spaces."""
    for line in text.splitlines()[1:]:
        body = line.lstrip(" \t")
        if body and len(body) < len(line):
            return line[: len(line) - len(body)]
    return "  "


def set_connection_values(root: Path, connection_id: str, values: dict[str, Any]) -> Path:
    """Merge ``values`` into ``dataConnectionParameters[connection_id]``; returns the file."""
    path = user_config_path(root)
    if path.is_symlink():
        path = path.resolve()  # write the real file, keep the link
    text, bom = "", ""
    if path.exists():
        raw = path.read_bytes().decode("utf-8")
        bom, text = (BOM, raw[1:]) if raw.startswith(BOM) else ("", raw)
    if text.strip():
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: "
                f"{error.msg}); fix it first, nothing was written"
            ) from None
    else:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path} must hold a JSON object; nothing was written")
    section = document.setdefault(SECTION, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{SECTION} in {path} must be an object; nothing was written")
    entry = section.setdefault(connection_id, {})
    if not isinstance(entry, dict):
        raise ConfigError(
            f"{SECTION}.{connection_id} in {path} must be an object; nothing was written"
        )
    entry.update(values)
    new_text = json.dumps(document, indent=indent_of(text), ensure_ascii=False)
    if text.endswith("\n") or not text:
        new_text += "\n"
    write_atomic(path, (bom + new_text).encode("utf-8"))
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, keeping its permissions (new: 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o600  # it will hold passwords
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        Path(temp_name).chmod(mode)
        Path(temp_name).replace(path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
