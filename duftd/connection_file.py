"""The connection file: where duftd listens and the key clients sign with.

Like Jupyter's, it is written atomically and readable only by the daemon's user, and
removed when the daemon stops.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dte_tools.locate import CONNECTION_FILE_NAME


def path_in(state_dir: Path) -> Path:
    return state_dir / CONNECTION_FILE_NAME


def write(state_dir: Path, info: dict[str, Any]) -> Path:
    """Write ``info`` with mode 0600 (never briefly readable by others)."""
    target = path_in(state_dir)
    partial = target.with_suffix(".tmp")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=2)
    partial.replace(target)
    return target


def remove(state_dir: Path, pid: int) -> None:
    """Remove the file if it is still ours (a newer daemon may have replaced it)."""
    target = path_in(state_dir)
    try:
        if json.loads(target.read_text(encoding="utf-8")).get("pid") == pid:
            target.unlink()
    except (OSError, ValueError):
        pass
