"""Logs two errors and a warning, then exits 0: a run that "finished with errors"."""

from dte_tools import initialise_data_task

environment = initialise_data_task("errors then succeeds")
environment.log_error("row 1 rejected")
environment.log_warning("row 2 looks odd")
environment.log_error("row 3 rejected")
environment.log_message("done anyway")
