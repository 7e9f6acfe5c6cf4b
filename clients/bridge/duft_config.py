"""The duft-config files DUFT's web UI starts from, read from the folder duftd runs.

The bridge asks duftd's ``health`` for its config folder (it may change when duftd is
restarted with another one) and reads the files itself: they are the UI's, not the
engine's. Each file is parsed again only when its modification time or size changes,
so an edit shows on the next request. A missing or unreadable file gives a DUFT-shaped
default, never an error: the UI must leave its splash screen whatever the folder holds.

How the files combine, as DUFT's server does: settings are ``settings.json`` at the
root, then ``system/settings.json`` (or ``apps/<app>/settings.json``) over it;
navigation is ``{"system": <system or app navigation>, "user": <user/navigation.json>}``;
the theme and the ``.3dl`` dashboards come from ``system/`` (or the app's folder).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from clients.bridge.async_bus import AsyncBus, DaemonRefused, DaemonUnavailable
from dte_tools.wire import Op

log = logging.getLogger("duft.bridge.config")

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # an app or dashboard id
DEFAULT_SETTINGS = {"name": "DUFT", "appName": "DUFT", "footer": "", "version": ""}
DEFAULT_THEME = {"themes": [{"name": "default", "description": "default colours", "apex": {}}]}
# What DUFT's settings endpoint answers with no user settings: straight into the app.
DEFAULT_USER_SETTINGS = {"oobe": True, "debug": False, "unittest": False}


class BadName(ValueError):
    """An app or dashboard id that cannot name a file inside the config folder."""


def checked_name(value: str, what: str) -> str:
    if not NAME.fullmatch(value) or ".." in value:
        raise BadName(f"{what} {value!r} must be letters, digits, '.', '_' or '-'")
    return value


class ConfigFiles:
    """The running daemon's duft-config folder, and its JSON files with a parse cache."""

    def __init__(self, bus: AsyncBus) -> None:
        self._bus = bus
        self._root: Path | None = None
        self.version = ""  # duftd's, from the same health answer
        self._cache: dict[Path, tuple[tuple[int, int], Any]] = {}

    async def root(self) -> Path | None:
        """The folder duftd serves now (the last one known while it is not reachable)."""
        try:
            health = await self._bus.request(Op.HEALTH)
            self._root, self.version = Path(health["config"]), str(health["version"])
        except (DaemonUnavailable, DaemonRefused):
            pass
        return self._root

    def json(self, root: Path | None, *parts: str) -> Any:
        """The parsed file ``root/parts...``, or None when it is missing or not JSON."""
        if root is None:
            return None
        path = root.joinpath(*parts)
        try:
            stat = path.stat()
        except OSError:
            self._cache.pop(path, None)
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            value = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as error:
            log.warning("%s is not readable JSON (%s); using the default", path, error)
            value = None
        self._cache[path] = (stamp, value)
        return value

    def text(self, root: Path | None, *parts: str) -> str | None:
        if root is None:
            return None
        try:
            return root.joinpath(*parts).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError):
            return None

    # -- what the UI asks for -----------------------------------------------------------

    def settings(self, root: Path | None, app: str | None) -> dict[str, Any]:
        merged = dict(DEFAULT_SETTINGS)
        for layer in (
            self.json(root, "settings.json"),
            self.json(root, *_folder(app), "settings.json"),
        ):
            if isinstance(layer, dict):
                merged.update(layer)
        return merged

    def navigation(self, root: Path | None, app: str | None) -> dict[str, Any] | None:
        """The system (or app) navigation file, None when there is none."""
        value = self.json(root, *_folder(app), "navigation.json")
        return value if isinstance(value, dict) else None

    def user_navigation(self, root: Path | None) -> dict[str, Any]:
        value = self.json(root, "user", "navigation.json")
        return value if isinstance(value, dict) else {}

    def theme(self, root: Path | None, app: str | None) -> Any:
        value = self.json(root, *_folder(app), "theme.json")
        return value if isinstance(value, dict | list) else DEFAULT_THEME

    def dashboard(self, root: Path | None, app: str | None, dashboard: str) -> str | None:
        return self.text(root, *_folder(app), "dashboards", f"{dashboard}.3dl")

    def user_config(self, root: Path | None) -> dict[str, Any]:
        value = self.json(root, "user", "config.json")
        return value if isinstance(value, dict) else {}

    def user_settings(self, root: Path | None) -> dict[str, Any]:
        answer = dict(DEFAULT_USER_SETTINGS)
        section = self.user_config(root).get("settings")
        if isinstance(section, dict):
            answer.update({k: bool(section[k]) for k in DEFAULT_USER_SETTINGS if k in section})
        return answer

    def has_schedules(self, root: Path | None) -> bool:
        return bool(self.user_config(root).get("scheduledDataTasks"))


def _folder(app: str | None) -> tuple[str, ...]:
    return ("apps", app) if app else ("system",)
