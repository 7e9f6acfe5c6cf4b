"""Where things live: the duft-config folder, the data folder and the daemon's state.

The daemon, the clients and a standalone task all answer these questions here, so a
task run from VS Code and the same task run by duftd see the same folders.
"""

from __future__ import annotations

import os
from pathlib import Path

from dte_tools.wire import ENV_CONFIG_DIR, ENV_DATA_DIR, ENV_STATE_DIR

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_CONFIG_DIR = PROJECT_ROOT / "duft-config"
CONNECTION_FILE_NAME = "duftd.json"


class ConfigNotFoundError(RuntimeError):
    """No duft-config folder could be found for a task."""


def is_config_dir(path: Path) -> bool:
    """A duft-config folder has ``system/data_tasks.json``."""
    return (path / "system" / "data_tasks.json").is_file()


def find_config_dir(start: Path | None = None) -> Path:
    """``$DUFT_CONFIG_DIR``, else the nearest duft-config folder above ``start``.

    ``start`` is the running script's folder (or a notebook's working folder).
    """
    env = os.environ.get(ENV_CONFIG_DIR)
    if env:
        return Path(env).expanduser().resolve()
    if start is not None:
        start = start.resolve()
        for folder in (start, *start.parents):
            if is_config_dir(folder):
                return folder
    raise ConfigNotFoundError(
        f"no duft-config folder found above {start or 'the current folder'}; put the task "
        f"inside duft-config/system/data_tasks/ or set {ENV_CONFIG_DIR}"
    )


def default_config_dir() -> Path:
    """``$DUFT_CONFIG_DIR``, else the duft-config embedded in this project."""
    env = os.environ.get(ENV_CONFIG_DIR)
    return Path(env).expanduser().resolve() if env else EMBEDDED_CONFIG_DIR


def data_dir(config_dir: Path) -> Path:
    """``$DUFT_DATA_DIR``, else ``data/`` beside the duft-config folder (as in DUFT Server)."""
    env = os.environ.get(ENV_DATA_DIR)
    return Path(env).expanduser().resolve() if env else config_dir.resolve().parent / "data"


def temp_dir(data: Path) -> Path:
    """Scratch space for data tasks, inside the data folder."""
    return data / "temp"


def default_state_dir() -> Path:
    """``$DUFT_STATE_DIR``, else ``.duftd/`` in this checkout (kept out of git)."""
    env = os.environ.get(ENV_STATE_DIR)
    return Path(env).expanduser().resolve() if env else PROJECT_ROOT / ".duftd"
