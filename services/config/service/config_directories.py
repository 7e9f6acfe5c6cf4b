"""DUFT's historical ``directories`` object, answering from dte_tools' folder rules."""

from dte_tools import get_data_dir, get_temp_dir


class _Directories:
    """Attributes computed on access, so importing this module touches no disk."""

    @property
    def data_directory(self) -> str:
        return get_data_dir()

    @property
    def data_tasks_temp_directory(self) -> str:
        return get_temp_dir()


directories = _Directories()
