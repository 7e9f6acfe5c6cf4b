"""Reload duft-config, by request or because a run replaced its folder.

An UPDATE task (``download_github_repo``) swaps the duft-config folder for a new one by
rename, so after each run the daemon compares the folder now at the config's path with
the one it loaded (device and inode: one ``stat``). When they differ it loads the new
one for later runs and schedules, and logs which tasks were added, removed or changed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from duftd.config import LoadedConfig, load_config
from duftd.config.loader import folder_identity

log = structlog.get_logger("duftd.config")


class ActiveConfig:
    """The config in force for new runs and schedules.

    One object, passed at construction to everyone who reads the config (run manager,
    scheduler, commands), so a swap is one assignment that all of them see at once and
    no one reaches through another for it. Live runs keep the spec they started with.
    """

    def __init__(self, config: LoadedConfig) -> None:
        self.current = config
        self._watchers: list[asyncio.Event] = []
        self._loading = asyncio.Lock()  # one load at a time: a slower, older read never wins

    def watch(self) -> asyncio.Event:
        """An event set on every swap; the watcher clears it (the scheduler re-plans)."""
        event = asyncio.Event()
        self._watchers.append(event)
        return event

    def use(self, config: LoadedConfig) -> LoadedConfig:
        """Swap ``config`` in for new runs and schedules, in one step (no await)."""
        self.current = config
        for event in self._watchers:
            event.set()
        return config

    async def reload(self) -> LoadedConfig:
        """Load the folder again and swap it in; returns the config now in force."""
        async with self._loading:
            before = self.current
            # A large config takes a second of CPU to load: in a thread, so control keeps
            # answering; the swap itself has no await, so a submit sees one config whole.
            loaded = await asyncio.to_thread(load_config, before.root)
            if self.current is before:  # else a newer load won meanwhile
                self.use(loaded)
            return self.current

    async def reload_if_replaced(self, task: str) -> None:
        """After a run of ``task``: reload if it replaced the config folder. Never raises."""
        old = self.current
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
            new = await self.reload()
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
