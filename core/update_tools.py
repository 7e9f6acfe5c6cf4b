"""An older DUFT import path for ``download_github_repo``."""

from dte_tools.update_tools import download_github_repo

__all__ = ["download_github_repo"]
