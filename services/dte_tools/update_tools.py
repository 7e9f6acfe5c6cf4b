"""DUFT's import path for ``download_github_repo`` (the UPDATE task's tool)."""

from dte_tools.update_tools import download_github_repo

__all__ = ["download_github_repo"]
