"""Where a notebook run's kernel keeps its files: one private folder per run.

The folder holds the kernel's IPC sockets and its connection file (which carries the
kernel's signing key). The runner removes it when the kernel is shut down; its name
comes from the run's token so that duftd can remove it too when it had to kill the
runner. Standard library only: the daemon imports this.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path


def kernel_dir(run_token: str | bytes) -> Path:
    """The run's kernel folder: short (socket paths are limited), unguessable without the token."""
    raw = run_token.encode() if isinstance(run_token, str) else run_token
    return Path(tempfile.gettempdir()) / f"duftd-kernel-{hashlib.sha256(raw).hexdigest()[:16]}"
