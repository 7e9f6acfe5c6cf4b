"""The folder an ``executeFromRoot`` task runs in, laid out as DUFT lays out its root.

DUFT copies such a task beside ``duft-server/`` and ``duft-config/``; its scripts walk up
from their own file to the folder holding ``duft-server/``, import from there, and newer
ones load ``duft-server/services/dte_tools/update_tools.py`` (and ``data_task_tools.py``)
by file path. Here that folder is a fresh one per run, and those two files exist as
one-line re-exports of dte_tools, so the copied task finds what it looks for.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SERVER_DIR = "duft-server"
# From dte_tools itself: a task that puts duft-server/ first on sys.path makes these files
# *be* services.dte_tools.*, so importing from there would import themselves.
REEXPORTS = {
    "data_task_tools.py": "from dte_tools import *  # noqa: F403\nfrom dte_tools import __all__\n",
    "update_tools.py": "from dte_tools.update_tools import download_github_repo  # noqa: F401\n",
}


def prepare_root_copy(script: Path, folder: Path) -> Path:
    """Copy ``script`` into ``folder`` with ``duft-server/`` beside it; returns the copy."""
    tools = folder / SERVER_DIR / "services" / "dte_tools"
    tools.mkdir(parents=True, exist_ok=True)
    for name, text in REEXPORTS.items():
        (tools / name).write_text(text, encoding="utf-8")
    return Path(shutil.copy2(script, folder / script.name))
