"""DUFT's oldest import path for the Data Task Tools (a namespace package, as ``services``)."""

from services.dte_tools.data_task_tools import *  # noqa: F403 - a re-export only
from services.dte_tools.data_task_tools import __all__  # noqa: F401
