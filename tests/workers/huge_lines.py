"""Logs one 5 MB message and prints one 200,000-character line, each between short ones."""

from dte_tools import initialise_data_task

environment = initialise_data_task("huge lines")
environment.log_message("before")
environment.log_message("x" * (5 * 1024 * 1024))
environment.log_message("after")
print("".join(str(i % 10) for i in range(200_000)))
print("after the long line")
