"""Keeping every process of a run together, so that ending the run ends them all.

A task's child can leave the run's process group (``setsid``, ``start_new_session=True``)
and drop the ``DUFT_WORKER_ID`` marker from its environment; neither the group nor the
marker finds it then. A cgroup does: every process a worker starts stays in the worker's
cgroup whatever it does, and writing ``1`` to ``cgroup.kill`` SIGKILLs them all at once.

Where the machine has a writable cgroup v2 hierarchy (found in ``/proc/mounts``), each
worker gets its own cgroup, ``<the daemon's cgroup>/duftd/<worker id>``, right after it
starts: a warm spare at its start, so the run it is later handed is contained too. The
move happens before the new Python interpreter has run any task code, so nothing it
starts can escape. Elsewhere (no cgroup v2, or no right to write there) each worker runs
under a subreaper launcher instead (:mod:`duftd.reaper`), and duftd says which at start.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import structlog

log = structlog.get_logger("duftd.containment")

FOLDER = "duftd"
# How long a stopping daemon waits for killed processes to be gone, so that it can remove
# their cgroups.
CLOSE_WAIT_S = 1.0
# An empty worker cgroup older than this was left by a daemon that died (a newer one may be
# about to receive its process).
STALE_S = 60.0


def cgroup2_mount(mounts: str) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted, from the text of ``/proc/mounts``."""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def own_cgroup(proc_cgroup: str) -> str:
    """This process's cgroup v2 path (``0::/path`` in ``/proc/self/cgroup``)."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return "/"


class CgroupTree:
    """One cgroup per worker under a folder of the daemon's own cgroup."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._leftover: set[Path] = set()  # killed cgroups not yet empty enough to remove

    @classmethod
    def find(cls) -> CgroupTree | None:
        """The tree, where this machine lets us make and kill cgroups; else None."""
        try:
            mount = cgroup2_mount(Path("/proc/mounts").read_text(encoding="utf-8"))
            if mount is None:
                return None
            own = own_cgroup(Path("/proc/self/cgroup").read_text(encoding="utf-8"))
            base = mount / own.lstrip("/") / FOLDER
            base.mkdir(exist_ok=True)
        except OSError:
            return None
        if not (base / "cgroup.kill").exists():  # Linux before 5.14 cannot kill a cgroup
            return None
        tree = cls(base)
        tree.remove_stale()
        return tree

    def remove_stale(self) -> None:
        """Remove the empty cgroups a daemon that died left behind (its spares' among them,
        which no run record names)."""
        now = time.time()
        for group in self.base.iterdir():
            with contextlib.suppress(OSError):
                if (
                    group.is_dir()
                    and now - group.stat().st_mtime > STALE_S
                    and "populated 0" in (group / "cgroup.events").read_text()
                ):
                    group.rmdir()

    def adopt(self, worker_id: str, pid: int) -> None:
        """Move ``pid`` into the worker's own cgroup (made here)."""
        group = self.base / worker_id
        try:
            # parents: another daemon on this machine may have just removed the shared base.
            group.mkdir(parents=True, exist_ok=True)
            (group / "cgroup.procs").write_text(str(pid), encoding="ascii")
        except OSError as error:
            log.warning("could not contain a worker in a cgroup", pid=pid, error=str(error))

    def kill(self, worker_id: str) -> set[int]:
        """SIGKILL every process in the worker's cgroup; returns the pids it held."""
        group = self.base / worker_id
        try:
            pids = {int(p) for p in (group / "cgroup.procs").read_text().split()}
        except (OSError, ValueError):
            pids = set()
        if pids:
            with contextlib.suppress(OSError):
                (group / "cgroup.kill").write_text("1", encoding="ascii")
        if group.exists():
            self._leftover.add(group)
        self.sweep()
        return pids

    def sweep(self) -> None:
        """Remove the killed cgroups whose processes are all gone (the kernel refuses
        to remove one that still holds a process, so the rest wait for the next sweep)."""
        for group in list(self._leftover):
            try:
                group.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                continue
            self._leftover.discard(group)

    def close(self) -> None:
        """Remove the cgroups of killed workers (waiting a moment for their processes to
        be gone) and the base, unless another daemon on this machine still uses it."""
        deadline = time.monotonic() + CLOSE_WAIT_S
        self.sweep()
        while self._leftover and time.monotonic() < deadline:
            time.sleep(0.01)  # wait-ok: polling interval of a bounded wait
            self.sweep()
        with contextlib.suppress(OSError):
            self.base.rmdir()
