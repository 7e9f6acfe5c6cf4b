"""DUFT's ``directories`` object: the data and temp folders as attributes.

Tasks read ``directories.data_directory`` and ``directories.data_tasks_temp_directory``
(or call ``get_directories()`` for the same object); both answer from :mod:`dte_tools.task`,
so the folder rules have one home.
"""

from __future__ import annotations

from dte_tools.task import get_data_dir, get_temp_dir


class Directories:
    """Folders computed on access (and created), so importing this touches no disk."""

    @property
    def data_directory(self) -> str:
        return get_data_dir()

    @property
    def data_tasks_temp_directory(self) -> str:
        return get_temp_dir()


directories = Directories()


def get_directories() -> Directories:
    """The task's folders: ``data_directory`` and ``data_tasks_temp_directory``."""
    return directories
