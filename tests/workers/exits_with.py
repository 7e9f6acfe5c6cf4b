"""Leaves through ``sys.exit(value)`` for the value its ``how`` parameter names (or by an
uncaught KeyboardInterrupt), after an atexit handler that fails (the exit code must not
change)."""

import atexit
import sys

from dte_tools import find_json_arg


def fails() -> None:
    raise RuntimeError("atexit handler failed")


how = find_json_arg(sys.argv)["how"]
atexit.register(fails)
if how == "interrupt":
    raise KeyboardInterrupt
values = {"none": None, "message": "stopping: no rows to load", "259": 259, "true": True}
sys.exit(values[how])
