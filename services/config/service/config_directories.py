"""DUFT's import path for the ``directories`` object and ``get_directories``."""

from dte_tools.directories import directories, get_directories

__all__ = ["directories", "get_directories"]
