"""Where a notebook run's kernel keeps its files: one private folder per run.

The folder holds the kernel's IPC sockets and its connection file (which carries the
kernel's signing key). The runner removes it when the kernel is shut down; its name
comes from the worker id so that duftd can remove it too when it had to kill the
runner. Standard library only: the daemon imports this.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path


def kernel_dir(worker_id: str) -> Path:
    """The worker's kernel folder: short (socket paths are limited), private (mode 0700)."""
    raw = worker_id.encode()
    return Path(tempfile.gettempdir()) / f"duftd-kernel-{hashlib.sha256(raw).hexdigest()[:16]}"
