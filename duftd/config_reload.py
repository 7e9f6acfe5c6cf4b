"""Reload duft-config, by request or because a run replaced its folder.

An UPDATE task (``download_github_repo``) swaps the duft-config folder for a new one by
rename, so after each run the daemon compares the folder now at the config's path with
the one it loaded (device and inode: one ``stat``). When they differ it loads the new
one for later runs and schedules, and logs which tasks were added, removed or changed.
"""

from __future__ import annotations

from typing import Any

import structlog

from duftd.config import LoadedConfig, load_config
from duftd.config.loader import folder_identity
from duftd.runs.manager import RunManager
from duftd.scheduler import Scheduler

log = structlog.get_logger("duftd.config")


def reload_config(manager: RunManager, scheduler: Scheduler) -> LoadedConfig:
    """Load the config folder again; new runs and schedules use it, live runs keep theirs."""
    return use_config(manager, scheduler, load_config(manager.config.root))


def use_config(manager: RunManager, scheduler: Scheduler, config: LoadedConfig) -> LoadedConfig:
    """Swap ``config`` in for new runs and schedules, in one step (no await)."""
    manager.reload(config)
    scheduler.reload(config)
    return config


def reload_if_replaced(manager: RunManager, scheduler: Scheduler, task: str) -> None:
    """After a run of ``task``: reload if it replaced the config folder. Never raises."""
    old = manager.config
    try:
        now = folder_identity(old.root)
        if now == old.identity:
            return
        if now is None:
            log.error(
                "config folder gone after a run; keeping the loaded one",
                config=str(old.root),
                task=task,
            )
            return
        new = reload_config(manager, scheduler)
    except Exception:
        log.exception("reloading the replaced config failed; keeping the loaded one", task=task)
        return
    log.info(
        "config folder replaced by a run; reloaded",
        config=str(new.root),
        task=task,
        errors=len(new.errors),
        **task_changes(old, new),
    )


def task_changes(old: LoadedConfig, new: LoadedConfig) -> dict[str, list[str]]:
    """Task addresses added, removed and changed (any field) from ``old`` to ``new``."""
    before = {address: _spec(task) for address, task in old.tasks.items()}
    after = {address: _spec(task) for address, task in new.tasks.items()}
    return {
        "added": sorted(after.keys() - before.keys()),
        "removed": sorted(before.keys() - after.keys()),
        "changed": sorted(a for a in before.keys() & after.keys() if before[a] != after[a]),
    }


def _spec(task: Any) -> dict[str, Any]:
    return task.model_dump(mode="json", by_alias=True)
