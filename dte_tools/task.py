"""The functions data tasks call, with the names DUFT tasks already use.

The first call picks the backend: under duftd (a run id in the environment) values come
from the daemon and events go onto the bus; otherwise duft-config is read from disk and
events are printed. Task code is the same either way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dte_tools import locate
from dte_tools.backends import Backend, detect
from dte_tools.wire import Kind

_backend: Backend | None = None


def _current_backend() -> Backend:
    global _backend
    if _backend is None:
        _backend = detect()
    return _backend


class DataTaskEnvironment:
    """A running data task's handle for reporting to the user (log lines, progress)."""

    def __init__(self, name: str, params: dict[str, Any], backend: Backend) -> None:
        self.current_data_task_name = name
        self.params = params
        self._backend = backend

    def log_message(self, message: object) -> None:
        """An informational line for the user; never blocks the task."""
        self._backend.emit(Kind.LOG, {"level": "info", "message": str(message)})

    def log_warning(self, message: object) -> None:
        self._backend.emit(Kind.LOG, {"level": "warning", "message": str(message)})

    def log_error(self, message: object) -> None:
        """An error line; a run that logged errors is recorded with its error count."""
        self._backend.emit(Kind.LOG, {"level": "error", "message": str(message)})

    def report_progress(self, done: int, total: int, message: str = "") -> None:
        """How far the task is, as ``done`` of ``total`` steps (any real numbers, numpy's too)."""
        self._backend.emit(
            Kind.PROGRESS, {"done": _number(done), "total": _number(total), "message": str(message)}
        )


def _number(value: float) -> int | float:
    """A plain JSON number from any real number type (a numpy int would travel as text)."""
    number = float(value)
    return int(number) if number.is_integer() else number


class Environment(DataTaskEnvironment):
    """DUFT's oldest name for the handle (``core.environment.Environment``), made directly
    rather than by :func:`initialise_data_task`; the same log lines and progress."""

    def __init__(self, name: str = "", params: dict[str, Any] | None = None) -> None:
        super().__init__(name, dict(params or {}), _current_backend())


def initialise_data_task(name: str, params: dict[str, Any] | None = None) -> DataTaskEnvironment:
    """Start reporting for this task; ``params`` are kept for the task's own debugging."""
    return DataTaskEnvironment(name, dict(params or {}), _current_backend())


def find_json_arg(argv: list[str]) -> dict[str, Any]:
    """The task's parameters: from duftd when it started the task, else the JSON argument."""
    given: dict[str, Any] = {}
    for arg in argv[1:]:
        try:
            value = json.loads(arg)
        except ValueError:
            continue
        if isinstance(value, dict):
            given = value
            break
    return _current_backend().parameters(given)


def get_resolved_parameters_for_connection(connection_id: str) -> dict[str, Any]:
    """The user's values for one of the task's data connections (``{}`` when none are set)."""
    return _current_backend().connection(connection_id)


def get_data_dir() -> str:
    """The data folder (created if missing), where ``sqlite3file`` values and outputs live."""
    path = _current_backend().data_dir()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def get_temp_dir() -> str:
    """A scratch folder for data tasks (created if missing)."""
    path = locate.temp_dir(Path(get_data_dir()))
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def purge_temp_dir() -> str:
    """Empty the temp folder (it stays, empty), so a task starts without another's leftovers."""
    import shutil  # only the tasks that purge pay for it

    temp = Path(get_temp_dir())
    for entry in temp.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return str(temp)


def assert_dte_tools_available() -> bool:
    """Fails loudly when the task cannot reach duft-config or the daemon; True otherwise."""
    _current_backend()
    return True


def close() -> None:
    """Deliver queued events and release the bus; the notebook runner calls this last."""
    if _backend is not None:
        _backend.close()
