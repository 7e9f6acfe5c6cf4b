"""DUFT's import path for the Data Task Tools, kept so existing tasks run unchanged.

``services`` is a namespace package (no ``__init__.py``): a user's own regular
``services`` package is never shadowed by this one.
"""

from dte_tools import *  # noqa: F403 - this module exists only to re-export dte_tools
from dte_tools import __all__  # noqa: F401
