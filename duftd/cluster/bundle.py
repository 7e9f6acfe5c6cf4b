"""A task's ``data_tasks/`` folder as a content-addressed tar, cached on each Dask worker.

No shared filesystem is assumed: the folder travels with the job. The tar is built the
same way every time (sorted names, no times, owners or modes beyond the execute bit), so
its sha256 names the folder's content, and a Dask worker unpacks one content once.

Standard library only: this module also runs on Dask workers.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Folders a task never needs on the worker (caches of the daemon machine's Python).
SKIPPED_DIRS = {"__pycache__", ".ipynb_checkpoints", ".git"}
# A task folder is code and small inputs; a larger one is a mistake to ship with every run.
MAX_BUNDLE_BYTES = 64 * 1024 * 1024


class BundleError(Exception):
    """A task folder that cannot travel (too large), or a bundle that arrived damaged."""


@dataclass(frozen=True)
class Bundle:
    """A packed task folder: the tar's bytes and their sha256 (hex)."""

    digest: str
    data: bytes


def pack(folder: Path) -> Bundle:
    """The folder as a reproducible tar; a link to outside the folder is left out."""
    buffer = io.BytesIO()
    root = folder.resolve()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _files(root):
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            data = path.read_bytes()
            info.size = len(data)
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            tar.addfile(info, io.BytesIO(data))
            if buffer.tell() > MAX_BUNDLE_BYTES:
                raise BundleError(
                    f"{folder} is over {MAX_BUNDLE_BYTES // 2**20} MiB; a task folder travels "
                    "with every run: keep data in the data folder or a database instead"
                )
    data = buffer.getvalue()
    return Bundle(hashlib.sha256(data).hexdigest(), data)


def _files(root: Path) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            path = Path(folder, name)
            if path.is_file() and path.resolve().is_relative_to(root):
                found.append(path)
    return found


def unpack(digest: str, data: bytes, cache: Path) -> Path:
    """The folder of this content under ``cache`` (``cache/<digest>``), unpacked at most once.

    It is unpacked beside its place and renamed into it, so a concurrent run of the same
    content on this worker finds either nothing or the whole folder."""
    target = cache / digest
    if target.is_dir():
        return target
    if hashlib.sha256(data).hexdigest() != digest:
        raise BundleError(f"the task folder {digest[:12]} arrived damaged (its sha256 differs)")
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=cache))
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(staging, filter="data")
        staging.rename(target)
    except OSError:
        if not target.is_dir():  # not lost to a concurrent unpack of the same content
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
