"""An older DUFT import path for the task's handle (``core`` is a namespace package, so a
user's own regular ``core`` package wins)."""

from dte_tools.task import Environment

__all__ = ["Environment"]
